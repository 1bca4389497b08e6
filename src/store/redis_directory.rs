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

use crate::model::{Millis, UserId};
use crate::store::presence::{ClusterDirectory, ClusterEvent, NodeInfo, PresenceRecord};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config, Error as RedisError, ErrorKind, EventInterface, Options,
    PubsubInterface, ReconnectPolicy, Server, ServerConfig,
};
use fred::types::{ClientState, ClusterHash, CustomCommand, Value};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

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

/// Users handled per `clear_node`/`leave` script call (bounds how long Redis is blocked).
const CLEAR_BATCH: usize = 512;

/// Shared by every script: `P` is the key prefix (ARGV[1]); event encoders; node liveness.
const LUA_PRELUDE: &str = r#"
local P = ARGV[1]
local CH = P .. 'events'
local function live(n) return redis.call('EXISTS', P .. 'node:' .. n) == 1 end
local function any_live(ukey)
  for _, m in ipairs(redis.call('SMEMBERS', ukey)) do
    if live(m) then return true end
  end
  return false
end
local function located(u, n, present)
  redis.call('PUBLISH', CH, '{"t":"l","u":"' .. u .. '","n":' .. cjson.encode(n) .. ',"p":' .. tostring(present) .. '}')
end
local function online(u)
  redis.call('PUBLISH', CH, '{"t":"p","u":"' .. u .. '","on":true}')
end
local function offline(u, at)
  redis.call('SET', P .. 'seen:' .. u, at)
  redis.call('PUBLISH', CH, '{"t":"p","u":"' .. u .. '","on":false,"ls":' .. at .. '}')
end
-- removes node n from user u's marks; publishes Located and, if no live node remains, Presence
local function unmark(u, n, at)
  local ukey = P .. 'user:' .. u .. ':nodes'
  if redis.call('SREM', ukey, n) == 0 then return 0 end
  located(u, n, false)
  if not any_live(ukey) then offline(u, at) end
  return 1
end
"#;

/// ARGV: P, id, addr, ttl_ms. Returns 1 if the membership was live before, 0 if it had lapsed.
const LUA_RENEW: &str = r#"
local k = P .. 'node:' .. ARGV[2]
local existed = redis.call('EXISTS', k)
redis.call('SET', k, ARGV[3], 'PX', ARGV[4])
redis.call('SADD', P .. 'nodes', ARGV[2])
return existed
"#;

