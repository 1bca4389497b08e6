//! `RedisDirectory`: the [`ClusterDirectory`] on Redis (a single server, or a primary found
//! through Sentinel), through the `fred` client.
//!
//! # Keys (every key and the channel start with the `prefix` given to `connect`)
//!
//! | key                       | type   | content                                                  |
//! |---------------------------|--------|----------------------------------------------------------|
//! | `{p}node:{id}`            | string | the node's peer address, `PX ttl` (membership)           |
//! | `{p}nodes`                | set    | node ids seen, live or dead-but-not-yet-cleared          |
//! | `{p}user:{uuid}:nodes`    | set    | node ids holding sessions of the user                    |
//! | `{p}nodeusers:{id}`       | set    | user uuids with sessions on the node                     |
//! | `{p}seen:{uuid}`          | string | last_seen (unix ms), set when the user went offline      |
//! | channel `{p}events`       | pubsub | compact JSON events (below)                              |
//!
//! A node is *live* iff `{p}node:{id}` exists; a user is online iff one of its nodes is live. An
//! id stays in `{p}nodes` after its key expires, until `clear_node`/`leave` remove it, so that
//! [`RedisDirectory::dead_nodes`] can find nodes whose marks still need clearing.
//!
//! Events: `{"t":"p","u":UUID,"on":true}`, `{"t":"p","u":UUID,"on":false,"ls":MILLIS}`,
//! `{"t":"l","u":UUID,"n":NODE,"p":BOOL}`; a Located event precedes the Presence event it causes.
//!
//! # Round trips (every operation is one Lua script, sent as `EVALSHA`)
//!
//! | operation                          | round trips                                         |
//! |------------------------------------|-----------------------------------------------------|
//! | `renew_node`                       | 1 (`EXISTS`+`SET PX`+`SADD` in the script)          |
//! | `live_nodes`, `presence`, `ping`   | 1                                                   |
//! | `user_connected/_disconnected`     | 1 (sets + `PUBLISH`es in the script)                |
//! | `nodes_of(users)`                  | 1 whatever `users.len()` (0 when empty)             |
//! | `clear_node`, `leave`              | 1 per 512 users of the node (`SPOP` batches)        |
//!
//! After a Redis restart the script cache is empty: the first call of each script gets
//! `NOSCRIPT` and is sent again as `EVAL` (one extra round trip, once; `EVAL` caches the script).
//! Heartbeats are per node only: nothing is written per user per heartbeat.
//!
//! Scripts build key names from `ARGV`, so this supports a single server or Sentinel, not Redis
//! Cluster.
//!
//! # Availability
//!
//! The command client and the subscriber reconnect forever in the background (exponential
//! backoff, 50 ms up to 1 s). Every command is sent with fred's `fail_fast` (rejected at once
//! while not connected), one write attempt (no replay after a reconnect) and a timeout (default
//! 500 ms), so while Redis is away every call fails fast with `StoreError::Unavailable`.
//! `connect` waits at most `initial_wait` (default 1 s) for the connection and the first
//! `SUBSCRIBE` (returning at once if the first attempt is refused) and succeeds even if Redis is
//! down; events published before the subscription is in place are not seen. A `READONLY` reply
//! (a primary demoted under Sentinel) forces a reconnection, which asks the sentinels for the
//! current primary. fred 10.1's `WithOptions` lacks `LuaInterface`, so scripts are sent with
//! `custom` commands (which do honour the options).
//!
//! The subscriber subscribes again after every reconnection, then emits
//! [`ClusterEvent::Resync`]; it also PINGs its idle connection every few seconds and reconnects
//! when that goes unanswered. `Resync` is also emitted when fred's own message buffer overflowed;
//! tokio's `Lagged` on the caller's receiver must be handled like `Resync` by the caller.

mod events;
mod reply;
mod scripts;
mod server_url;

use self::events::{pump, watch_subscriber};
use self::reply::{unavailable, unexpected, value_array, value_i64, value_string};
use self::scripts::{CLEAR_BATCH, Scripts};
use self::server_url::parse_url;
use crate::model::{Millis, UserId};
use crate::store::presence::{ClusterDirectory, ClusterEvent, NodeInfo, PresenceRecord};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Error as RedisError, ErrorKind, EventInterface, Options, ReconnectPolicy,
};
use fred::types::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Tunables of [`RedisDirectory::connect_with`]; `Default` is what `connect` uses.
#[derive(Clone, Debug)]
pub struct RedisDirectoryConfig {
    /// Bound on every command, queueing included (fail-fast while disconnected is immediate).
    pub command_timeout: Duration,
    /// How long `connect` waits for the first connection before returning anyway.
    pub initial_wait: Duration,
    /// TCP connect (and Sentinel query) timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Reconnect backoff: exponential from `min` to `max`, forever.
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// A connection with a reply outstanding this long is closed and reconnected.
    pub unresponsive_after: Duration,
    /// How often the (otherwise silent) subscriber connection is probed with PING.
    pub subscriber_ping_interval: Duration,
    /// Capacity of the `events()` broadcast channel (and of fred's message buffer).
    pub event_capacity: usize,
}

