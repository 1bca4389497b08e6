//! The Lua scripts behind every `RedisDirectory` operation (a shared prelude of key names, event
//! encoders and node liveness, then one script per operation), their SHA1s, and the call helper
//! that sends one as `EVALSHA` with the `EVAL` fallback on `NOSCRIPT` (and reconnects on
//! `READONLY`).

use super::RedisDirectory;
use super::reply::unavailable;
use crate::store::StoreResult;
use fred::prelude::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};

/// Users handled per `clear_node`/`leave` script call (bounds how long Redis is blocked).
pub(super) const CLEAR_BATCH: usize = 512;

/// Shared by every script: `P` is the key prefix (`ARGV[1]`); event encoders; node liveness.
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
if ARGV[5] == '1' then redis.call('DEL', P .. 'node:' .. n)
elseif live(n) then return {0, 0} end
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
pub(super) struct Script {
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

pub(super) struct Scripts {
    pub(super) renew: Script,
    pub(super) nodes: Script,
    pub(super) connected: Script,
    pub(super) disconnected: Script,
    pub(super) clear: Script,
    pub(super) nodes_of: Script,
    pub(super) presence: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
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

impl RedisDirectory {
    /// Runs a script: `EVALSHA`, or `EVAL` when Redis answers `NOSCRIPT` (empty script cache).
    ///
    /// Sent as custom commands on purpose: fred 10.1's `WithOptions` does not implement
    /// `LuaInterface`, so `with_options(..).evalsha(..)` would reach the plain client through
    /// `Deref` and silently drop the fail-fast/timeout options.
    pub(super) async fn run(&self, script: &Script, args: Vec<String>) -> StoreResult<Value> {
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

    pub(super) fn args(&self, rest: impl IntoIterator<Item = String>) -> Vec<String> {
        std::iter::once(self.prefix.clone()).chain(rest).collect()
    }
}