/// ARGV: P, want_live ('1' live, '0' dead). Returns a flat [id, addr, ...] (addr '' when dead).
const LUA_NODES: &str = r#"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  local addr = redis.call('GET', P .. 'node:' .. id)
  if addr and ARGV[2] == '1' then
    out[#out + 1] = id; out[#out + 1] = addr
  elseif (not addr) and ARGV[2] == '0' then
    out[#out + 1] = id; out[#out + 1] = ''
  end
end
return out
"#;

/// ARGV: P, uuid, node, at. Returns {added, became_online}.
const LUA_CONNECTED: &str = r#"
local u, n = ARGV[2], ARGV[3]
local ukey = P .. 'user:' .. u .. ':nodes'
local was_online = any_live(ukey)
local added = redis.call('SADD', ukey, n)
redis.call('SADD', P .. 'nodeusers:' .. n, u)
if added == 1 then located(u, n, true) end
if not was_online then online(u) return {added, 1} end
return {added, 0}
"#;

/// ARGV: P, uuid, node, at. Returns 1 if the mark existed.
const LUA_DISCONNECTED: &str = r#"
local u, n = ARGV[2], ARGV[3]
redis.call('SREM', P .. 'nodeusers:' .. n, u)
return unmark(u, n, ARGV[4])
"#;

/// ARGV: P, node, at, batch, leave ('1': also delete the membership). Returns {cleared, more}.
const LUA_CLEAR: &str = r#"
local n, at = ARGV[2], ARGV[3]
if ARGV[5] == '1' then redis.call('DEL', P .. 'node:' .. n) end
local nkey = P .. 'nodeusers:' .. n
local users = redis.call('SPOP', nkey, tonumber(ARGV[4]))
local cleared = 0
for _, u in ipairs(users) do cleared = cleared + unmark(u, n, at) end
local more = redis.call('SCARD', nkey)
if more == 0 and not live(n) then redis.call('SREM', P .. 'nodes', n) end
return {cleared, more}
"#;

/// ARGV: P, uuid... Returns one array of live node ids per user.
const LUA_NODES_OF: &str = r#"
local cache, out = {}, {}
for i = 2, #ARGV do
  local list = {}
  for _, m in ipairs(redis.call('SMEMBERS', P .. 'user:' .. ARGV[i] .. ':nodes')) do
    local l = cache[m]
    if l == nil then l = live(m); cache[m] = l end
    if l then list[#list + 1] = m end
  end
  out[#out + 1] = list
end
return out
"#;

/// ARGV: P, uuid. Returns {state, seen}: state -1 never seen, 0 offline, 1 online; seen '' if none.
const LUA_PRESENCE: &str = r#"
local u = ARGV[2]
local ukey = P .. 'user:' .. u .. ':nodes'
local seen = redis.call('GET', P .. 'seen:' .. u)
local on = any_live(ukey)
if (not on) and (not seen) and redis.call('EXISTS', ukey) == 0 then return {-1, ''} end
return {on and 1 or 0, seen or ''}
"#;

/// A Lua script with its SHA1, for `EVALSHA` with an `EVAL` fallback on `NOSCRIPT`.
struct Script {
    body: String,
    sha: String,
}

impl Script {
    fn new(body: &str) -> Script {
        let body = format!("{LUA_PRELUDE}{body}");
        let sha = fred::util::sha1_hash(&body);
        Script { body, sha }
    }
}

struct Scripts {
    renew: Script,
    nodes: Script,
    connected: Script,
    disconnected: Script,
    clear: Script,
    nodes_of: Script,
    presence: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            renew: Script::new(LUA_RENEW),
            nodes: Script::new(LUA_NODES),
            connected: Script::new(LUA_CONNECTED),
            disconnected: Script::new(LUA_DISCONNECTED),
            clear: Script::new(LUA_CLEAR),
            nodes_of: Script::new(LUA_NODES_OF),
            presence: Script::new(LUA_PRESENCE),
        }
    }
}

/// Wire form of the events published by the scripts.
#[derive(Deserialize)]
#[serde(tag = "t")]
enum Wire {
    #[serde(rename = "p")]
    Presence {
        u: Uuid,
        on: bool,
        #[serde(default)]
        ls: Option<Millis>,
    },
    #[serde(rename = "l")]
    Located { u: Uuid, n: String, p: bool },
}

fn decode_event(payload: &str) -> Option<ClusterEvent> {
    match serde_json::from_str::<Wire>(payload) {
        Ok(Wire::Presence { u, on, ls }) => Some(ClusterEvent::Presence {
            user: UserId(u),
            online: on,
            last_seen: if on { None } else { ls },
        }),
        Ok(Wire::Located { u, n, p }) => Some(ClusterEvent::Located { user: UserId(u), node: n, present: p }),
        Err(e) => {
            tracing::warn!(error = %e, payload, "undecodable cluster event ignored");
            None
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

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn unexpected(what: &str, v: &Value) -> StoreError {
    StoreError::Corrupt(format!("redis: unexpected reply to {what}: {v:?}"))
}

fn value_string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => String::from_utf8(b.to_vec()).ok(),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::String(s) => s.parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// An array reply; Redis sends an empty Lua table as an empty array (fred may give `Null`).
fn value_array(v: Value) -> Result<Vec<Value>, Value> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null => Ok(Vec::new()),
        other => Err(other),
    }
}

/// Parses `redis://…` (fred's syntax) or `redis-sentinel://[[user:]pass@]h:p[,h:p…]/service`
/// (fred's own `redis-sentinel://h:p/db?sentinelServiceName=…` form is accepted too).
fn parse_url(url: &str) -> StoreResult<Config> {
    let bad = |why: &str| StoreError::Unavailable(format!("bad redis url {url:?}: {why}"));
    if let Some(rest) = url.strip_prefix("redis-sentinel://") {
        if rest.contains("sentinelServiceName=") {
            return Config::from_url_sentinel(url).map_err(|e| bad(&e.to_string()));
        }
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hosts, service) = rest.split_once('/').ok_or_else(|| bad("missing /service_name"))?;
        let service = service.trim_end_matches('/');
        if service.is_empty() || service.contains('/') || service.contains('?') {
            return Err(bad("expected /service_name after the sentinel hosts"));
        }
        let mut servers = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') => {
                    (host, port.parse::<u16>().map_err(|_| bad("bad port"))?)
                }
                _ => (h, 26379),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            servers.push((host.to_owned(), port));
        }
        if servers.is_empty() {
            return Err(bad("no sentinel host"));
        }
        let mut config =
            Config { server: ServerConfig::new_sentinel(servers, service.to_owned()), ..Config::default() };
        if let Some(auth) = auth {
            let (user, pass) = auth.split_once(':').unwrap_or(("", auth));
            config.username = (!user.is_empty()).then(|| user.to_owned());
            config.password = (!pass.is_empty()).then(|| pass.to_owned());
        }
        Ok(config)
    } else if url.starts_with("redis://") || url.starts_with("valkey://") {
        Config::from_url_centralized(url).map_err(|e| bad(&e.to_string()))
    } else {
        Err(bad("expected redis:// or redis-sentinel://"))
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

    /// Runs a script: `EVALSHA`, or `EVAL` when Redis answers `NOSCRIPT` (empty script cache).
    ///
    /// Sent as custom commands on purpose: fred 10.1's `WithOptions` does not implement
    /// `LuaInterface`, so `with_options(..).evalsha(..)` would reach the plain client through
    /// `Deref` and silently drop the fail-fast/timeout options.
    async fn run(&self, script: &Script, args: Vec<String>) -> StoreResult<Value> {
        let client = self.client.with_options(&self.opts);
        let mut argv = Vec::with_capacity(args.len() + 2);
        argv.push(script.sha.clone());
        argv.push("0".to_owned());
        argv.extend(args);
        let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::Random, false);
        let result = match client.custom::<Value, String>(evalsha, argv.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                argv[0] = script.body.clone();
                let eval = CustomCommand::new_static("EVAL", ClusterHash::Random, false);
                client.custom::<Value, String>(eval, argv).await
            }
            other => other,
        };
        result.map_err(|e| {
            if e.details().starts_with("READONLY") {
                // a demoted primary (Sentinel failover): reconnect, which asks the sentinels anew
                let client = self.client.clone();
                tokio::spawn(async move {
                    let _ = client.force_reconnection().await;
                });
            }
            unavailable(e)
        })
    }

    fn args(&self, rest: impl IntoIterator<Item = String>) -> Vec<String> {
        std::iter::once(self.prefix.clone()).chain(rest).collect()
    }

    /// Like [`ClusterDirectory::renew_node`], and tells whether the membership had lapsed
    /// (`true`: the key had expired or never existed, so other nodes may have cleared this
    /// node's user marks and the caller should mark its connected users again).
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
    async fn renew_node(&self, node: &NodeInfo, ttl_ms: u64) -> StoreResult<()> {
        self.renew_node_lapsed(node, ttl_ms).await.map(|_| ())
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

/// Forwards pub/sub messages to the broadcast channel; after every (re)connection of the
/// subscriber, subscribes again and (except for the very first connection) emits `Resync`.
async fn pump(
    subscriber: SubscriberClient,
    channel: String,
    events: broadcast::Sender<ClusterEvent>,
    mut reconnects: broadcast::Receiver<Server>,
    mut messages: broadcast::Receiver<fred::types::Message>,
    subscribed: watch::Sender<u64>,
) {
    use broadcast::error::RecvError;
    let mut connected_before = false;
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if !subscribe(&subscriber, &channel).await {
                        // the connection dropped again; its reconnection brings another event
                        continue;
                    }
                    subscribed.send_modify(|n| *n += 1);
                    if connected_before {
                        tracing::info!(%channel, "cluster event subscriber reconnected: resync");
                        let _ = events.send(ClusterEvent::Resync);
                    }
                    connected_before = true;
                }
                Err(RecvError::Closed) => return,
            },
            m = messages.recv() => match m {
                Ok(m) => {
                    if *m.channel != *channel {
                        continue;
                    }
                    if let Some(ev) = m.value.as_str().as_deref().and_then(decode_event) {
                        let _ = events.send(ev);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "cluster event subscriber lagged: resync");
                    let _ = events.send(ClusterEvent::Resync);
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// SUBSCRIBE, retried while the subscriber stays connected. False if it disconnected.
async fn subscribe(subscriber: &SubscriberClient, channel: &str) -> bool {
    loop {
        match subscriber.subscribe(channel).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, channel, "SUBSCRIBE failed");
                if subscriber.state() != ClientState::Connected {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The subscriber connection carries no replies while idle, so a silently dead connection would
/// go unnoticed: PING it periodically and force a reconnection when it does not answer.
async fn watch_subscriber(subscriber: SubscriberClient, every: Duration, timeout: Duration) {
    let timeout = timeout.max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        if subscriber.state() != ClientState::Connected {
            continue;
        }
        let ping = subscriber.with_options(&Options {
            timeout: Some(timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        });
        if let Err(e) = ping.ping::<Value>(None).await
            && subscriber.state() == ClientState::Connected
        {
            tracing::warn!(error = %e, "cluster event subscriber unresponsive: reconnecting");
            let _ = subscriber.force_reconnection().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = parse_url("redis://127.0.0.1:6390/2").unwrap();
        assert!(matches!(c.server, ServerConfig::Centralized { .. }));
        assert_eq!(c.database, Some(2));
        let c = parse_url("redis-sentinel://127.0.0.1:1,localhost:2,h3/mysvc").unwrap();
        match c.server {
            ServerConfig::Sentinel { hosts, service_name, .. } => {
                assert_eq!(service_name, "mysvc");
                let hp: Vec<_> = hosts.iter().map(|s| (s.host.to_string(), s.port)).collect();
                assert_eq!(hp, vec![("127.0.0.1".into(), 1), ("localhost".into(), 2), ("h3".into(), 26379)]);
            }
            other => panic!("{other:?}"),
        }
        let c = parse_url("redis-sentinel://:secret@127.0.0.1:1/svc").unwrap();
        assert_eq!(c.password.as_deref(), Some("secret"));
        assert!(parse_url("redis-sentinel://127.0.0.1:1").is_err());
        assert!(parse_url("redis-sentinel://127.0.0.1:x/svc").is_err());
        assert!(parse_url("http://x").is_err());
    }

    #[test]
    fn decodes_events() {
        let u = Uuid::nil();
        assert_eq!(
            decode_event(&format!(r#"{{"t":"l","u":"{u}","n":"n\/1","p":true}}"#)),
            Some(ClusterEvent::Located { user: UserId(u), node: "n/1".into(), present: true })
        );
        assert_eq!(
            decode_event(&format!(r#"{{"t":"p","u":"{u}","on":false,"ls":1700000000123}}"#)),
            Some(ClusterEvent::Presence {
                user: UserId(u),
                online: false,
                last_seen: Some(1_700_000_000_123)
            })
        );
        assert_eq!(decode_event("nope"), None);
    }
}
