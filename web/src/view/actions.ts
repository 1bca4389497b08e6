// What the views ask of the app (user intents) and what they are given to draw (the model).
// The views hold no state of their own beyond the DOM; the app implements these actions.

import type { ConnStatus } from '../connection';
import type { ClientState } from '../state';

export interface Actions {
  login(username: string, password: string): Promise<void>;
  register(username: string, password: string): Promise<void>;
  logout(): void;
  openConversation(id: string): void;
  back(): void;
  /** Resolves to true when the chat opened (the form is cleared). */
  startChat(username: string): Promise<boolean>;
  createGroup(title: string, usernames: string[]): Promise<boolean>;
  addMember(username: string): Promise<boolean>;
  /** False when nothing was sent (empty, too long): the composer keeps its text. */
  send(body: string): boolean;
  typing(): void;
  loadOlder(): void;
  reconnectNow(): void;
  retrySend(clientMsgId: string): void;
  discardSend(clientMsgId: string): void;
  /** Uploads a file to the open chat, then sends it (with the composer's text) as a message. */
  attach(file: File): void;
  /** Cancels the open chat's upload, or dismisses its error. */
  cancelUpload(): void;
  /** A picture of an attachment did not load (its signed link may have expired). */
  attachmentFailed(attachmentId: string): void;
}

/** The open chat's upload, as the composer shows it. */
export interface UploadView {
  conversationId: string;
  name: string;
  size: number;
  /** Bytes the server holds or is being sent. */
  sent: number;
  /** `finishing`: every byte is sent, the server checks the file (hash, thumbnail). */
  state: 'uploading' | 'finishing' | 'failed';
  error: string | null;
}

export interface Model {
  state: ClientState;
  status: ConnStatus;
  signedIn: boolean;
  now: number;
  notice: string | null;
  /** The open chat's upload (null when none). */
  upload: UploadView | null;
}
