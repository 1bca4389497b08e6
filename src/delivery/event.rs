//! What delivery hands to sessions: `SessionEvent` (a message, another frame, or a close) and
//! `Audience` (which devices of the addressed users an event skips). Plain data: sessions
//! receive it, the owner and the Registry produce it.

use crate::model::{ConversationId, DeviceId, UserId};
use actix::Message;
use bytestring::ByteString;

/// What the Router and Registry hand to a session.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum SessionEvent {
    /// A new message (skipped if the session already pushed that seq during a sync).
    Message { conversation_id: ConversationId, seq: u64, text: ByteString },
    /// Any other frame (receipt, presence, typing), pushed as is.
    Frame(ByteString),
    /// Close the connection with this code.
    Close { code: u16, reason: &'static str },
}

/// Which of the audience's devices an event skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    All,
    /// The device that caused the event (it got its own reply, e.g. `sent`).
    AllButDevice(DeviceId),
    /// Every device of one user (e.g. the typing user's own).
    AllButUser(UserId),
}

impl Audience {
    pub fn includes(&self, user: UserId, device: DeviceId) -> bool {
        match *self {
            Audience::All => true,
            Audience::AllButDevice(d) => d != device,
            Audience::AllButUser(u) => u != user,
        }
    }
}
