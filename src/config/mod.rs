//! Configuration: the `Config` tree read from `config/switchboard.toml` (or built-in defaults
//! equal to it), every key overridable by `SWITCHBOARD_<KEY>`, validated before the node starts.

mod attachments;

pub use attachments::AttachmentsConfig;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration. Key names are unique across sections, so each has one env var:
/// `SWITCHBOARD_` + the key in upper case (e.g. `http_addr` → `SWITCHBOARD_HTTP_ADDR`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub security: SecurityConfig,
    pub websocket: WebSocketConfig,
    pub limits: LimitsConfig,
    pub cluster: ClusterConfig,
    pub attachments: AttachmentsConfig,
}

/// Several nodes as one service: membership and presence in Redis, the inter-node link,
/// conversation ownership fenced in Cassandra.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub cluster_enabled: bool,
    pub peer_addr: String,
    pub peer_advertise: String,
    pub cluster_secret: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub membership_ttl_ms: u64,
    pub membership_renew_ms: u64,
    pub peer_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cluster_enabled: false,
            peer_addr: "127.0.0.1:7100".into(),
            peer_advertise: String::new(),
            cluster_secret: String::new(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "sb:".into(),
            membership_ttl_ms: 5_000,
            membership_renew_ms: 1_000,
            peer_timeout_ms: 5_000,
        }
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("cluster_enabled", &self.cluster_enabled)
            .field("peer_addr", &self.peer_addr)
            .field("peer_advertise", &self.peer_advertise)
            .field("cluster_secret", &if self.cluster_secret.is_empty() { "<unset>" } else { "<redacted>" })
            .field("redis_url", &self.redis_url)
            .field("redis_prefix", &self.redis_prefix)
            .field("membership_ttl_ms", &self.membership_ttl_ms)
            .field("membership_renew_ms", &self.membership_renew_ms)
            .field("peer_timeout_ms", &self.peer_timeout_ms)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub node_id: String,
    pub http_addr: String,
    pub workers: u32,
    pub shutdown_timeout_ms: u64,
    pub trusted_proxies: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: "node-1".into(),
            http_addr: "127.0.0.1:8080".into(),
            workers: 0,
            shutdown_timeout_ms: 10_000,
            trusted_proxies: String::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub store_backend: String,
    pub presence_backend: String,
    pub data_dir: String,
    pub group_commit_max: u32,
    pub owner_shards: u32,
    pub memtable_mib: u32,
    pub cache_mib: u32,
    pub cassandra_nodes: String,
    pub cassandra_keyspace: String,
    pub cassandra_local_dc: String,
    pub cassandra_consistency: String,
    pub cassandra_replication: String,
    pub cassandra_timeout_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            store_backend: "embedded".into(),
            presence_backend: "memory".into(),
            data_dir: "./data".into(),
            group_commit_max: 1024,
            owner_shards: 0,
            memtable_mib: 16,
            cache_mib: 32,
            cassandra_nodes: "127.0.0.1:9042".into(),
            cassandra_keyspace: "switchboard".into(),
            cassandra_local_dc: "datacenter1".into(),
            cassandra_consistency: "local_quorum".into(),
            cassandra_replication: "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}".into(),
            cassandra_timeout_ms: 5_000,
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub master_key: String,
    pub min_password_len: u32,
    pub token_ttl_days: u32,
    pub login_ip_per_min: u32,
    pub login_user_per_min: u32,
    pub register_ip_per_hour: u32,
    pub hash_queue_max: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            master_key: String::new(),
            min_password_len: 8,
            token_ttl_days: 30,
            login_ip_per_min: 30,
            login_user_per_min: 10,
            register_ip_per_hour: 20,
            hash_queue_max: 32,
        }
    }
}

