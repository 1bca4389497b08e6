//! Key rotation, on the stored bytes (in-process: the owner shards over the embedded store).
//! After a member is removed, new messages are sealed with a new key: the key that opened the
//! messages the removed member could read opens none of the later ones; every message still
//! opens with the key of its own seq; and a group change left pending by a crash between its
//! message and its application is finished by the next load of the group.

use std::sync::Arc;
use switchboard::account::Identity;
use switchboard::conversation::directory::Conversations;
use switchboard::conversation::owner::{ChangeRequest, Owner, OwnerCluster, OwnerSettings, SendRequest};
use switchboard::crypto::MasterKey;
use switchboard::delivery::{Registry, Router};
use switchboard::model::*;
use switchboard::store::embedded::EmbeddedStore;
use switchboard::store::presence::MemoryDirectory;
use switchboard::store::{DirectoryStore, MessageLog};
use switchboard::telemetry::Metrics;

fn owners_over(
    store: Arc<dyn switchboard::store::ChatStore>,
    conversations: Arc<Conversations>,
) -> switchboard::conversation::owner::OwnerHandle {
    use actix::Actor;
    let registry = Registry::new("n1".into(), Arc::new(MemoryDirectory::default()), false).start();
    let router = Router::new(registry, None).start();
    Owner::start(
        store,
        conversations,
        router,
        Arc::new(Metrics::default()),
        OwnerSettings::default(),
        1,
        OwnerCluster::single("node-1"),
    )
}

fn identity(user: UserId) -> Identity {
    Identity { user_id: user, device_id: DeviceId::generate() }
}

#[actix_rt::test]
async fn a_removal_rotates_the_key_for_every_later_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let conversations = Arc::new(Conversations::new(store.clone(), Some(MasterKey::generate())));
    let owners = owners_over(store.clone(), conversations.clone());
    let (owner, stays, leaves) = (UserId::generate(), UserId::generate(), UserId::generate());
    let group = conversations.create_group(owner, "keys".into(), &[stays, leaves]).await.unwrap().id;
    let change = |action| ChangeRequest { from: identity(owner), conversation_id: group, action };
    let send = |id: &str| SendRequest {
        from: identity(owner),
        conversation_id: group,
        client_msg_id: id.into(),
        body: format!("secret {id}"),
        attachments: vec![],
    };
    owners.change(change(GroupAction::Create)).unwrap().await.unwrap().unwrap();
    owners.send(send("before")).unwrap().await.unwrap().unwrap();
    let removal =
        owners.change(change(GroupAction::Remove { user: leaves })).unwrap().await.unwrap().unwrap();
    owners.send(send("after")).unwrap().await.unwrap().unwrap();

    let info = conversations.reload(group).await.unwrap().unwrap();
    let stored = store.messages_after(group, 0, 100).await.unwrap();
    assert_eq!(stored.len(), 4);
    let old_key = info.key_for(removal.seq);
    for m in &stored {
        // Every message opens with the key of its seq.
        assert!(info.key_for(m.seq).open(&m.sealed_body, &info.body_aad(m.seq)).is_ok(), "seq {}", m.seq);
        let opens_with_old = old_key.open(&m.sealed_body, &info.body_aad(m.seq)).is_ok();
        assert_eq!(opens_with_old, m.seq <= removal.seq, "seq {}: the removed member's key", m.seq);
        assert!(!m.sealed_body.windows(6).any(|w| w == b"secret"), "sealed at rest");
    }
    let conversation = store.conversation(group).await.unwrap().unwrap();
    assert_eq!(conversation.rotated_keys.len(), 1);
    assert_eq!(conversation.rotated_keys[0].from_seq, removal.seq + 1);
    assert!(info.is_member(stays) && !info.is_member(leaves));
}

