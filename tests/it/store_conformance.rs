//! The storage contract: every case runs against every backend of `AccountStore` and
//! `ChatStore`: the embedded store always, and a real Cassandra when
//! `SWITCHBOARD_TEST_CASSANDRA=host:port` is set (`scripts/test` starts one and sets it), in a
//! fresh keyspace per test process.

use std::sync::Arc;
use switchboard::model::*;
use switchboard::store::cassandra::{self, CassandraConfig, CassandraStore};
use switchboard::store::embedded::EmbeddedStore;
use switchboard::store::{
    AccountStore, ChatStore, DirectoryStore, MessageLog, MetaStore, NewAppend, StoreError,
};

/// A backend under test, with whatever keeps its storage alive.
pub struct Backend {
    pub name: &'static str,
    pub meta: Arc<dyn MetaStore>,
    pub accounts: Arc<dyn AccountStore>,
    pub chat: Arc<dyn ChatStore>,
    /// Leaves the states a write interrupted half-way leaves behind in this backend.
    pub crash: Crash,
    _keep: Box<dyn std::any::Any + Send>,
}

/// What an interrupted write can leave behind, per backend. The embedded backend writes each
/// operation as one atomic batch, so an interrupted write leaves nothing and its methods do
/// nothing; Cassandra writes several rows one after another, so they write the rows that were
/// written before the failure, straight through CQL.
pub enum Crash {
    Embedded,
    Cassandra { session: Box<scylla::client::session::Session>, keyspace: String },
}

impl Crash {
    /// An append whose first chunk opens bucket `bucket` (its first message has seq
    /// `bucket * 4096`) failed after recording the bucket and before storing a message.
    async fn bucket_recorded_without_messages(&self, conversation: ConversationId, bucket: i64) {
        if let Crash::Cassandra { session, keyspace } = self {
            session
                .query_unpaged(
                    format!(
                        "INSERT INTO {keyspace}.conversation_buckets (conversation_id, bucket) VALUES (?, ?)"
                    ),
                    (conversation.0, bucket),
                )
                .await
                .unwrap();
        }
    }

    /// A registration claimed `username` for `user` and failed before writing the user.
    async fn username_claimed_without_user(&self, username: &str, user: UserId) {
        if let Crash::Cassandra { session, keyspace } = self {
            session
                .query_unpaged(
                    format!("INSERT INTO {keyspace}.usernames (username, user_id) VALUES (?, ?)"),
                    (username.to_lowercase(), user.0),
                )
                .await
                .unwrap();
        }
    }
}

/// One instance of every backend: the embedded one fresh, Cassandra's shared by the tests of
/// this process (so names that must be unique are made unique with `unique`).
pub async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut out = vec![Backend {
        name: "embedded",
        meta: embedded.clone(),
        accounts: embedded.clone(),
        chat: embedded,
        crash: Crash::Embedded,
        _keep: Box::new(dir),
    }];
    if let Ok(nodes) = std::env::var("SWITCHBOARD_TEST_CASSANDRA") {
        let (store, config) = cassandra_store(&nodes).await;
        let store = Arc::new(store);
        let session = cassandra::connect(&config).await.unwrap();
        out.push(Backend {
            name: "cassandra",
            meta: store.clone(),
            accounts: store.clone(),
            chat: store,
            crash: Crash::Cassandra { session: Box::new(session), keyspace: config.keyspace },
            _keep: Box::new(()),
        });
    }
    out
}

/// A store on this process's test keyspace, created (once, serialised) on first use. Each
/// test gets its own driver session: a session lives in the runtime that made it.
async fn cassandra_store(nodes: &str) -> (CassandraStore, CassandraConfig) {
    static SCHEMA: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let config =
        CassandraConfig::single_replica(nodes, &format!("sbtest_conformance_{}", std::process::id()))
            .unwrap();
    let mut applied = SCHEMA.lock().await;
    if !*applied {
        let session = cassandra::connect(&config).await.unwrap();
        cassandra::apply_schema(&session, &config).await.unwrap();
        *applied = true;
    }
    drop(applied);
    (CassandraStore::connect(&config).await.unwrap(), config)
}