impl Default for RedisDirectoryConfig {
    fn default() -> Self {
        RedisDirectoryConfig {
            command_timeout: Duration::from_millis(500),
            initial_wait: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(1),
            unresponsive_after: Duration::from_secs(2),
            subscriber_ping_interval: Duration::from_secs(3),
            event_capacity: 4096,
        }
    }
}

/// The cluster directory on Redis. Dropping it stops its background tasks.
pub struct RedisDirectory {
    client: Client,
    subscriber: SubscriberClient,
    opts: Options,
    prefix: String,
    scripts: Arc<Scripts>,
    events: broadcast::Sender<ClusterEvent>,
    tasks: Vec<JoinHandle<()>>,
    connections: Vec<JoinHandle<Result<(), RedisError>>>,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Drop for RedisDirectory {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in &self.connections {
            t.abort();
        }
    }
}

impl RedisDirectory {
    /// Connects with the default [`RedisDirectoryConfig`]. See [`Self::connect_with`].
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<RedisDirectory> {
        Self::connect_with(url, prefix, RedisDirectoryConfig::default()).await
    }

    /// `url`: `redis://host:port[/db]` or `redis-sentinel://host:port[,host:port…]/service`.
    /// Fails only on a malformed URL: if Redis is down it returns within `initial_wait` and the
    /// clients keep reconnecting in the background (calls fail with `Unavailable` meanwhile).
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        cfg: RedisDirectoryConfig,
    ) -> StoreResult<RedisDirectory> {
        let mut config = parse_url(url)?;
        // keep retrying the first connection in the background instead of failing `connect`
        config.fail_fast = false;
        let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
        let policy =
            ReconnectPolicy::new_exponential(0, ms(cfg.reconnect_min_delay), ms(cfg.reconnect_max_delay), 2);
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(policy)
            .with_connection_config(|c| {
                c.connection_timeout = cfg.connect_timeout;
                c.internal_command_timeout = cfg.connect_timeout;
                c.max_command_attempts = 1;
                c.unresponsive.max_timeout = Some(cfg.unresponsive_after);
                c.unresponsive.interval = (cfg.unresponsive_after / 4).max(Duration::from_millis(50));
            })
            .with_performance_config(|p| {
                // applies to the subscriber's own commands; data commands carry `opts` below
                p.default_command_timeout = cfg.command_timeout.max(Duration::from_secs(2));
                p.broadcast_channel_capacity = cfg.event_capacity.max(32);
            });
        let client = builder.build().map_err(unavailable)?;
        let subscriber = builder.build_subscriber_client().map_err(unavailable)?;

        let prefix = prefix.to_owned();
        let channel = format!("{prefix}events");
        let (events, _) = broadcast::channel(cfg.event_capacity.max(16));

        // listen before connecting so the first connection's events are not missed
        let reconnects = subscriber.reconnect_rx();
        let messages = subscriber.message_rx();
        let mut errors = client.error_rx();
        let (subscribed_tx, mut subscribed) = watch::channel(0u64);
        let pump = tokio::spawn(pump(
            subscriber.clone(),
            channel,
            events.clone(),
            reconnects,
            messages,
            subscribed_tx,
        ));
        let watchdog = tokio::spawn(watch_subscriber(
            subscriber.clone(),
            cfg.subscriber_ping_interval,
            cfg.command_timeout,
        ));

        let connections = vec![client.connect(), subscriber.connect()];
        // connected, and subscribed (so that `events()` carries what happens after `connect`)
        let first = async {
            let up = async {
                client.wait_for_connect().await?;
                let _ = subscribed.wait_for(|n| *n > 0).await;
                Ok(())
            };
            tokio::select! {
                r = up => r,
                r = errors.recv() => match r {
                    Ok((e, _)) => Err(e),
                    Err(_) => Err(RedisError::new(ErrorKind::Unknown, "client stopped")),
                },
            }
        };
        match tokio::time::timeout(cfg.initial_wait, first).await {
            Ok(Ok(())) => tracing::debug!(url, "redis directory connected"),
            Ok(Err(e)) => {
                tracing::warn!(url, error = %e, "redis unreachable; reconnecting in the background")
            }
            Err(_) => tracing::warn!(url, "redis not connected yet; reconnecting in the background"),
        }

        let opts = Options {
            timeout: Some(cfg.command_timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        };
        Ok(RedisDirectory {
            client,
            subscriber,
            opts,
            prefix,
            scripts: Arc::new(Scripts::new()),
            events,
            tasks: vec![pump, watchdog],
            connections,
        })
    }

    /// [`ClusterDirectory::renew_node`]: `true` when the key had expired or never existed (so
    /// other nodes may have cleared this node's user marks).
    pub async fn renew_node_lapsed(&self, node: &NodeInfo, ttl_ms: u64) -> StoreResult<bool> {
        let args = self.args([node.id.clone(), node.peer_addr.clone(), ttl_ms.max(1).to_string()]);
        let v = self.run(&self.scripts.renew, args).await?;
        match value_i64(&v) {
            Some(existed) => Ok(existed == 0),
            None => Err(unexpected("renew", &v)),
        }
    }

    async fn nodes(&self, live: bool) -> StoreResult<Vec<NodeInfo>> {
        let v = self.run(&self.scripts.nodes, self.args([if live { "1" } else { "0" }.to_owned()])).await?;
        let flat = value_array(v).map_err(|v| unexpected("nodes", &v))?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(id), Some(addr)) = (it.next(), it.next()) {
            match (value_string(id), value_string(addr)) {
                (Some(id), Some(peer_addr)) => out.push(NodeInfo { id, peer_addr }),
                _ => return Err(StoreError::Corrupt("redis: non-string node entry".into())),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Node ids listed in `{p}nodes` whose membership expired: nodes that died without `leave`
    /// and whose marks nobody has cleared yet (pass each to `clear_node`). Sorted.
    pub async fn dead_nodes(&self) -> StoreResult<Vec<String>> {
        Ok(self.nodes(false).await?.into_iter().map(|n| n.id).collect())
    }

    async fn clear(&self, node: &str, at: Millis, leave: bool) -> StoreResult<usize> {
        let mut total = 0usize;
        loop {
            let args = self.args([
                node.to_owned(),
                at.to_string(),
                CLEAR_BATCH.to_string(),
                if leave { "1" } else { "0" }.to_owned(),
            ]);
            let v = self.run(&self.scripts.clear, args).await?;
            let a = value_array(v).map_err(|v| unexpected("clear_node", &v))?;
            let (cleared, more) = match a.as_slice() {
                [c, m] => (value_i64(c), value_i64(m)),
                _ => (None, None),
            };
            let (Some(cleared), Some(more)) = (cleared, more) else {
                return Err(unexpected("clear_node", &Value::Array(a)));
            };
            total += cleared.max(0) as usize;
            if more <= 0 {
                return Ok(total);
            }
        }
    }

    /// Closes both connections (QUIT); the directory is unusable afterwards.
    pub async fn close(&self) {
        let _ = self.client.quit().await;
        let _ = self.subscriber.quit().await;
    }
}

#[async_trait]
impl ClusterDirectory for RedisDirectory {
    async fn renew_node(&self, node: &NodeInfo, ttl_ms: u64) -> StoreResult<bool> {
        self.renew_node_lapsed(node, ttl_ms).await
    }

    async fn live_nodes(&self) -> StoreResult<Vec<NodeInfo>> {
        self.nodes(true).await
    }

    async fn leave(&self, node: &str, at: Millis) -> StoreResult<()> {
        self.clear(node, at, true).await.map(|_| ())
    }

    async fn user_connected(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()> {
        let args = self.args([user.0.to_string(), node.to_owned(), at.to_string()]);
        self.run(&self.scripts.connected, args).await.map(|_| ())
    }

    async fn user_disconnected(&self, user: UserId, node: &str, at: Millis) -> StoreResult<()> {
        let args = self.args([user.0.to_string(), node.to_owned(), at.to_string()]);
        self.run(&self.scripts.disconnected, args).await.map(|_| ())
    }

    async fn nodes_of(&self, users: &[UserId]) -> StoreResult<Vec<Vec<String>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let v = self.run(&self.scripts.nodes_of, self.args(users.iter().map(|u| u.0.to_string()))).await?;
        let lists = value_array(v).map_err(|v| unexpected("nodes_of", &v))?;
        if lists.len() != users.len() {
            return Err(unexpected("nodes_of", &Value::Array(lists)));
        }
        lists
            .into_iter()
            .map(|l| {
                let mut nodes = value_array(l)
                    .map_err(|v| unexpected("nodes_of", &v))?
                    .into_iter()
                    .map(|n| {
                        value_string(n).ok_or_else(|| StoreError::Corrupt("redis: non-string node".into()))
                    })
                    .collect::<StoreResult<Vec<String>>>()?;
                nodes.sort();
                Ok(nodes)
            })
            .collect()
    }

    async fn presence(&self, user: UserId) -> StoreResult<Option<PresenceRecord>> {
        let v = self.run(&self.scripts.presence, self.args([user.0.to_string()])).await?;
        let a = value_array(v).map_err(|v| unexpected("presence", &v))?;
        let [state, seen] = a.as_slice() else {
            return Err(unexpected("presence", &Value::Array(a)));
        };
        let state = value_i64(state).ok_or_else(|| unexpected("presence", state))?;
        if state < 0 {
            return Ok(None);
        }
        Ok(Some(PresenceRecord { online: state == 1, last_seen: value_i64(seen) }))
    }

    async fn clear_node(&self, node: &str, at: Millis) -> StoreResult<usize> {
        self.clear(node, at, false).await
    }

    fn events(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.client.with_options(&self.opts).ping::<()>(None).await.map_err(unavailable)
    }
}