impl fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.master_key.is_empty() { "<from data dir>" } else { "<redacted>" };
        f.debug_struct("SecurityConfig")
            .field("master_key", &key)
            .field("min_password_len", &self.min_password_len)
            .field("token_ttl_days", &self.token_ttl_days)
            .field("login_ip_per_min", &self.login_ip_per_min)
            .field("login_user_per_min", &self.login_user_per_min)
            .field("register_ip_per_hour", &self.register_ip_per_hour)
            .field("hash_queue_max", &self.hash_queue_max)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    pub heartbeat_ms: u64,
    pub auth_timeout_ms: u64,
    pub outbound_bytes: u32,
    pub write_stall_ms: u64,
    pub max_frame_bytes: u32,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            heartbeat_ms: 15_000,
            auth_timeout_ms: 10_000,
            outbound_bytes: 4 * 1024 * 1024,
            write_stall_ms: 10_000,
            max_frame_bytes: 256 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: u32,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    pub rate_strikes: u32,
    pub rate_strike_decay_ms: u64,
    pub typing_interval_ms: u64,
    pub sync_limit_max: u32,
    pub sync_round_max: u32,
    /// Most members a group may have (its owner included).
    pub group_max_members: u32,
    /// Receipt changes of a group are pushed together at most this often, per conversation.
    pub group_receipt_flush_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 * 1024,
            rate_per_sec: 50,
            rate_burst: 200,
            rate_strikes: 20,
            rate_strike_decay_ms: 10_000,
            typing_interval_ms: 1_000,
            sync_limit_max: 500,
            sync_round_max: 1_000,
            group_max_members: 1_000,
            group_receipt_flush_ms: 250,
        }
    }
}

/// The consistency levels `storage.cassandra_consistency` accepts.
pub const CASSANDRA_CONSISTENCIES: [&str; 5] = ["one", "local_one", "quorum", "local_quorum", "all"];

