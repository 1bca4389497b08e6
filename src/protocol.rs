//! The client wire format of `/v1/ws`: `ClientFrame` (decoded) and `ServerFrame` (encoded),
//! JSON text frames tagged by `"type"`. No IO; `docs/protocol.md` is the human contract.

use crate::error::ErrorCode;
use crate::model::{AttachmentInfo, ConversationId, DeviceId, MessageId, MessageKind, Millis, UserId};
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A frame a client sends. Every request frame may carry a string `id`, echoed in the reply;
/// it is read by [`decode_client_frame`] rather than by each variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Auth {
        token: String,
    },
    Send {
        conversation_id: ConversationId,
        client_msg_id: String,
        body: String,
        #[serde(default)]
        attachments: Vec<String>,
    },
    Delivered {
        conversation_id: ConversationId,
        seq: u64,
    },
    Read {
        conversation_id: ConversationId,
        seq: u64,
    },
    Typing {
        conversation_id: ConversationId,
        active: bool,
    },
    Sync {
        #[serde(default)]
        cursors: BTreeMap<ConversationId, u64>,
        limit: Option<u32>,
    },
    History {
        conversation_id: ConversationId,
        before: Option<u64>,
        limit: Option<u32>,
    },
    PresenceSubscribe {
        user_ids: Vec<UserId>,
    },
    Ping,
}

/// Why a text frame could not be decoded; becomes a `bad_frame` error with the echoed id.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub id: Option<String>,
    pub message: String,
}

/// Decodes one text frame into its request id and frame. Unknown fields are ignored; an
/// unknown `type`, a missing field or a wrong type is a `DecodeError` that keeps the `id` when
/// the frame had one, so the client can match the error to its request.
pub fn decode_client_frame(text: &str) -> Result<(Option<String>, ClientFrame), DecodeError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| DecodeError { id: None, message: format!("not valid JSON: {e}") })?;
    let id = match value.get("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(DecodeError { id: None, message: "`id` must be a string".into() });
        }
    };
    if !value.is_object() {
        return Err(DecodeError { id, message: "a frame must be a JSON object".into() });
    }
    match value.get("type") {
        Some(serde_json::Value::String(_)) => {}
        _ => return Err(DecodeError { id, message: "missing string field `type`".into() }),
    }
    match serde_json::from_value::<ClientFrame>(value) {
        Ok(frame) => Ok((id, frame)),
        Err(e) => Err(DecodeError { id, message: e.to_string() }),
    }
}

/// An attached file as a message shows it: what the file is, and links to it signed for a
/// while (`?exp=…&sig=…`; an Authorization header works too, for members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    #[serde(flatten)]
    pub info: AttachmentInfo,
    /// The whole file.
    pub url: String,
    /// The thumbnail (pictures only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

/// A stored message as clients see it (body decrypted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub message_id: MessageId,
    pub author_id: UserId,
    pub client_msg_id: String,
    pub body: String,
    pub ts: Millis,
    pub attachments: Vec<AttachmentView>,
    pub kind: MessageKind,
}

/// Per-conversation state reported at the end of a sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    pub last_seq: u64,
    pub delivered_seq: u64,
    pub read_seq: u64,
    pub has_more: bool,
}

/// One member's watermarks in a `receipts` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptEntry {
    pub user_id: UserId,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        user_id: UserId,
        device_id: DeviceId,
        node: String,
        heartbeat_ms: u64,
    },
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        client_msg_id: String,
        conversation_id: ConversationId,
        seq: u64,
        message_id: MessageId,
        ts: Millis,
    },
    Message(MessageView),
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        delivered_seq: u64,
        read_seq: u64,
    },
    /// Receipt changes of several members of a group, pushed together (at most every
    /// `limits.group_receipt_flush_ms` per group); direct conversations use `Receipt`.
    Receipts {
        conversation_id: ConversationId,
        receipts: Vec<ReceiptEntry>,
    },
    Presence {
        user_id: UserId,
        online: bool,
        last_seen: Option<Millis>,
    },
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
        active: bool,
    },
    SyncDone {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        conversations: BTreeMap<ConversationId, SyncState>,
        /// The round stopped at its cap (`limits.sync_round_max`) before every conversation
        /// was read: sync again from the new cursors.
        has_more: bool,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        conversation_id: ConversationId,
        messages: Vec<MessageView>,
        has_more: bool,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
    },
}

impl ServerFrame {
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error { id, code, message: message.into() }
    }

    /// The JSON text of this frame, shareable between the sessions it is fanned out to.
    pub fn encode(&self) -> ByteString {
        // Serialising these types cannot fail: every map key is a string-like id.
        ByteString::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// WebSocket close codes of the protocol.
pub mod close_code {
    /// The node is draining: reconnect, to any node, and sync.
    pub const GOING_AWAY: u16 = 1001;
    /// Policy: the client kept exceeding its rate limit.
    pub const POLICY: u16 = 1008;
    /// A frame too big to read.
    pub const TOO_BIG: u16 = 1009;
    /// Bad, missing or revoked token.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No frame or pong for three heartbeat intervals.
    pub const IDLE_TIMEOUT: u16 = 4002;
    /// The client did not read its frames fast enough; reconnect and sync.
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_send_with_id_and_ignores_unknown_fields() {
        let text = r#"{"type":"send","id":"r1","conversation_id":"01890a5d-ac96-774b-bcce-b302099a8057","client_msg_id":"c1","body":"hi","extra":1}"#;
        let (id, frame) = decode_client_frame(text).unwrap();
        assert_eq!(id.as_deref(), Some("r1"));
        match frame {
            ClientFrame::Send { client_msg_id, body, attachments, .. } => {
                assert_eq!(client_msg_id, "c1");
                assert_eq!(body, "hi");
                assert!(attachments.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_unknown_type_keeping_id() {
        let err = decode_client_frame(r#"{"type":"nope","id":"x"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("x"));
        assert!(err.message.contains("nope"), "{}", err.message);
    }

    #[test]
    fn rejects_non_json_and_missing_fields() {
        assert!(decode_client_frame("hello").is_err());
        assert!(decode_client_frame("[1,2]").is_err());
        let err = decode_client_frame(r#"{"type":"read","id":"a"}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("a"));
    }

    #[test]
    fn encodes_error_and_message_frames() {
        let e = ServerFrame::error(Some("7".into()), ErrorCode::TooLarge, "too big").encode();
        assert_eq!(&*e, r#"{"type":"error","id":"7","code":"too_large","message":"too big"}"#);
        let m = ServerFrame::Message(MessageView {
            conversation_id: "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap(),
            seq: 3,
            message_id: "01890a5d-ac96-774b-bcce-b302099a8058".parse().unwrap(),
            author_id: "01890a5d-ac96-774b-bcce-b302099a8059".parse().unwrap(),
            client_msg_id: "c".into(),
            body: "b".into(),
            ts: 5,
            attachments: vec![],
            kind: MessageKind::Text,
        })
        .encode();
        assert!(m.starts_with(r#"{"type":"message","conversation_id":"01890a5d"#), "{m}");
        assert!(m.contains(r#""kind":"text""#));
    }
}
