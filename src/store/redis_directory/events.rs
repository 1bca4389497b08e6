//! The cluster event stream: decoding the JSON events the scripts publish into
//! [`ClusterEvent`]s, the subscriber task that forwards them (subscribing again after every
//! reconnection and emitting [`ClusterEvent::Resync`]), and the PING watchdog of the idle
//! subscriber connection.

use crate::model::{Millis, UserId};
use crate::store::presence::ClusterEvent;
use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, Options, PubsubInterface, Server};
use fred::types::{ClientState, Value};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

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

/// Forwards pub/sub messages to the broadcast channel; after every (re)connection of the
/// subscriber, subscribes again and (except for the very first connection) emits `Resync`.
pub(super) async fn pump(
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
pub(super) async fn watch_subscriber(subscriber: SubscriberClient, every: Duration, timeout: Duration) {
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