/// A configuration problem, always naming the key (or env var, or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Reads `path` (or starts from the defaults when `None`), applies `SWITCHBOARD_*`
    /// overrides found through `env`, and validates the result.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (origin, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                (p.display().to_string(), text)
            }
            None => ("<defaults>".to_string(), String::new()),
        };
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: origin.clone(), message: e.to_string() })?;
        apply_env_overrides(&mut table, &env)?;
        let config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            ConfigError::Parse { path: origin, message: e.message().to_string() }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Every env var that can override a key, with the key's `section.key` path.
    pub fn env_vars() -> Vec<(String, String)> {
        let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
        let mut out = Vec::new();
        for (section, keys) in &defaults {
            if let toml::Value::Table(keys) = keys {
                for key in keys.keys() {
                    out.push((env_var_name(key), format!("{section}.{key}")));
                }
            }
        }
        out
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
            ConfigError::Invalid { key, message: message.into() }
        }
        self.http_addr().map_err(|e| invalid("server.http_addr", format!("not a socket address: {e}")))?;
        self.trusted_proxies()
            .map_err(|e| invalid("server.trusted_proxies", format!("comma-separated IP addresses: {e}")))?;
        let node = &self.server.node_id;
        if node.is_empty()
            || node.len() > 64
            || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("server.node_id", "1-64 characters of [A-Za-z0-9_-]"));
        }
        match self.storage.store_backend.as_str() {
            "embedded" => {}
            "cassandra" => {
                let consistency = self.storage.cassandra_consistency.to_ascii_lowercase();
                if !CASSANDRA_CONSISTENCIES.contains(&consistency.as_str()) {
                    return Err(invalid(
                        "storage.cassandra_consistency",
                        format!(
                            "unknown consistency {consistency:?} ({})",
                            CASSANDRA_CONSISTENCIES.join(", ")
                        ),
                    ));
                }
                let keyspace = &self.storage.cassandra_keyspace;
                if keyspace.is_empty() || !keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid("storage.cassandra_keyspace", "must be [A-Za-z0-9_]+"));
                }
                if self.storage.cassandra_nodes.trim().is_empty() {
                    return Err(invalid("storage.cassandra_nodes", "name at least one host:port"));
                }
            }
            other => {
                return Err(invalid(
                    "storage.store_backend",
                    format!("unknown backend {other:?} (this build knows: embedded, cassandra)"),
                ));
            }
        }
        match self.storage.presence_backend.as_str() {
            "memory" | "redis" => {}
            other => {
                return Err(invalid(
                    "storage.presence_backend",
                    format!("unknown backend {other:?} (this build knows: memory, redis)"),
                ));
            }
        }
        let cluster = &self.cluster;
        if cluster.cluster_enabled {
            if self.storage.store_backend != "cassandra" {
                return Err(invalid(
                    "cluster.cluster_enabled",
                    "a cluster needs storage.store_backend = \"cassandra\": the embedded store lives in one \
                     node's data dir and cannot be shared or fenced between nodes",
                ));
            }
            if self.storage.presence_backend != "redis" {
                return Err(invalid(
                    "cluster.cluster_enabled",
                    "a cluster needs storage.presence_backend = \"redis\" (membership and presence are shared there)",
                ));
            }
            if self.attachments.blob_backend != "s3" {
                return Err(invalid(
                    "cluster.cluster_enabled",
                    "a cluster needs attachments.blob_backend = \"s3\": every node must read every attachment, \
                     and a local blob directory is one node's alone",
                ));
            }
            if cluster.cluster_secret.len() < 32 {
                return Err(invalid(
                    "cluster.cluster_secret",
                    "at least 32 characters, the same on every node (it authenticates the inter-node link)",
                ));
            }
            cluster
                .peer_addr
                .parse::<SocketAddr>()
                .map_err(|e| invalid("cluster.peer_addr", format!("not a socket address: {e}")))?;
            if !cluster.peer_advertise.is_empty() {
                cluster
                    .peer_advertise
                    .parse::<SocketAddr>()
                    .map_err(|e| invalid("cluster.peer_advertise", format!("not a socket address: {e}")))?;
            }
            if cluster.membership_renew_ms == 0 || cluster.membership_ttl_ms < 3 * cluster.membership_renew_ms
            {
                return Err(invalid(
                    "cluster.membership_ttl_ms",
                    "must be at least 3 × membership_renew_ms (and renew positive)",
                ));
            }
        }
        if self.storage.presence_backend == "redis"
            && !(cluster.redis_url.starts_with("redis://")
                || cluster.redis_url.starts_with("redis-sentinel://"))
        {
            return Err(invalid(
                "cluster.redis_url",
                "redis://host:port[/db] or redis-sentinel://host:port[,…]/service",
            ));
        }
        if self.storage.data_dir.is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        if self.storage.owner_shards > 1024 {
            return Err(invalid("storage.owner_shards", "at most 1024 (0 = one per core)"));
        }
        if !(1..=256).contains(&self.storage.memtable_mib) {
            return Err(invalid("storage.memtable_mib", "between 1 and 256"));
        }
        if !(1..=65_536).contains(&self.storage.cache_mib) {
            return Err(invalid("storage.cache_mib", "between 1 and 65536"));
        }
        if self.storage.group_commit_max == 0 {
            return Err(invalid("storage.group_commit_max", "must be at least 1"));
        }
        if !self.security.master_key.is_empty() {
            crate::crypto::MasterKey::from_hex(&self.security.master_key).map_err(|_| {
                invalid("security.master_key", "must be 64 hex characters (32 bytes), or empty")
            })?;
        }
        if self.security.min_password_len < 8 {
            return Err(invalid("security.min_password_len", "must be at least 8"));
        }
        if self.websocket.heartbeat_ms < 100 {
            return Err(invalid("websocket.heartbeat_ms", "must be at least 100"));
        }
        if self.websocket.auth_timeout_ms == 0 {
            return Err(invalid("websocket.auth_timeout_ms", "must be positive"));
        }
        // One frame of the largest size must fit the output bound.
        if (self.websocket.outbound_bytes as u64) < 2 * self.websocket.max_frame_bytes as u64 {
            return Err(invalid(
                "websocket.outbound_bytes",
                "must be at least 2 × websocket.max_frame_bytes",
            ));
        }
        if self.websocket.write_stall_ms < 100 {
            return Err(invalid("websocket.write_stall_ms", "must be at least 100"));
        }
        if self.security.token_ttl_days == 0 {
            return Err(invalid("security.token_ttl_days", "must be at least 1"));
        }
        if self.security.login_ip_per_min == 0
            || self.security.login_user_per_min == 0
            || self.security.register_ip_per_hour == 0
        {
            return Err(invalid(
                "security.login_ip_per_min",
                "login and registration limits must be positive",
            ));
        }
        if self.security.hash_queue_max == 0 {
            return Err(invalid("security.hash_queue_max", "must be at least 1"));
        }
        if self.limits.group_max_members < 2 {
            return Err(invalid("limits.group_max_members", "must be at least 2"));
        }
        if self.limits.group_receipt_flush_ms == 0 {
            return Err(invalid("limits.group_receipt_flush_ms", "must be positive"));
        }
        if self.limits.sync_round_max == 0 {
            return Err(invalid("limits.sync_round_max", "must be positive"));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(invalid("limits.max_body_bytes", "must be positive"));
        }
        // A body may double in size when JSON-escaped; the frame must still fit.
        if (self.websocket.max_frame_bytes as u64) < 2 * self.limits.max_body_bytes as u64 + 4096 {
            return Err(invalid(
                "websocket.max_frame_bytes",
                "must be at least 2 × limits.max_body_bytes + 4096",
            ));
        }
        if self.limits.rate_per_sec == 0 || self.limits.rate_burst == 0 {
            return Err(invalid("limits.rate_per_sec", "rate_per_sec and rate_burst must be positive"));
        }
        if self.limits.sync_limit_max == 0 {
            return Err(invalid("limits.sync_limit_max", "must be positive"));
        }
        self.attachments.validate()?;
        Ok(())
    }

    pub fn http_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.server.http_addr.parse()
    }

    /// The proxies whose `X-Forwarded-For` is believed (e.g. the load balancer).
    pub fn trusted_proxies(&self) -> Result<Vec<std::net::IpAddr>, std::net::AddrParseError> {
        self.server
            .trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }

    /// Owner shards: the configured count, or one per core.
    pub fn owner_shards(&self) -> usize {
        match self.storage.owner_shards {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n as usize,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(&self.storage.data_dir)
    }

    /// The local blob backend's directory.
    pub fn blob_dir(&self) -> PathBuf {
        match self.attachments.blob_dir.as_str() {
            "" => self.data_dir().join("blobs"),
            dir => PathBuf::from(dir),
        }
    }
}

fn env_var_name(key: &str) -> String {
    format!("SWITCHBOARD_{}", key.to_ascii_uppercase())
}

/// Writes each `SWITCHBOARD_<KEY>` value into the table, typed like the key's default.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    for (section, keys) in defaults {
        let toml::Value::Table(keys) = keys else { continue };
        for (key, default) in keys {
            let var = env_var_name(&key);
            let Some(raw) = env(&var) else { continue };
            let value = match default {
                toml::Value::Integer(_) => {
                    raw.trim().parse::<i64>().map(toml::Value::Integer).map_err(|_| ConfigError::Env {
                        var: var.clone(),
                        message: "expected an integer".into(),
                    })?
                }
                toml::Value::Boolean(_) => {
                    raw.trim().parse::<bool>().map(toml::Value::Boolean).map_err(|_| ConfigError::Env {
                        var: var.clone(),
                        message: "expected true or false".into(),
                    })?
                }
                _ => toml::Value::String(raw),
            };
            let section_table =
                table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section_table {
                toml::Value::Table(t) => {
                    t.insert(key, value);
                }
                _ => {
                    return Err(ConfigError::Parse {
                        path: "<config>".into(),
                        message: format!("`{section}` must be a table"),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
