//! The group part of the storage contract, against every backend (`store_conformance::backends`):
//! a group's member records, the pending-update protocol (begin, apply, discard; idempotent,
//! never undoing a later change), rotated keys and deletion.

use super::store_conformance::{backends, message};
use switchboard::model::*;

fn group(title: &str) -> Conversation {
    Conversation {
        id: ConversationId::generate(),
        kind: ConversationKind::Group,
        title: Some(title.into()),
        members: vec![],
        wrapped_key: vec![1; 72],
        created_at: now_millis(),
        rotated_keys: vec![],
        deleted: false,
    }
}

fn record(user: UserId, role: Role, since: u64, until: Option<u64>, at: u64) -> MemberRecord {
    MemberRecord { user_id: user, role, since_seq: since, until_seq: until, at_seq: at }
}

fn update(seq: u64, members: Vec<MemberRecord>) -> GroupUpdate {
    GroupUpdate { seq, message_id: MessageId::generate(), members, title: None, key: None, deleted: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_member_records_and_conversation_lists() {
    for b in backends().await {
        let (owner, alice, bob) = (UserId::generate(), UserId::generate(), UserId::generate());
        let g = group("team");
        let records = vec![record(owner, Role::Owner, 1, None, 0), record(alice, Role::Member, 1, None, 0)];
        b.chat.create_group(&g, &records).await.unwrap();
        let stored = b.chat.conversation(g.id).await.unwrap().unwrap();
        assert_eq!(stored.kind, ConversationKind::Group, "{}", b.name);
        assert_eq!(stored.title.as_deref(), Some("team"), "{}", b.name);
        assert!(!stored.deleted && stored.rotated_keys.is_empty(), "{}", b.name);
        let mut members = b.chat.members(g.id).await.unwrap();
        members.sort_by_key(|m| m.record.role);
        assert_eq!(members.len(), 2, "{}", b.name);
        assert_eq!(members[1].record.role, Role::Owner, "{}", b.name);
        assert_eq!(members[0].record.since_seq, 1, "{}", b.name);
        assert!(b.chat.user_conversations(alice).await.unwrap().contains(&g.id), "{}", b.name);
        assert!(b.chat.member(g.id, bob).await.unwrap().is_none(), "{}", b.name);
        // Watermarks of a group member work as in a direct conversation.
        let to = Watermarks { delivered_seq: 3, read_seq: 2 };
        assert!(b.chat.advance_watermarks(g.id, alice, to).await.unwrap().is_some(), "{}", b.name);
        assert_eq!(b.chat.member(g.id, alice).await.unwrap().unwrap().watermarks, to, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_update_is_pending_until_applied_or_discarded() {
    for b in backends().await {
        let (owner, alice, bob) = (UserId::generate(), UserId::generate(), UserId::generate());
        let g = group("team");
        b.chat
            .create_group(
                &g,
                &[record(owner, Role::Owner, 1, None, 0), record(alice, Role::Member, 1, None, 0)],
            )
            .await
            .unwrap();
        // Add bob at seq 2, remove alice at seq 3 with a new key, rename and promote at 4.
        let add = update(2, vec![record(bob, Role::Member, 2, None, 2)]);
        b.chat.begin_group_update(g.id, &add).await.unwrap();
        assert_eq!(b.chat.pending_group_updates(g.id).await.unwrap(), vec![add.clone()], "{}", b.name);
        b.chat.apply_group_update(g.id, &add).await.unwrap();
        assert_eq!(b.chat.pending_group_updates(g.id).await.unwrap(), vec![], "{}", b.name);
        assert!(b.chat.user_conversations(bob).await.unwrap().contains(&g.id), "{}", b.name);
        let bob_member = b.chat.member(g.id, bob).await.unwrap().unwrap();
        assert_eq!(
            bob_member.record,
            record(bob, Role::Member, 2, None, 0).with_at(bob_member.record.at_seq)
        );
        assert_eq!(bob_member.watermarks, Watermarks::default(), "{}", b.name);

        let mut remove = update(3, vec![record(alice, Role::Member, 1, Some(3), 3)]);
        remove.key = Some(KeyEpoch { from_seq: 4, wrapped_key: vec![9; 72] });
        b.chat.begin_group_update(g.id, &remove).await.unwrap();
        b.chat.apply_group_update(g.id, &remove).await.unwrap();
        // Applying again (a crash before the pending record was cleared) changes nothing.
        b.chat.apply_group_update(g.id, &remove).await.unwrap();
        let alice_record = b.chat.member(g.id, alice).await.unwrap().unwrap().record;
        assert_eq!(alice_record.until_seq, Some(3), "{}", b.name);
        assert!(alice_record.can_read(3) && !alice_record.can_read(4), "{}", b.name);
        assert!(
            b.chat.user_conversations(alice).await.unwrap().contains(&g.id),
            "{}: history stays listed",
            b.name
        );
        let stored = b.chat.conversation(g.id).await.unwrap().unwrap();
        assert_eq!(
            stored.rotated_keys,
            vec![KeyEpoch { from_seq: 4, wrapped_key: vec![9; 72] }],
            "{}",
            b.name
        );

        let mut rename = update(4, vec![record(bob, Role::Admin, 2, None, 4)]);
        rename.title = Some("renamed".into());
        b.chat.apply_group_update(g.id, &rename).await.unwrap();
        // A late replay of an older update does not undo the later one.
        b.chat.apply_group_update(g.id, &add).await.unwrap();
        assert_eq!(b.chat.member(g.id, bob).await.unwrap().unwrap().record.role, Role::Admin, "{}", b.name);
        assert_eq!(b.chat.conversation(g.id).await.unwrap().unwrap().title.as_deref(), Some("renamed"));

        // A pending update whose message never landed is discarded; discarding another one
        // leaves it; a second attempt at the same seq is not hidden by the first's discard.
        let never = update(5, vec![record(alice, Role::Member, 5, None, 5)]);
        b.chat.begin_group_update(g.id, &never).await.unwrap();
        b.chat.discard_group_update(g.id, &rename).await.unwrap();
        assert_eq!(b.chat.pending_group_updates(g.id).await.unwrap(), vec![never.clone()], "{}", b.name);
        b.chat.discard_group_update(g.id, &never).await.unwrap();
        assert_eq!(b.chat.pending_group_updates(g.id).await.unwrap(), vec![], "{}", b.name);
        let retry = update(5, vec![record(alice, Role::Member, 5, None, 5)]);
        b.chat.begin_group_update(g.id, &retry).await.unwrap();
        assert_eq!(b.chat.pending_group_updates(g.id).await.unwrap(), vec![retry.clone()], "{}", b.name);
        b.chat.discard_group_update(g.id, &retry).await.unwrap();
        assert_eq!(
            b.chat.member(g.id, alice).await.unwrap().unwrap().record.until_seq,
            Some(3),
            "{}",
            b.name
        );

        let mut delete = update(6, vec![]);
        delete.deleted = true;
        b.chat.apply_group_update(g.id, &delete).await.unwrap();
        assert!(b.chat.conversation(g.id).await.unwrap().unwrap().deleted, "{}", b.name);
        // Messages of a group are stored like any other.
        b.chat.append(&[message(g.id, owner, 1, "c1")]).await.unwrap();
        assert_eq!(b.chat.last_seq(g.id).await.unwrap(), 1, "{}", b.name);
    }
}

trait WithAt {
    fn with_at(self, at: u64) -> Self;
}

impl WithAt for MemberRecord {
    fn with_at(self, at: u64) -> Self {
        MemberRecord { at_seq: at, ..self }
    }
}
