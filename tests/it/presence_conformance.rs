//! The `ClusterDirectory` contract, against every backend: memory, and Redis when
//! `SWITCHBOARD_TEST_REDIS` names a running server (`scripts/test` starts one). Each run uses
//! its own key prefix.

use std::sync::Arc;
use std::time::Duration;
use switchboard::model::UserId;
use switchboard::store::presence::{ClusterDirectory, ClusterEvent, MemoryDirectory, NodeInfo};
use switchboard::store::redis_directory::RedisDirectory;

async fn backends() -> Vec<(&'static str, Arc<dyn ClusterDirectory>)> {
    let mut out: Vec<(&'static str, Arc<dyn ClusterDirectory>)> =
        vec![("memory", Arc::new(MemoryDirectory::default()))];
    if let Ok(addr) = std::env::var("SWITCHBOARD_TEST_REDIS") {
        let prefix = format!("sbtest:{}:", UserId::generate());
        let redis = RedisDirectory::connect(&format!("redis://{addr}"), &prefix).await.unwrap();
        out.push(("redis", Arc::new(redis)));
    }
    out
}

fn node(id: &str) -> NodeInfo {
    NodeInfo { id: id.into(), peer_addr: format!("127.0.0.1:{}", 7000 + id.len()) }
}

async fn next(rx: &mut tokio::sync::broadcast::Receiver<ClusterEvent>) -> ClusterEvent {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event").unwrap();
        if event != ClusterEvent::Resync {
            return event;
        }
    }
}

#[tokio::test]
async fn online_on_two_nodes_offline_after_the_last_with_last_seen() {
    for (name, d) in backends().await {
        let mut events = d.events();
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.renew_node(&node("a"), 5_000).await.unwrap();
        d.renew_node(&node("b"), 5_000).await.unwrap();
        let u = UserId::generate();
        assert_eq!(d.presence(u).await.unwrap(), None, "{name}");
        d.user_connected(u, "a", 1_000).await.unwrap();
        assert_eq!(
            next(&mut events).await,
            ClusterEvent::Located { user: u, node: "a".into(), present: true }
        );
        assert_eq!(
            next(&mut events).await,
            ClusterEvent::Presence { user: u, online: true, last_seen: None }
        );
        d.user_connected(u, "b", 1_100).await.unwrap();
        assert_eq!(
            next(&mut events).await,
            ClusterEvent::Located { user: u, node: "b".into(), present: true }
        );
        let mut nodes = d.nodes_of(&[u, UserId::generate()]).await.unwrap();
        nodes[0].sort();
        assert_eq!(nodes, vec![vec!["a".to_string(), "b".to_string()], vec![]], "{name}");
        d.user_disconnected(u, "a", 2_000).await.unwrap();
        assert_eq!(
            next(&mut events).await,
            ClusterEvent::Located { user: u, node: "a".into(), present: false }
        );
        assert!(d.presence(u).await.unwrap().unwrap().online, "{name}: still on b");
        d.user_disconnected(u, "b", 3_000).await.unwrap();
        assert_eq!(
            next(&mut events).await,
            ClusterEvent::Located { user: u, node: "b".into(), present: false }
        );
        assert_eq!(
            next(&mut events).await,
            ClusterEvent::Presence { user: u, online: false, last_seen: Some(3_000) }
        );
        let p = d.presence(u).await.unwrap().unwrap();
        assert!(!p.online && p.last_seen == Some(3_000), "{name}: {p:?}");
        d.leave("a", 4_000).await.unwrap();
        d.leave("b", 4_000).await.unwrap();
    }
}

#[tokio::test]
async fn membership_expires_and_a_dead_nodes_users_are_cleared() {
    for (name, d) in backends().await {
        assert!(d.renew_node(&node("x1"), 300).await.unwrap(), "{name}: a first renewal is a lapse");
        assert!(!d.renew_node(&node("x1"), 300).await.unwrap(), "{name}: a timely renewal is not");
        d.renew_node(&node("x2"), 60_000).await.unwrap();
        let ids = |nodes: Vec<NodeInfo>| nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
        let live = ids(d.live_nodes().await.unwrap());
        assert!(live.contains(&"x1".to_string()) && live.contains(&"x2".to_string()), "{name}: {live:?}");
        let u = UserId::generate();
        d.user_connected(u, "x1", 1).await.unwrap();
        assert_eq!(d.clear_node("x1", 2).await.unwrap(), 0, "{name}: a live node's marks stay");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let live = ids(d.live_nodes().await.unwrap());
        assert!(!live.contains(&"x1".to_string()), "{name}: x1 expired: {live:?}");
        assert!(d.renew_node(&node("x3"), 300).await.unwrap(), "{name}");
        // A user whose only node expired is offline and located nowhere.
        assert_eq!(d.nodes_of(&[u]).await.unwrap(), vec![Vec::<String>::new()], "{name}");
        assert!(!d.presence(u).await.unwrap().is_some_and(|p| p.online), "{name}");
        assert_eq!(d.clear_node("x1", 5).await.unwrap(), 1, "{name}");
        assert_eq!(d.clear_node("x1", 6).await.unwrap(), 0, "{name}: idempotent");
        d.leave("x2", 7).await.unwrap();
        assert!(!ids(d.live_nodes().await.unwrap()).contains(&"x2".to_string()), "{name}");
        d.ping().await.unwrap();
    }
}
