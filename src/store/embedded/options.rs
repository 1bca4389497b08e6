//! How much memory and how many threads the embedded store (fjall) may use.

use crate::config::StorageConfig;

/// fjall's background threads (memtable flushes and compactions). fjall's default is one per
/// core up to 4, so a node on one core had one: a long compaction then holds the flushes up,
/// and with 4 sealed memtables waiting fjall halts writes (100 ms sleeps).
pub(super) const FLUSH_THREADS: usize = 4;

/// How much memory the embedded store may hold (`storage.memtable_mib`, `storage.cache_mib`).
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Largest memtable of one keyspace before it is flushed to a segment. Applies to
    /// keyspaces created with it (fjall keeps each keyspace's size from its creation).
    pub memtable_bytes: u64,
    /// The block cache of every keyspace together.
    pub cache_bytes: u64,
}

impl EmbeddedOptions {
    pub fn from_config(storage: &StorageConfig) -> EmbeddedOptions {
        EmbeddedOptions {
            memtable_bytes: u64::from(storage.memtable_mib) << 20,
            cache_bytes: u64::from(storage.cache_mib) << 20,
        }
    }
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions::from_config(&StorageConfig::default())
    }
}
