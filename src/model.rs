//! Plain data of the domain: typed ids, users, devices, conversations, members and stored
//! messages. No IO here and no dependency on the rest of the crate.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        /// On the wire it is a string (a UUIDv7), so JavaScript clients never lose precision.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                $name(Uuid::now_v7())
            }
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

id_type!(
    /// A user account.
    UserId
);
id_type!(
    /// One logged-in device of a user; each login creates one, with its own token.
    DeviceId
);
id_type!(
    /// A conversation (direct or group); the seeds' "connection id".
    ConversationId
);
id_type!(
    /// A stored message, unique across conversations.
    MessageId
);

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_millis() as Millis
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub created_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub user_id: UserId,
    pub name: String,
    pub created_at: Millis,
    pub revoked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A conversation's durable description. Its key is stored only wrapped by the master key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub title: Option<String>,
    pub members: Vec<UserId>,
    pub wrapped_key: Vec<u8>,
    pub created_at: Millis,
}

/// Per-member receipt watermarks. Both only ever grow; `read_seq <= delivered_seq` is not
/// required (a read implies delivered, and the store raises `delivered_seq` with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermarks {
    pub delivered_seq: u64,
    pub read_seq: u64,
}

impl Watermarks {
    /// The element-wise maximum: merging never lowers a watermark.
    pub fn merge(self, other: Watermarks) -> Watermarks {
        Watermarks {
            delivered_seq: self.delivered_seq.max(other.delivered_seq),
            read_seq: self.read_seq.max(other.read_seq),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: UserId,
    pub watermarks: Watermarks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Text,
    System,
}

/// A message as the store keeps it: the body is sealed with the conversation key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub message_id: MessageId,
    pub author_id: UserId,
    pub device_id: DeviceId,
    pub client_msg_id: String,
    pub kind: MessageKind,
    pub sealed_body: Vec<u8>,
    pub ts: Millis,
    pub attachments: Vec<String>,
    /// The owner epoch it was written under (cluster mode; 0 = single node, unfenced). Cassandra
    /// stores it as a column so a checker can prove every message was written by the owner of
    /// its time; it is not part of the embedded store's encoding.
    #[serde(skip)]
    pub epoch: u64,
}