#[actix_rt::test]
async fn a_change_left_pending_by_a_crash_is_finished_or_dropped_by_the_next_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let master = MasterKey::generate();
    let conversations = Arc::new(Conversations::new(store.clone(), Some(master.clone())));
    let (owner, joiner, ghost) = (UserId::generate(), UserId::generate(), UserId::generate());
    let info = conversations.create_group(owner, "crash".into(), &[]).await.unwrap();
    // A crash after the system message of "add joiner" was stored, before it was applied.
    let added = GroupUpdate {
        seq: 1,
        message_id: MessageId::generate(),
        members: vec![MemberRecord {
            user_id: joiner,
            role: Role::Member,
            since_seq: 1,
            until_seq: None,
            at_seq: 1,
        }],
        title: None,
        key: None,
        deleted: false,
    };
    store.begin_group_update(info.id, &added).await.unwrap();
    let message = StoredMessage {
        conversation_id: info.id,
        seq: 1,
        message_id: added.message_id,
        author_id: owner,
        device_id: DeviceId::generate(),
        client_msg_id: "system".into(),
        kind: MessageKind::System,
        sealed_body: info.key_for(1).seal(b"{}", &info.body_aad(1)),
        ts: now_millis(),
        attachments: vec![],
        epoch: 0,
    };
    store.append(&[message]).await.unwrap();
    // The next process loads the group: the add is applied, and the joiner can send.
    let conversations = Arc::new(Conversations::new(store.clone(), Some(master.clone())));
    let owners = owners_over(store.clone(), conversations.clone());
    let sent = owners
        .send(SendRequest {
            from: identity(joiner),
            conversation_id: info.id,
            client_msg_id: "hi".into(),
            body: "hi".into(),
            attachments: vec![],
        })
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sent.seq, 2);
    assert_eq!(store.pending_group_updates(info.id).await.unwrap(), vec![]);

    // A pending update whose message never landed is dropped: the ghost is not a member.
    let never =
        GroupUpdate { seq: 3, members: vec![MemberRecord { user_id: ghost, ..added.members[0] }], ..added };
    store.begin_group_update(info.id, &never).await.unwrap();
    let conversations = Arc::new(Conversations::new(store.clone(), Some(master)));
    let owners = owners_over(store.clone(), conversations.clone());
    let refused = owners
        .send(SendRequest {
            from: identity(ghost),
            conversation_id: info.id,
            client_msg_id: "x".into(),
            body: "x".into(),
            attachments: vec![],
        })
        .unwrap()
        .await
        .unwrap();
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(store.pending_group_updates(info.id).await.unwrap(), vec![]);
}

#[actix_rt::test]
async fn a_change_whose_append_answer_was_lost_is_applied_not_dropped() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(super::owner_restart::PanicsOnce {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        armed: AtomicBool::new(false),
        lose_system_ack: AtomicBool::new(false),
    });
    let conversations = Arc::new(Conversations::new(store.clone(), Some(MasterKey::generate())));
    let owners = owners_over(store.clone(), conversations.clone());
    let (owner, leaves) = (UserId::generate(), UserId::generate());
    let group = conversations.create_group(owner, "lost ack".into(), &[leaves]).await.unwrap().id;
    let change = |action| ChangeRequest { from: identity(owner), conversation_id: group, action };
    owners.change(change(GroupAction::Create)).unwrap().await.unwrap().unwrap();
    // The removal's message is stored but its append reports a failure (a timed-out write
    // that landed): the caller gets an error, and the change must still take effect.
    store.lose_system_ack.store(true, Ordering::SeqCst);
    let answer = owners.change(change(GroupAction::Remove { user: leaves })).unwrap().await.unwrap();
    assert!(answer.is_err(), "{answer:?}");
    // The next request loads the group again: the removal is applied from its pending record.
    let refused = owners
        .send(SendRequest {
            from: identity(leaves),
            conversation_id: group,
            client_msg_id: "still here?".into(),
            body: "x".into(),
            attachments: vec![],
        })
        .unwrap()
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err().code, switchboard::error::ErrorCode::Forbidden);
    assert_eq!(store.pending_group_updates(group).await.unwrap(), vec![]);
    let record = store.member(group, leaves).await.unwrap().unwrap().record;
    assert_eq!(record.until_seq, Some(2));
    assert_eq!(store.conversation(group).await.unwrap().unwrap().rotated_keys.len(), 1, "the key rotated");
}
