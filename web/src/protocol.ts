// The wire shapes of docs/protocol.md as TypeScript types: REST replies and WebSocket frames
// (client → server and server → client). Types only; no behaviour. Ids are strings, seqs and
// times are numbers (they stay far below 2^53).

export type Role = 'owner' | 'admin' | 'member';
export type ConversationKind = 'direct' | 'group';
export type MessageKind = 'text' | 'system';

// ---- REST ----

export interface AuthReply {
  user_id: string;
  username: string;
  device_id: string;
  token: string;
}

export interface UserReply {
  user_id: string;
  username: string;
}

export interface UsersReply {
  users: UserReply[];
}

/** A file attached to a message (docs/protocol.md § Attachments): in `message` frames, history
 *  pages and the answer that finishes an upload. The links are signed (no header needed) and
 *  expire (`GET /v1/attachments/{id}/info` gives fresh ones). */
export interface Attachment {
  id: string;
  name: string;
  /** The content type the server sniffed from the bytes. */
  type: string;
  size: number;
  /** SHA-256 of the file, hex. */
  sha256: string;
  /** Pixel size of a picture. */
  width?: number;
  height?: number;
  /** Whether a thumbnail (≤ 320 px) was made: then `thumbnail_url` is present. */
  thumbnail: boolean;
  url: string;
  thumbnail_url?: string;
}

/** Where an upload stands (`POST …/attachments`, `PATCH`/`GET /v1/uploads/{id}`). */
export interface UploadStatus {
  upload_id: string;
  /** Bytes stored; the next request continues here. */
  offset: number;
  length: number;
  /** Interrupted requests fall back to a multiple of this: slices are this long. */
  part_bytes: number;
  complete: boolean;
  /** The finished attachment (its id is the upload id). */
  attachment?: Attachment;
}

export interface MessageView {
  conversation_id: string;
  seq: number;
  message_id: string;
  author_id: string;
  client_msg_id: string;
  body: string;
  ts: number;
  attachments?: Attachment[];
  kind: MessageKind;
}

export interface ConversationSummary {
  conversation_id: string;
  kind: ConversationKind;
  title?: string;
  members: string[];
  role?: Role;
  left?: boolean;
  last_seq: number;
  delivered_seq: number;
  read_seq: number;
  unread: number;
  last_message?: MessageView;
}

export interface ConversationsReply {
  conversations: ConversationSummary[];
}

export interface DirectReply {
  conversation_id: string;
  kind: 'direct';
  members: string[];
}

export interface GroupReply {
  conversation_id: string;
  kind: 'group';
  title: string;
  members: { user_id: string; role: Role }[];
}

export interface MemberInfo {
  user_id: string;
  role: Role | null;
  since_seq: number;
  delivered_seq: number;
  read_seq: number;
}

export interface MembersReply {
  conversation_id: string;
  members: MemberInfo[];
}

export interface HistoryReply {
  messages: MessageView[];
  has_more: boolean;
}

export interface GroupChangeReply {
  conversation_id: string;
  seq: number;
  message_id: string;
  ts: number;
}

// ---- WebSocket: client → server ----

export type ClientFrame =
  | { type: 'auth'; token: string }
  | {
      type: 'send';
      id?: string;
      conversation_id: string;
      client_msg_id: string;
      body: string;
      /** Ids of finished uploads of the caller to this conversation (at most 10). */
      attachments?: string[];
    }
  | { type: 'delivered'; conversation_id: string; seq: number }
  | { type: 'read'; conversation_id: string; seq: number }
  | { type: 'typing'; conversation_id: string; active: boolean }
  | { type: 'sync'; id?: string; cursors: Record<string, number>; limit?: number }
  | { type: 'presence_subscribe'; user_ids: string[] }
  | { type: 'ping'; id?: string };

// ---- WebSocket: server → client ----

export interface WelcomeFrame {
  type: 'welcome';
  user_id: string;
  device_id: string;
  node?: string;
  heartbeat_ms?: number;
}

export interface SentFrame {
  type: 'sent';
  id?: string;
  client_msg_id: string;
  conversation_id: string;
  seq: number;
  message_id: string;
  ts: number;
}

export type MessageFrame = { type: 'message' } & MessageView;

export interface ReceiptFrame {
  type: 'receipt';
  conversation_id: string;
  user_id: string;
  delivered_seq: number;
  read_seq: number;
}

export interface ReceiptsFrame {
  type: 'receipts';
  conversation_id: string;
  receipts: { user_id: string; delivered_seq: number; read_seq: number }[];
}

export interface PresenceFrame {
  type: 'presence';
  user_id: string;
  online: boolean;
  last_seen: number | null;
}

export interface TypingFrame {
  type: 'typing';
  conversation_id: string;
  user_id: string;
  active: boolean;
}

export interface SyncState {
  last_seq: number;
  delivered_seq: number;
  read_seq: number;
  has_more: boolean;
}

export interface SyncDoneFrame {
  type: 'sync_done';
  id?: string;
  conversations: Record<string, SyncState>;
  has_more?: boolean;
}

export interface HistoryFrame {
  type: 'history';
  id?: string;
  conversation_id: string;
  messages: MessageView[];
  has_more: boolean;
}

export interface PongFrame {
  type: 'pong';
  id?: string;
}

export interface ErrorFrame {
  type: 'error';
  id?: string;
  code: string;
  message: string;
  conversation_id?: string;
}

export type ServerFrame =
  | WelcomeFrame
  | SentFrame
  | MessageFrame
  | ReceiptFrame
  | ReceiptsFrame
  | PresenceFrame
  | TypingFrame
  | SyncDoneFrame
  | HistoryFrame
  | PongFrame
  | ErrorFrame;

/** WebSocket close codes with a meaning of their own (docs/protocol.md § Close codes). */
export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_IDLE = 4002;
export const CLOSE_SLOW_CONSUMER = 4008;
export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOO_BIG = 1009;

/** A message body's limit in bytes (`max_body_bytes`, default 64 KiB). */
export const MAX_BODY_BYTES = 65536;

/** Attachments one message may name. */
export const MAX_ATTACHMENTS_PER_MESSAGE = 10;

/** Error codes after which a send is retried with the same client_msg_id. */
export function retryableSendError(code: string): boolean {
  return code === 'unavailable' || code === 'store_unavailable' || code === 'rate_limited';
}
