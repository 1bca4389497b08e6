//! The `PresenceStore` contract, against every presence backend (today: memory; Redis joins).

use switchboard::model::UserId;
use switchboard::store::presence::{MemoryPresence, PresenceStore};

fn backends() -> Vec<(&'static str, Box<dyn PresenceStore>)> {
    vec![("memory", Box::new(MemoryPresence::default()))]
}

#[tokio::test]
async fn online_offline_and_last_seen() {
    for (name, p) in backends() {
        let u = UserId::generate();
        assert_eq!(p.get(u, 1_000).await.unwrap(), None, "{name}");
        p.set_online(u, "node-1", 1_000).await.unwrap();
        let r = p.get(u, 1_500).await.unwrap().unwrap();
        assert!(r.online, "{name}");
        assert_eq!(r.node.as_deref(), Some("node-1"));
        p.set_offline(u, 2_000).await.unwrap();
        let r = p.get(u, 2_500).await.unwrap().unwrap();
        assert!(!r.online);
        assert_eq!(r.last_seen, Some(2_000));
    }
}

#[tokio::test]
async fn heartbeats_expire() {
    for (name, p) in backends() {
        let u = UserId::generate();
        p.heartbeat("node-1", &[u], 10_000, 3_000).await.unwrap();
        assert!(p.get(u, 12_000).await.unwrap().unwrap().online, "{name}");
        assert_eq!(p.live_nodes(12_000).await.unwrap(), vec!["node-1".to_string()]);
        // The node stopped heartbeating: the user is offline, last seen at the last beat.
        let r = p.get(u, 14_000).await.unwrap().unwrap();
        assert!(!r.online, "{name}");
        assert_eq!(r.last_seen, Some(10_000));
        assert!(p.live_nodes(14_000).await.unwrap().is_empty());
    }
}