/// `name` with a random suffix: tests share the Cassandra keyspace.
fn unique(name: &str) -> String {
    format!("{name}-{}", &UserId::generate().to_string()[24..])
}

fn user(name: &str) -> User {
    User { id: UserId::generate(), username: name.into(), created_at: now_millis() }
}

fn direct(a: UserId, b: UserId) -> Conversation {
    Conversation {
        id: ConversationId::generate(),
        kind: ConversationKind::Direct,
        title: None,
        members: vec![a.min(b), a.max(b)],
        wrapped_key: vec![7; 72],
        created_at: now_millis(),
        rotated_keys: vec![],
        deleted: false,
    }
}

pub fn message(c: ConversationId, author: UserId, seq: u64, client_msg_id: &str) -> StoredMessage {
    StoredMessage {
        conversation_id: c,
        seq,
        message_id: MessageId::generate(),
        author_id: author,
        device_id: DeviceId::generate(),
        client_msg_id: client_msg_id.into(),
        kind: MessageKind::Text,
        sealed_body: format!("sealed {seq}").into_bytes(),
        ts: now_millis(),
        attachments: vec![],
        epoch: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_unique_case_insensitively() {
    for b in backends().await {
        let name = unique("Alice");
        let alice = user(&name);
        b.accounts.create_user(&alice, "phc-1").await.unwrap();
        assert_eq!(b.accounts.user(alice.id).await.unwrap().as_ref(), Some(&alice), "{}", b.name);
        assert_eq!(
            b.accounts.user_by_name(&name.to_lowercase()).await.unwrap().as_ref(),
            Some(&alice),
            "{}",
            b.name
        );
        assert_eq!(b.accounts.password_hash(alice.id).await.unwrap().as_deref(), Some("phc-1"));
        let again = user(&name.to_uppercase());
        assert!(
            matches!(b.accounts.create_user(&again, "phc-2").await, Err(StoreError::Conflict(_))),
            "{}",
            b.name
        );
        assert_eq!(b.accounts.user(again.id).await.unwrap(), None);
        assert_eq!(b.accounts.user_by_name("nobody").await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tokens_resolve_until_revoked() {
    for b in backends().await {
        let alice = user(&unique("alice"));
        b.accounts.create_user(&alice, "phc").await.unwrap();
        let device = Device {
            id: DeviceId::generate(),
            user_id: alice.id,
            name: "phone".into(),
            created_at: 1,
            revoked: false,
        };
        let other = Device {
            id: DeviceId::generate(),
            user_id: alice.id,
            name: "laptop".into(),
            created_at: 2,
            revoked: false,
        };
        let (t1, t2, t3) = (*device.id.as_bytes(), *other.id.as_bytes(), *DeviceId::generate().as_bytes());
        let (t1, t2, t3) = ([t1, t1].concat(), [t2, t2].concat(), [t3, t3].concat());
        let (t1, t2, t3): ([u8; 32], [u8; 32], [u8; 32]) =
            (t1.try_into().unwrap(), t2.try_into().unwrap(), t3.try_into().unwrap());
        b.accounts.create_device(&device, &t1).await.unwrap();
        b.accounts.create_device(&other, &t2).await.unwrap();
        assert_eq!(b.accounts.device_by_token(&t1).await.unwrap().as_ref(), Some(&device), "{}", b.name);
        b.accounts.revoke_device(device.id).await.unwrap();
        assert_eq!(b.accounts.device_by_token(&t1).await.unwrap(), None, "{}", b.name);
        assert_eq!(b.accounts.device_by_token(&t2).await.unwrap().as_ref(), Some(&other));
        assert_eq!(b.accounts.device_by_token(&t3).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_gets_one_direct_conversation_even_under_races() {
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let chat = b.chat.clone();
            tasks.push(tokio::spawn(async move { chat.create_direct(&direct(x, y)).await.unwrap().id }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{}: {ids:?}", b.name);
        let id = ids[0];
        assert_eq!(b.chat.direct_between(y, x).await.unwrap(), Some(id));
        assert_eq!(b.chat.direct_between(x, UserId::generate()).await.unwrap(), None);
        let c = b.chat.conversation(id).await.unwrap().unwrap();
        assert_eq!(c.kind, ConversationKind::Direct);
        assert_eq!(c.wrapped_key, vec![7; 72]);
        let mut members: Vec<UserId> =
            b.chat.members(id).await.unwrap().into_iter().map(|m| m.user_id).collect();
        members.sort();
        assert_eq!(members, vec![x.min(y), x.max(y)]);
        assert!(b.chat.members(id).await.unwrap().iter().all(|m| m.watermarks == Watermarks::default()));
        assert_eq!(b.chat.user_conversations(x).await.unwrap(), vec![id]);
        assert_eq!(b.chat.user_conversations(y).await.unwrap(), vec![id]);
        assert_eq!(b.chat.last_seq(id).await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_messages_page_both_ways_per_conversation() {
    for b in backends().await {
        let (x, y, z) = (UserId::generate(), UserId::generate(), UserId::generate());
        let c1 = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let c2 = b.chat.create_direct(&direct(x, z)).await.unwrap().id;
        // One batch spanning two conversations, then more batches.
        let mut batch: Vec<StoredMessage> = (1..=3).map(|s| message(c1, x, s, &format!("a{s}"))).collect();
        batch.push(message(c2, z, 1, "z1"));
        b.chat.append(&batch).await.unwrap();
        let rest: Vec<StoredMessage> = (4..=10).map(|s| message(c1, y, s, &format!("b{s}"))).collect();
        b.chat.append(&rest).await.unwrap();

        assert_eq!(b.chat.last_seq(c1).await.unwrap(), 10, "{}", b.name);
        assert_eq!(b.chat.last_seq(c2).await.unwrap(), 1);
        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(b.chat.messages_after(c1, 0, 4).await.unwrap()), [1, 2, 3, 4]);
        assert_eq!(seqs(b.chat.messages_after(c1, 8, 100).await.unwrap()), [9, 10]);
        assert_eq!(seqs(b.chat.messages_after(c1, 10, 100).await.unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(b.chat.messages_before(c1, 6, 3).await.unwrap()), [3, 4, 5]);
        assert_eq!(seqs(b.chat.messages_before(c1, u64::MAX, 2).await.unwrap()), [9, 10]);
        assert_eq!(seqs(b.chat.messages_before(c1, 1, 5).await.unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(b.chat.messages_after(c2, 0, 100).await.unwrap()), [1]);
        let stored = b.chat.messages_after(c1, 4, 1).await.unwrap().remove(0);
        assert_eq!(stored, rest[1]);

        let found = b.chat.message_by_client_id(c1, y, "b7").await.unwrap().unwrap();
        assert_eq!(found.seq, 7);
        assert_eq!(
            b.chat.message_by_client_id(c1, x, "b7").await.unwrap(),
            None,
            "client ids are per author"
        );
        assert_eq!(b.chat.message_by_client_id(c2, y, "b7").await.unwrap(), None, "and per conversation");
        let keys = [(c1, y, "b7".to_string()), (c1, x, "zz".to_string()), (c2, z, "z1".to_string())];
        let found = b.chat.messages_by_client_ids(&keys).await.unwrap();
        let found: Vec<Option<u64>> = found.iter().map(|m| m.as_ref().map(|m| m.seq)).collect();
        assert_eq!(found, [Some(7), None, Some(1)], "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_across_bucket_boundaries() {
    // More than one Cassandra bucket (4,096 messages); appended in group-commit sized batches.
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let all: Vec<StoredMessage> = (1..=4200).map(|s| message(c, x, s, &format!("m{s}"))).collect();
        for batch in all.chunks(700) {
            b.chat.append(batch).await.unwrap();
        }
        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 4200, "{}", b.name);
        assert_eq!(
            seqs(b.chat.messages_after(c, 4090, 10).await.unwrap()),
            (4091..=4100).collect::<Vec<_>>(),
            "{}",
            b.name
        );
        assert_eq!(
            seqs(b.chat.messages_before(c, 4100, 10).await.unwrap()),
            (4090..=4099).collect::<Vec<_>>(),
            "{}",
            b.name
        );
        assert_eq!(seqs(b.chat.messages_before(c, u64::MAX, 3).await.unwrap()), [4198, 4199, 4200]);
        assert_eq!(b.chat.messages_after(c, 0, 5000).await.unwrap().len(), 4200);
        assert_eq!(b.chat.message_by_client_id(c, x, "m4097").await.unwrap().unwrap().seq, 4097);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_sending_a_stored_batch_changes_nothing() {
    // A retried append (same rows, e.g. after an ambiguous timeout) is idempotent.
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let batch = [message(c, x, 1, "a"), message(c, x, 2, "b")];
        b.chat.append(&batch).await.unwrap();
        b.chat.append(&batch).await.unwrap();
        let stored = b.chat.messages_after(c, 0, 10).await.unwrap();
        assert_eq!(stored, batch.to_vec(), "{}", b.name);
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_new_writes_nothing_when_a_client_id_is_known() {
    // The owner's one-call path: a batch with a client id stored before is refused whole, with
    // the stored message for that id; an all-new batch is appended; fencing still applies.
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let first = [message(c, x, 1, "a"), message(c, y, 2, "b")];
        assert_eq!(b.chat.append_new(&first).await.unwrap(), NewAppend::Appended, "{}", b.name);
        // A retry of "b" (same author, same client id) under a new seq, beside a new message.
        let retry = [message(c, x, 3, "c"), message(c, y, 4, "b")];
        match b.chat.append_new(&retry).await.unwrap() {
            NewAppend::Known(found) => {
                let seqs: Vec<Option<u64>> = found.iter().map(|m| m.as_ref().map(|m| m.seq)).collect();
                assert_eq!(seqs, [None, Some(2)], "{}", b.name);
                assert_eq!(found[1].as_ref().unwrap(), &first[1], "{}", b.name);
            }
            other => panic!("{}: expected Known, got {other:?}", b.name),
        }
        assert_eq!(
            b.chat.last_seq(c).await.unwrap(),
            2,
            "{}: nothing of the refused batch is stored",
            b.name
        );
        assert_eq!(b.chat.message_by_client_id(c, x, "c").await.unwrap(), None, "{}", b.name);
        // The same client id from another author is another message.
        let other_author = [message(c, x, 3, "b")];
        assert_eq!(b.chat.append_new(&other_author).await.unwrap(), NewAppend::Appended, "{}", b.name);
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 3, "{}", b.name);
        // Fenced like `append`.
        let claim = b.chat.claim(c, "n1").await.unwrap();
        let _ = b.chat.claim(c, "n2").await.unwrap();
        let late = b.chat.append_new(&[fenced(c, x, 4, claim.epoch)]).await.unwrap_err();
        assert!(matches!(late.error, StoreError::Fenced(_)), "{}: {:?}", b.name, late.error);
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 3, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_never_regress() {
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let up = |d, r| Watermarks { delivered_seq: d, read_seq: r };
        assert_eq!(
            b.chat.advance_watermarks(c, x, up(5, 0)).await.unwrap(),
            Some((up(5, 0), true)),
            "{}",
            b.name
        );
        // A read implies delivered.
        assert_eq!(b.chat.advance_watermarks(c, x, up(0, 7)).await.unwrap(), Some((up(7, 7), true)));
        // Out of order, lower: nothing changes.
        assert_eq!(b.chat.advance_watermarks(c, x, up(3, 2)).await.unwrap(), Some((up(7, 7), false)));
        assert_eq!(b.chat.advance_watermarks(c, x, up(9, 0)).await.unwrap(), Some((up(9, 7), true)));
        let mine = b.chat.members(c).await.unwrap().into_iter().find(|m| m.user_id == x).unwrap();
        assert_eq!(mine.watermarks, up(9, 7));
        let theirs = b.chat.members(c).await.unwrap().into_iter().find(|m| m.user_id == y).unwrap();
        assert_eq!(theirs.watermarks, up(0, 0));
        assert_eq!(b.chat.advance_watermarks(c, UserId::generate(), up(1, 1)).await.unwrap(), None);
    }
}

#[tokio::test]
async fn advance_many_answers_each_pair_in_order() {
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let up = |d, r| Watermarks { delivered_seq: d, read_seq: r };
        b.chat.advance_watermarks(c, y, up(4, 4)).await.unwrap();
        let stranger = UserId::generate();
        let out = b
            .chat
            .advance_many(&[(c, x, up(0, 3)), (c, y, up(2, 2)), (c, stranger, up(1, 1))])
            .await
            .unwrap();
        assert_eq!(out, vec![Some((up(3, 3), true)), Some((up(4, 4), false)), None], "{}", b.name);
        let mine = b.chat.members(c).await.unwrap().into_iter().find(|m| m.user_id == x).unwrap();
        assert_eq!(mine.watermarks, up(3, 3), "{}", b.name);
    }
}

#[tokio::test]
async fn posters_are_recorded_per_conversation() {
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        assert!(!b.chat.has_posted(c, x).await.unwrap(), "{}", b.name);
        b.chat.mark_posted(c, x).await.unwrap();
        b.chat.mark_posted(c, x).await.unwrap();
        assert!(b.chat.has_posted(c, x).await.unwrap(), "{}", b.name);
        assert!(!b.chat.has_posted(c, y).await.unwrap(), "{}", b.name);
        let other = b.chat.create_direct(&direct(x, UserId::generate())).await.unwrap().id;
        assert!(!b.chat.has_posted(other, x).await.unwrap(), "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_watermark_updates_keep_the_maximum() {
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let mut tasks = Vec::new();
        for seq in (1..=50u64).rev() {
            let chat = b.chat.clone();
            tasks.push(tokio::spawn(async move {
                chat.advance_watermarks(c, x, Watermarks { delivered_seq: seq, read_seq: seq }).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mine = b.chat.members(c).await.unwrap().into_iter().find(|m| m.user_id == x).unwrap();
        assert_eq!(mine.watermarks, Watermarks { delivered_seq: 50, read_seq: 50 }, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (UserId::generate(), UserId::generate());
    let c;
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        c = store.create_direct(&direct(x, y)).await.unwrap().id;
        store.append(&[message(c, x, 1, "one"), message(c, x, 2, "two")]).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.last_seq(c).await.unwrap(), 2);
    assert_eq!(store.message_by_client_id(c, x, "two").await.unwrap().unwrap().seq, 2);
    assert_eq!(store.direct_between(x, y).await.unwrap(), Some(c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seq_skips_an_empty_newest_bucket() {
    // Scenario: seqs 1..=4095 are stored (all of bucket 0); the append of seq 4096, the first
    // message of bucket 1, fails after Cassandra recorded bucket 1 and before the message was
    // stored (the embedded backend has no bucket index: its failed append leaves nothing). The
    // owner then reloads last_seq: it must be 4095, not 0 — or seq 1 would be assigned again
    // and overwrite acknowledged messages. The same for a first-ever message that failed.
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let all: Vec<StoredMessage> = (1..=4095).map(|s| message(c, x, s, &format!("m{s}"))).collect();
        for batch in all.chunks(1000) {
            b.chat.append(batch).await.unwrap();
        }
        b.crash.bucket_recorded_without_messages(c, 1).await;
        let seqs = |v: Vec<StoredMessage>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 4095, "{}", b.name);
        assert_eq!(
            seqs(b.chat.messages_after(c, 4090, 10).await.unwrap()),
            (4091..=4095).collect::<Vec<_>>(),
            "{}",
            b.name
        );
        assert_eq!(seqs(b.chat.messages_after(c, 4095, 10).await.unwrap()), Vec::<u64>::new());
        assert_eq!(
            seqs(b.chat.messages_before(c, u64::MAX, 3).await.unwrap()),
            [4093, 4094, 4095],
            "{}",
            b.name
        );
        assert_eq!(seqs(b.chat.messages_before(c, 4096, 2).await.unwrap()), [4094, 4095], "{}", b.name);

        // The retry goes on from there, into the bucket recorded before.
        let next: Vec<StoredMessage> = (4096..=4100).map(|s| message(c, y, s, &format!("n{s}"))).collect();
        b.chat.append(&next).await.unwrap();
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 4100, "{}", b.name);
        assert_eq!(seqs(b.chat.messages_after(c, 4093, 4).await.unwrap()), [4094, 4095, 4096, 4097]);
        assert_eq!(seqs(b.chat.messages_before(c, u64::MAX, 2).await.unwrap()), [4099, 4100]);
        assert_eq!(b.chat.messages_after(c, 0, 5000).await.unwrap().len(), 4100, "{}", b.name);

        // A conversation whose very first append failed that way is still empty.
        let d = b.chat.create_direct(&direct(x, UserId::generate())).await.unwrap().id;
        b.crash.bucket_recorded_without_messages(d, 0).await;
        assert_eq!(b.chat.last_seq(d).await.unwrap(), 0, "{}", b.name);
        assert_eq!(b.chat.messages_after(d, 0, 10).await.unwrap(), vec![]);
        assert_eq!(b.chat.messages_before(d, u64::MAX, 10).await.unwrap(), vec![]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_reports_exactly_the_messages_it_stored() {
    // One batch over two conversations; c1's second message is too large for one Cassandra
    // mutation (5 MiB > max_mutation_size, half of the 8 MiB commitlog_segment_size that
    // scripts/cassandra configures), so Cassandra stores c1's first chunk and c2's messages,
    // refuses the chunk with the large message and never writes the chunk after it. Whatever
    // the backend, the messages reported stored (all of them on success) must be exactly the
    // readable ones, and last_seq must cover them.
    for b in backends().await {
        let (x, y, z) = (UserId::generate(), UserId::generate(), UserId::generate());
        let c1 = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let c2 = b.chat.create_direct(&direct(x, z)).await.unwrap().id;
        let mut large = message(c1, x, 2, "a2");
        large.sealed_body = vec![7; 5 << 20];
        let batch = [
            message(c1, x, 1, "a1"),
            message(c2, z, 1, "z1"),
            large,
            message(c1, x, 3, "a3"),
            message(c2, z, 2, "z2"),
        ];
        let (stored, error): (Vec<usize>, Option<StoreError>) = match b.chat.append(&batch).await {
            Ok(()) => ((0..batch.len()).collect(), None),
            Err(e) => {
                let mut stored = e.stored.clone();
                stored.sort_unstable();
                (stored, Some(e.error))
            }
        };
        if b.name == "cassandra" {
            assert_eq!(stored, [0, 1, 4], "cassandra: the first chunk of c1 and all of c2 ({error:?})");
        }
        for (i, m) in batch.iter().enumerate() {
            let found =
                b.chat.message_by_client_id(m.conversation_id, m.author_id, &m.client_msg_id).await.unwrap();
            let listed = b.chat.messages_after(m.conversation_id, m.seq - 1, 1).await.unwrap();
            let readable = found.as_ref() == Some(m) && listed.first() == Some(m);
            assert_eq!(readable, stored.contains(&i), "{}: message {i} (seq {}) readable", b.name, m.seq);
        }
        for c in [c1, c2] {
            let highest =
                stored.iter().map(|&i| &batch[i]).filter(|m| m.conversation_id == c).map(|m| m.seq).max();
            assert_eq!(b.chat.last_seq(c).await.unwrap(), highest.unwrap_or(0), "{}", b.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_username_claimed_by_a_failed_registration_can_be_registered() {
    // Scenario: a registration claimed the name and failed before its user existed (Cassandra
    // writes several rows; the embedded backend writes one atomic batch, so nothing is left).
    // The name must not stay taken forever.
    for b in backends().await {
        let name = unique("Carol");
        b.crash.username_claimed_without_user(&name, UserId::generate()).await;
        assert_eq!(b.accounts.user_by_name(&name).await.unwrap(), None, "{}", b.name);
        let carol = user(&name);
        b.accounts.create_user(&carol, "phc-carol").await.unwrap();
        assert_eq!(
            b.accounts.user_by_name(&name.to_uppercase()).await.unwrap().as_ref(),
            Some(&carol),
            "{}",
            b.name
        );
        assert_eq!(b.accounts.password_hash(carol.id).await.unwrap().as_deref(), Some("phc-carol"));
        // Now it is really taken, and the loser leaves no user behind.
        let again = user(&name.to_lowercase());
        assert!(
            matches!(b.accounts.create_user(&again, "x").await, Err(StoreError::Conflict(_))),
            "{}",
            b.name
        );
        assert_eq!(b.accounts.user(again.id).await.unwrap(), None, "{}", b.name);
        assert_eq!(b.accounts.password_hash(again.id).await.unwrap(), None, "{}", b.name);
        assert_eq!(b.accounts.user_by_name(&name).await.unwrap().as_ref(), Some(&carol));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_of_a_free_or_stale_name_have_one_winner() {
    for b in backends().await {
        for stale in [false, true] {
            let name = unique("Dave");
            if stale {
                b.crash.username_claimed_without_user(&name, UserId::generate()).await;
            }
            let mut tasks = Vec::new();
            for i in 0..6 {
                let accounts = b.accounts.clone();
                let u = user(&name);
                tasks.push(tokio::spawn(async move {
                    let outcome = accounts.create_user(&u, &format!("phc-{i}")).await;
                    (u, outcome)
                }));
            }
            let mut winners = Vec::new();
            for t in tasks {
                let (u, outcome) = t.await.unwrap();
                match outcome {
                    Ok(()) => winners.push(u),
                    Err(StoreError::Conflict(_)) => {
                        assert_eq!(b.accounts.user(u.id).await.unwrap(), None, "{}", b.name)
                    }
                    Err(e) => panic!("{}: {e}", b.name),
                }
            }
            assert_eq!(winners.len(), 1, "{} (stale claim: {stale})", b.name);
            assert_eq!(
                b.accounts.user_by_name(&name).await.unwrap().as_ref(),
                Some(&winners[0]),
                "{}",
                b.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_last_used_only_moves_forward() {
    for b in backends().await {
        let (d, other) = (DeviceId::generate(), DeviceId::generate());
        assert_eq!(b.accounts.device_last_used(d).await.unwrap(), None, "{}", b.name);
        b.accounts.touch_device(d, 1_700_000_000_000).await.unwrap();
        assert_eq!(b.accounts.device_last_used(d).await.unwrap(), Some(1_700_000_000_000), "{}", b.name);
        // An older touch (a slow request finishing late) does not move it back.
        b.accounts.touch_device(d, 1_600_000_000_000).await.unwrap();
        assert_eq!(b.accounts.device_last_used(d).await.unwrap(), Some(1_700_000_000_000), "{}", b.name);
        b.accounts.touch_device(d, 1_700_000_000_001).await.unwrap();
        assert_eq!(b.accounts.device_last_used(d).await.unwrap(), Some(1_700_000_000_001), "{}", b.name);
        assert_eq!(b.accounts.device_last_used(other).await.unwrap(), None, "{}", b.name);

        // Concurrent touches in any order keep the latest.
        let mut tasks = Vec::new();
        for at in (1..=40i64).rev() {
            let accounts = b.accounts.clone();
            tasks.push(tokio::spawn(async move {
                accounts.touch_device(other, 1_800_000_000_000 + at).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(b.accounts.device_last_used(other).await.unwrap(), Some(1_800_000_000_040), "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_is_initialised_once() {
    for b in backends().await {
        let key = unique("master_key_check");
        assert_eq!(b.meta.meta(&key).await.unwrap(), None, "{}", b.name);
        assert_eq!(b.meta.init_meta(&key, b"first").await.unwrap(), b"first", "{}", b.name);
        assert_eq!(b.meta.meta(&key).await.unwrap().as_deref(), Some(&b"first"[..]), "{}", b.name);
        assert_eq!(b.meta.init_meta(&key, b"second").await.unwrap(), b"first", "{}", b.name);
        assert_eq!(b.meta.meta(&key).await.unwrap().as_deref(), Some(&b"first"[..]), "{}", b.name);
        assert_eq!(b.meta.meta(&unique("other")).await.unwrap(), None, "{}", b.name);

        // Racing initialisations agree on one value, the one stored.
        let key = unique("raced");
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let meta = b.meta.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move { meta.init_meta(&key, &[i; 4]).await.unwrap() }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers.dedup();
        assert_eq!(answers.len(), 1, "{}: {answers:?}", b.name);
        assert_eq!(b.meta.meta(&key).await.unwrap(), Some(answers[0].clone()), "{}", b.name);
    }
}

fn fenced(c: ConversationId, author: UserId, seq: u64, epoch: u64) -> StoredMessage {
    StoredMessage { epoch, ..message(c, author, seq, &format!("e{epoch}-{seq}")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_fences_out_every_older_epoch() {
    // Cluster ownership: a takeover's epoch refuses a paused former owner's late appends, in
    // the bucket it was writing and in the next one, and a stale client id never replaces the
    // one the new owner recorded.
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let first = b.chat.claim(c, "n1").await.unwrap();
        assert_eq!(first.last_seq, 0, "{}", b.name);
        b.chat.append(&[fenced(c, x, 1, first.epoch), fenced(c, x, 2, first.epoch)]).await.unwrap();
        let second = b.chat.claim(c, "n2").await.unwrap();
        assert!(second.epoch > first.epoch, "{}", b.name);
        assert_eq!(second.last_seq, 2, "{}", b.name);
        // The old owner wakes up and writes on: refused, nothing stored.
        let late = b.chat.append(&[fenced(c, x, 3, first.epoch)]).await.unwrap_err();
        assert!(matches!(late.error, StoreError::Fenced(_)), "{}: {:?}", b.name, late.error);
        assert!(late.stored.is_empty());
        b.chat.append(&[fenced(c, y, 3, second.epoch)]).await.unwrap();
        let stored = b.chat.messages_after(c, 0, 10).await.unwrap();
        assert_eq!(stored.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3], "{}", b.name);
        assert_eq!(stored[2].author_id, y, "{}: the new owner's message stands", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_at_a_bucket_end_fences_the_next_bucket_too() {
    for b in backends().await {
        let (x, y) = (UserId::generate(), UserId::generate());
        let c = b.chat.create_direct(&direct(x, y)).await.unwrap().id;
        let old = b.chat.claim(c, "n1").await.unwrap();
        let all: Vec<StoredMessage> = (1..4096).map(|s| fenced(c, x, s, old.epoch)).collect();
        for batch in all.chunks(1000) {
            b.chat.append(batch).await.unwrap();
        }
        let new = b.chat.claim(c, "n2").await.unwrap();
        assert_eq!(new.last_seq, 4095, "{}", b.name);
        // seq 4096 opens the next bucket: the old owner cannot claim it first.
        let late = b.chat.append(&[fenced(c, x, 4096, old.epoch)]).await.unwrap_err();
        assert!(matches!(late.error, StoreError::Fenced(_)), "{}: {:?}", b.name, late.error);
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 4095, "{}", b.name);
        b.chat.append(&[fenced(c, y, 4096, new.epoch), fenced(c, y, 4097, new.epoch)]).await.unwrap();
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 4097, "{}", b.name);
        // Unfenced (single-node) appends still work on a claimed log.
        b.chat.append(&[message(c, y, 4098, "plain")]).await.unwrap();
        assert_eq!(b.chat.last_seq(c).await.unwrap(), 4098, "{}", b.name);
    }
}
