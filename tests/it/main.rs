//! The one integration-test binary. Modules:
//! - `harness`: starts the real `switchboard` binary on port 0 with its own data dir; REST and
//!   WebSocket clients.
//! - `chat`: end-to-end delivery, sync, devices, receipts, presence, typing, idempotency.
//! - `bench_smoke`: the load generator's quick run, so it cannot rot.
//! - `cassandra_fault`: 3 Cassandra nodes, one SIGKILLed under load (run by scripts/test).
//! - `cluster`: 3 switchboard nodes on Cassandra and Redis (behind HAProxy): cross-node chat and
//!   presence, SIGKILL and SIGSTOP chaos with the no-loss/no-dup/no-gap/epoch checks.
//! - `hostile`: a client that never reads (bounded memory, closed in time), a user far behind
//!   catching up through repeated sync rounds.
//! - `master_key`: a lost or different master key is refused at start, naming the fix.
//! - `owner_restart`: a panicking owner shard is restarted and counted; a batch mixing a retry
//!   and new sends stays gapless (in-process).
//! - `bad_input`: every bad input yields its error code or close code.
//! - `login_limits`: login/registration rate limits, the bounded hash queue, token expiry.
//! - `restart`: SIGKILL and SIGTERM: nothing acked is lost, seq continues gaplessly.
//! - `store_conformance`: one suite against every `AccountStore`/`ChatStore` backend;
//!   `group_store`: its group part (member records, pending updates, rotated keys).
//! - `groups`: groups end to end: every permission rule, removal (live and in sync), key
//!   rotation, system messages, coalesced receipts, a 1,000-member group; `group_keys`: key
//!   rotation on the stored bytes and a crash between a change's message and its application.
//! - `store_unavailable`: a store that is down or has no schema: unready, clear errors, recovery.
//! - `presence_conformance`: the `ClusterDirectory` contract (memory, Redis).
//! - `redis_directory`: the Redis backend against its own redis-server children: restart,
//!   Sentinel failover, fail-fast while down, one round trip per operation.
//! - `full_disk`: the data dir on a small tmpfs: refused sends, unready, recovery, nothing lost.
//! - `config_file`: the shipped config is valid and equals the defaults.
//! - `attachments`: uploads (resumable), thumbnails, ranges, signed links, refusals, a dead S3
//!   server, on the local and the S3 backend; `attachment_sweep`: the lifecycle sweep
//!   (in-process); `blob_conformance`: the `BlobStore` contract on both backends.
//! - `web_client`: the embedded page and its assets as served (the browser tests are in
//!   `web/e2e/`, run by `scripts/web e2e`).
//! - `tidy`: repository rules (module headers, the CI command matches the README).

mod attachment_sweep;
mod attachments;
mod bad_input;
mod bench_smoke;
mod blob_conformance;
mod cassandra_fault;
mod chat;
mod cluster;
mod config_file;
mod full_disk;
mod group_keys;
mod group_store;
mod groups;
mod harness;
mod hostile;
mod login_limits;
mod master_key;
mod owner_restart;
mod presence_conformance;
mod redis_directory;
mod restart;
mod store_conformance;
mod store_unavailable;
mod tidy;
mod web_client;
