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
id_type!(
    /// An uploaded file (and, while it is being uploaded, its upload).
    AttachmentId
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
    /// The first key (messages from seq 1), wrapped by the master key.
    pub wrapped_key: Vec<u8>,
    pub created_at: Millis,
    /// Keys that replaced the first one (a group rotates its key when a member leaves or is
    /// removed), ascending by `from_seq`. Stored apart from the conversation's record.
    #[serde(skip)]
    pub rotated_keys: Vec<KeyEpoch>,
    /// A deleted group: nothing can be read or sent any more.
    #[serde(skip)]
    pub deleted: bool,
}

/// A conversation key that seals the messages from `from_seq` on (until the next one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEpoch {
    pub from_seq: u64,
    pub wrapped_key: Vec<u8>,
}

/// A member's role in a group (a direct conversation's two members are both `Member`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// Who is (or was) in a conversation, in what role, and which seqs they may read: from
/// `since_seq` (the message that added them; 0 in a direct conversation) to `until_seq` (the
/// message that removed them, inclusive) while they are gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub user_id: UserId,
    pub role: Role,
    pub since_seq: u64,
    pub until_seq: Option<u64>,
    /// The seq of the change that wrote this record (a record never replaces a later one).
    pub at_seq: u64,
}

impl MemberRecord {
    /// A member of a direct conversation: from its start, for good.
    pub fn direct(user_id: UserId) -> MemberRecord {
        MemberRecord { user_id, role: Role::Member, since_seq: 0, until_seq: None, at_seq: 0 }
    }

    pub fn is_active(&self) -> bool {
        self.until_seq.is_none()
    }

    /// Whether the member may read the message at `seq`.
    pub fn can_read(&self, seq: u64) -> bool {
        seq >= self.since_seq && self.until_seq.is_none_or(|until| seq <= until)
    }
}

/// A change to a group, as requested.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAction {
    /// The creation message (the group's records are already stored).
    Create,
    Rename {
        title: String,
    },
    Add {
        users: Vec<UserId>,
    },
    Remove {
        user: UserId,
    },
    Leave,
    /// `Admin` or `Member`; `Owner` transfers ownership (the former owner becomes an admin).
    SetRole {
        user: UserId,
        role: Role,
    },
    Delete,
}

/// A change to a group, applied after its system message at `seq` is stored: the member
/// records it writes (added, removed, role changed), and a new title, key or deletion. Kept
/// as a pending update of the group between the two writes, so a crash between them is finished
/// by the next owner (see `DirectoryStore::begin_group_update`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupUpdate {
    pub seq: u64,
    /// The id of the system message at `seq`: the update is applied only if that message is.
    pub message_id: MessageId,
    pub members: Vec<MemberRecord>,
    pub title: Option<String>,
    pub key: Option<KeyEpoch>,
    pub deleted: bool,
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
    /// Role and readable window (a direct conversation's members: `MemberRecord::direct`).
    pub record: MemberRecord,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Text,
    System,
}

/// What a message says of one attached file; sealed with the message (the file's bytes are in
/// blob storage, never in the message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub id: AttachmentId,
    /// The file name the uploader gave (cleaned of paths and control characters).
    pub name: String,
    /// The content type sniffed from the bytes (never the client's claim).
    #[serde(rename = "type")]
    pub content_type: String,
    /// Plaintext bytes.
    pub size: u64,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// Pixel dimensions of a picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Whether a thumbnail (at most 320 px on its longer side) was made.
    #[serde(default)]
    pub thumbnail: bool,
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
    /// One sealed `AttachmentInfo` (JSON) per attached file, base64; on its way to the owner
    /// (before sealing) the plain JSON.
    pub attachments: Vec<String>,
    /// The owner epoch it was written under (cluster mode; 0 = single node, unfenced). Cassandra
    /// stores it as a column so a checker can prove every message was written by the owner of
    /// its time; it is not part of the embedded store's encoding.
    #[serde(skip)]
    pub epoch: u64,
}
