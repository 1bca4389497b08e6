//! `OnWorkers`: the parts of a node that run beside the sessions, on the HTTP worker threads —
//! the Registry, the Router and the owner shards. A message then goes session → owner →
//! Router → Registry → session without waking another thread (only the store's blocking call
//! does), where a separate thread for these parts cost two thread wake-ups per message.
//!
//! `Node::start` creates their addresses at once (requests wait in their mailboxes) and leaves
//! them here; each HTTP worker calls [`OnWorkers::adopt`] when it starts. The first worker
//! runs the Registry and the Router; owner shard *i* runs on worker *i* mod the worker count.

use crate::conversation::owner::ShardTask;
use crate::delivery::{Registry, Router};
use actix::dev::channel::{AddressReceiver, channel};
use actix::{Actor, Addr, Context};
use std::sync::Mutex;

/// The mailbox size actix gives an actor until its `started` sets its own.
const INITIAL_MAILBOX: usize = 16;

/// A mailbox with its address, for an actor that starts later on another thread.
pub fn mailbox<A: Actor<Context = Context<A>>>() -> (Addr<A>, AddressReceiver<A>) {
    let (tx, rx) = channel(INITIAL_MAILBOX);
    (Addr::new(tx), rx)
}

/// What is still to be started on the workers.
#[derive(Default)]
struct Pending {
    registry: Option<(AddressReceiver<Registry>, Registry)>,
    router: Option<(AddressReceiver<Router>, Router)>,
    shards: Vec<Option<ShardTask>>,
    /// Workers that have adopted so far.
    adopted: usize,
}

/// Node parts waiting for the HTTP workers to run them.
pub struct OnWorkers {
    pending: Mutex<Pending>,
}

impl OnWorkers {
    pub fn new(
        registry: (AddressReceiver<Registry>, Registry),
        router: (AddressReceiver<Router>, Router),
        shards: Vec<ShardTask>,
    ) -> OnWorkers {
        OnWorkers {
            pending: Mutex::new(Pending {
                registry: Some(registry),
                router: Some(router),
                shards: shards.into_iter().map(Some).collect(),
                adopted: 0,
            }),
        }
    }

    /// Called on each worker thread as it starts (`workers` of them): starts this worker's
    /// share on its arbiter. Each part is started once: a worker started again after a crash
    /// finds its share taken, so what ran on the crashed worker is not restarted.
    pub fn adopt(&self, workers: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let me = pending.adopted % workers.max(1);
        pending.adopted += 1;
        if let Some((rx, registry)) = pending.registry.take() {
            Context::with_receiver(rx).run(registry);
        }
        if let Some((rx, router)) = pending.router.take() {
            Context::with_receiver(rx).run(router);
        }
        for (i, slot) in pending.shards.iter_mut().enumerate() {
            if i % workers.max(1) == me
                && let Some(shard) = slot.take()
            {
                shard.spawn();
            }
        }
    }
}
