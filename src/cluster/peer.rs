//! What nodes say to each other over the link (`PeerMsg`, postcard-encoded inside the link's
//! versioned frames): a `send`, receipt or group change forwarded to the conversation's owner and its answer,
//! and the events an owner delivers once per node holding sessions of the audience. Plain data
//! of model types only; the conversation and delivery layers convert to and from it.

use crate::error::ErrorCode;
use crate::model::{ConversationId, DeviceId, GroupAction, MessageId, Millis, UserId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Request: store this send (the receiving node must own the conversation).
    Send {
        user: UserId,
        device: DeviceId,
        conversation: ConversationId,
        client_msg_id: String,
        body: String,
        attachments: Vec<String>,
    },
    /// Request: advance a member's receipt watermarks.
    Advance { user: UserId, conversation: ConversationId, delivered: u64, read: u64 },
    /// Reply to `Send`: durably stored (or stored before, for a retry).
    Sent { conversation: ConversationId, client_msg_id: String, seq: u64, message_id: MessageId, ts: Millis },
    /// Reply to `Advance`.
    Done,
    /// Reply: refused, with the error the client should see.
    Failed { code: ErrorCode, message: String },
    /// One-way: events for the sessions of the receiving node, in the owner's order.
    Deliver(Vec<WireEvent>),
    /// Request: change a group (the receiving node must own the conversation).
    Change { user: UserId, device: DeviceId, conversation: ConversationId, action: GroupAction },
    /// Reply to `Change`: its system message is stored at `seq`.
    Changed { seq: u64, message_id: MessageId, ts: Millis },
}

/// A `delivery::Publish` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub audience: Vec<UserId>,
    pub except: WireExcept,
    /// `Some` for a message (conversation, seq), `None` for another frame.
    pub message: Option<(ConversationId, u64)>,
    /// The encoded frame, pushed to each session as is.
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireExcept {
    All,
    AllButDevice(DeviceId),
    AllButUser(UserId),
}
