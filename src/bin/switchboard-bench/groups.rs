//! S4 group fan-out: for each group size N, N receiving WebSocket clients (switchboard: one
//! device of each of the N members of a group conversation; Centrifugo: N subscribers of one
//! channel), one sender publishing at a fixed rate for a fixed time (open loop), and for every
//! message the time from its scheduled send until the *last* member had it, each member's
//! deliveries checked exactly-once and in order. Setup (users, connections, the group, sync),
//! the open-loop step and its counters; the results are `groups_report.rs`.

use crate::groups_report::GroupFanoutResult;
use crate::pairs::{body, end_reason, new_histogram, now_ns, parse_body, wait_settled};
use crate::report::{Counts, Percentiles, bump};
use crate::scenarios::{login, register, source_ip};
use crate::target::{self, Incoming, Kind, Sut, http_client};
use crate::{Failure, ws};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What S4 runs: one step per group size.
pub struct GroupPlan {
    /// Group sizes (members, each with one receiving connection).
    pub members: Vec<usize>,
    /// Offered deliveries per second of every step: the sender's rate is this / N.
    pub deliveries_per_sec: u64,
    pub step: Duration,
    pub payload: usize,
    /// Usernames are `<prefix>m<i>` and `<prefix>snd`.
    pub user_prefix: String,
}

impl GroupPlan {
    /// The sender's rate for groups of `n`: at least one message per second.
    pub fn rate(&self, n: usize) -> u64 {
        (self.deliveries_per_sec / n.max(1) as u64).max(1)
    }
}

/// After a step's schedule, how long at most to wait for its last acks and deliveries.
const DRAIN: Duration = Duration::from_secs(10);

/// switchboard: the users of every group. The sender is the groups' creator (their owner);
/// its second device is the receiving connection of that member.
struct Users {
    sender_token: String,
    sender_second_device: String,
    /// The other members: (user id, token).
    others: Vec<(String, String)>,
}

/// S4 against one server: the users (switchboard), then one step per group size.
pub struct FanOut {
    users: Option<Users>,
}

impl FanOut {
    /// switchboard: registers the sender (and logs it in again: a second device) and the
    /// largest group's other members. Centrifugo needs nothing.
    pub async fn prepare(sut: &Sut, plan: &GroupPlan) -> Result<FanOut, Failure> {
        if sut.kind == Kind::Centrifugo {
            return Ok(FanOut { users: None });
        }
        let started = Instant::now();
        let others = plan.members.iter().max().copied().unwrap_or(1).saturating_sub(1);
        let sender_name = format!("{}snd", plan.user_prefix);
        let (_, sender_token) = register(&sut.http, &sender_name).await?;
        let (_, sender_second_device) = login(&sut.http, &sender_name).await?;
        let names: Vec<String> = (0..others).map(|i| format!("{}m{i}", plan.user_prefix)).collect();
        // A few at once: each is a password hash on the server's core.
        let registered: Vec<Result<(String, String), Failure>> =
            futures_util::stream::iter(names.iter().map(|name| register(&sut.http, name)))
                .buffered(4)
                .collect()
                .await;
        let others = registered.into_iter().collect::<Result<Vec<_>, _>>()?;
        eprintln!("  registered {} users in {:.1} s", others.len() + 1, started.elapsed().as_secs_f64());
        Ok(FanOut { users: Some(Users { sender_token, sender_second_device, others }) })
    }

    /// One step: a group of `n` (connected, created, synced), `plan.rate(n)` msgs/s for
    /// `plan.step`, then up to `DRAIN` for the last acks and deliveries.
    pub async fn step(&self, sut: &Sut, plan: &GroupPlan, n: usize) -> Result<GroupFanoutResult, Failure> {
        let setup_started = Instant::now();
        let (receivers, sender, channel) = match &self.users {
            None => {
                let channel = format!("s4-{n}");
                let receivers = connect_all(sut, vec![None; n], Some(&channel)).await?;
                let sender = connect_all(sut, vec![None], None).await?.pop().ok_or("no sender")?;
                (receivers, sender, channel)
            }
            Some(users) => {
                if users.others.len() + 1 < n {
                    return Err(
                        format!("S4: {n} members asked, {} registered", users.others.len() + 1).into()
                    );
                }
                let others = &users.others[..n - 1];
                let tokens = std::iter::once(users.sender_second_device.clone())
                    .chain(others.iter().map(|(_, token)| token.clone()))
                    .map(Some)
                    .collect();
                let receivers = connect_all(sut, tokens, None).await?;
                let sender = connect_all(sut, vec![Some(users.sender_token.clone())], None)
                    .await?
                    .pop()
                    .ok_or("no sender")?;
                let ids: Vec<&str> = others.iter().map(|(id, _)| id.as_str()).collect();
                let channel = create_group(sut, &users.sender_token, &format!("s4-{n}"), &ids).await?;
                // The protocol's rule: live messages come after a sync (connect, create, sync).
                let receivers = sync_all(receivers).await?;
                let sender = sync_all(vec![sender]).await?.pop().ok_or("no sender")?;
                (receivers, sender, channel)
            }
        };
        let setup_secs = setup_started.elapsed().as_secs_f64();
        Ok(run_step(sut, plan, n, receivers, sender, &channel, setup_secs).await)
    }
}

/// Opens one connection per entry of `tokens` (switchboard: its bearer token; Centrifugo:
/// none), spread over the nodes and source addresses, handshaken and, with `channel`
/// (Centrifugo), subscribed; all of them or an error.
async fn connect_all(
    sut: &Sut,
    tokens: Vec<Option<String>>,
    channel: Option<&str>,
) -> Result<Vec<ws::Socket>, Failure> {
    let wanted = tokens.len();
    let opened: Vec<Result<ws::Socket, Failure>> = futures_util::stream::iter(tokens.into_iter().enumerate())
        .map(|(i, token)| async move {
            let url = &sut.nodes[i % sut.nodes.len()].ws_url;
            let mut socket = ws::connect(url, source_ip(i % 8), token.as_deref()).await?;
            target::handshake(sut.kind, &mut socket).await?;
            if let Some(channel) = channel {
                target::subscribe(sut.kind, &mut socket, channel).await?;
            }
            Ok(socket)
        })
        .buffered(64)
        .collect()
        .await;
    let (ok, failed): (Vec<_>, Vec<_>) = opened.into_iter().partition(Result::is_ok);
    if let Some(Err(e)) = failed.into_iter().next() {
        return Err(format!("S4: {} of {wanted} connections made; first failure: {e}", ok.len()).into());
    }
    Ok(ok.into_iter().flatten().collect())
}

/// switchboard: every socket syncs (from no cursors) until `sync_done`; what it reads (the
/// group's system message) is not part of the measurement.
async fn sync_all(sockets: Vec<ws::Socket>) -> Result<Vec<ws::Socket>, Failure> {
    futures_util::stream::iter(sockets)
        .map(|mut socket| async move {
            target::sync_until_done(&mut socket, serde_json::Map::new(), Duration::from_secs(30)).await?;
            Ok(socket)
        })
        .buffered(64)
        .collect::<Vec<Result<ws::Socket, Failure>>>()
        .await
        .into_iter()
        .collect()
}

/// `POST /v1/conversations/group` as the creator (its owner) with the other `members`; the
/// conversation id.
async fn create_group(
    sut: &Sut,
    creator_token: &str,
    title: &str,
    members: &[&str],
) -> Result<String, Failure> {
    let resp = http_client()?
        .post(format!("{}/v1/conversations/group", sut.http))
        .bearer_auth(creator_token)
        .json(&json!({"title": title, "members": members}))
        .send()
        .await
        .map_err(|e| format!("create group {title}: {e}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| format!("create group {title}: HTTP {status}: {e}"))?;
    Ok(v["conversation_id"]
        .as_str()
        .ok_or_else(|| format!("create group {title}: HTTP {status} {v}"))?
        .to_owned())
}

/// A group's system message (creation, membership changes): not the sender's, not measured.
fn is_system_message(text: &str) -> bool {
    text.contains("\"system\"")
        && serde_json::from_str::<Value>(text).is_ok_and(|v| v["type"] == "message" && v["kind"] == "system")
}

/// The counters of one step, shared by the sender and receiver tasks.
struct Tally {
    members: u32,
    /// Per message k: how many members had it, and whether the sender's ack came.
    arrivals: Vec<u32>,
    acked: Vec<bool>,
    sent: u64,
    acked_count: u64,
    delivered: u64,
    duplicated: u64,
    reordered: u64,
    last_arrival_ns: u64,
    last_member_us: Histogram<u64>,
    delivery_us: Histogram<u64>,
    ack_us: Histogram<u64>,
    errors: Counts,
}

type Shared = Arc<Mutex<Tally>>;

impl Tally {
    fn settled(&self) -> bool {
        let total = self.arrivals.len() as u64;
        self.acked_count == total && self.delivered == total * u64::from(self.members)
    }

    /// A member's first delivery of message `k`, scheduled at `due`, arriving `at`.
    fn arrive(&mut self, k: usize, due: u64, at: u64) {
        let us = (at.saturating_sub(due) / 1_000).max(1);
        self.arrivals[k] += 1;
        self.delivered += 1;
        self.last_arrival_ns = self.last_arrival_ns.max(at);
        let _ = self.delivery_us.record(us);
        if self.arrivals[k] == self.members {
            let _ = self.last_member_us.record(us);
        }
    }

    fn ack(&mut self, k: usize, due: u64, at: u64) {
        match self.acked.get_mut(k) {
            Some(acked) if !*acked => {
                *acked = true;
                self.acked_count += 1;
                let _ = self.ack_us.record((at.saturating_sub(due) / 1_000).max(1));
            }
            _ => bump(&mut self.errors, "unexpected_ack"),
        }
    }
}

/// One member's connection: counts each message's first delivery, duplicates and reorders.
async fn receive_loop(kind: Kind, mut socket: ws::Socket, tag: u64, base: Instant, tally: Shared) {
    let total = tally.lock().unwrap().arrivals.len();
    let mut seen = vec![false; total];
    let mut newest: Option<usize> = None;
    loop {
        let msg = socket.next().await;
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_)) | Err(_)) | None => {
                if let Some(why) = end_reason(&msg) {
                    bump(&mut tally.lock().unwrap().errors, why);
                }
                return;
            }
            Some(Ok(_)) => continue,
        };
        if kind == Kind::Switchboard && is_system_message(&text) {
            continue;
        }
        for incoming in target::parse(kind, &text) {
            match incoming {
                Incoming::Delivery { body, .. } => {
                    let at = now_ns(base);
                    let mut t = tally.lock().unwrap();
                    let Some((_, _, k, due)) =
                        parse_body(&body).filter(|(_, step, k, _)| *step == tag && *k < total as u64)
                    else {
                        bump(&mut t.errors, "unexpected_delivery");
                        continue;
                    };
                    let k = k as usize;
                    if std::mem::replace(&mut seen[k], true) {
                        t.duplicated += 1;
                        continue;
                    }
                    if newest.is_some_and(|n| k < n) {
                        t.reordered += 1;
                    }
                    newest = Some(newest.map_or(k, |n| n.max(k)));
                    t.arrive(k, due, at);
                }
                Incoming::Ping => {
                    let _ = socket.send(Message::text("{}")).await;
                }
                Incoming::Error { code, .. } => bump(&mut tally.lock().unwrap().errors, code),
                _ => {}
            }
        }
    }
}

/// The sender's connection: writes each send it is told (k, scheduled time) and reads acks.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    kind: Kind,
    mut socket: ws::Socket,
    channel: String,
    tag: u64,
    payload: usize,
    base: Instant,
    mut orders: mpsc::UnboundedReceiver<(u64, u64)>,
    tally: Shared,
) {
    let mut due_of = vec![0u64; tally.lock().unwrap().arrivals.len()];
    let mut scheduling = true;
    loop {
        tokio::select! {
            order = orders.recv(), if scheduling => {
                let Some((k, due)) = order else { scheduling = false; continue };
                due_of[k as usize] = due;
                let frame = target::send_frame(kind, &channel, k, &body(0, tag, k, due, payload));
                if let Err(e) = socket.send(Message::text(frame)).await {
                    bump(&mut tally.lock().unwrap().errors, format!("ws_send:{e}"));
                    return;
                }
                tally.lock().unwrap().sent += 1;
            }
            msg = socket.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        if let Some(why) = end_reason(&msg) {
                            bump(&mut tally.lock().unwrap().errors, format!("sender_{why}"));
                        }
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                for incoming in target::parse(kind, &text) {
                    match incoming {
                        Incoming::Ack { k, .. } => {
                            let due = due_of.get(k as usize).copied().unwrap_or(0);
                            tally.lock().unwrap().ack(k as usize, due, now_ns(base));
                        }
                        Incoming::Ping => { let _ = socket.send(Message::text("{}")).await; }
                        Incoming::Error { code, .. } => bump(&mut tally.lock().unwrap().errors, code),
                        // The sender's other device is a member: its deliveries are counted there.
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The open-loop step over connected (and synced) receivers and sender.
async fn run_step(
    sut: &Sut,
    plan: &GroupPlan,
    n: usize,
    receivers: Vec<ws::Socket>,
    sender: ws::Socket,
    channel: &str,
    setup_secs: f64,
) -> GroupFanoutResult {
    let rate = plan.rate(n);
    let total = rate * plan.step.as_secs().max(1);
    let tag = n as u64;
    let base = Instant::now();
    let tally: Shared = Arc::new(Mutex::new(Tally {
        members: n as u32,
        arrivals: vec![0; total as usize],
        acked: vec![false; total as usize],
        sent: 0,
        acked_count: 0,
        delivered: 0,
        duplicated: 0,
        reordered: 0,
        last_arrival_ns: 0,
        last_member_us: new_histogram(),
        delivery_us: new_histogram(),
        ack_us: new_histogram(),
        errors: Counts::new(),
    }));
    let mut tasks: Vec<_> = receivers
        .into_iter()
        .map(|s| tokio::spawn(receive_loop(sut.kind, s, tag, base, tally.clone())))
        .collect();
    let (orders, rx) = mpsc::unbounded_channel();
    let sending = send_loop(sut.kind, sender, channel.to_owned(), tag, plan.payload, base, rx, tally.clone());
    tasks.push(tokio::spawn(sending));

    let generator = std::process::id();
    let (cpu_before, generator_before, clock) = (sut.cpu_secs(), target::cpu_secs(generator), Instant::now());
    let interval_ns = 1_000_000_000 / rate;
    let start_ns = now_ns(base) + 20_000_000;
    for k in 0..total {
        let due = start_ns + k * interval_ns;
        let now = now_ns(base);
        if due > now + 1_000_000 {
            tokio::time::sleep(Duration::from_nanos(due - now)).await;
        }
        let _ = orders.send((k, due));
    }
    drop(orders);
    // On schedule, the last send is due one interval before the step ends.
    let send_secs = (now_ns(base).saturating_sub(start_ns) + interval_ns) as f64 / 1e9;
    wait_settled(DRAIN, || {
        let t = tally.lock().unwrap();
        (t.settled(), t.acked_count + t.delivered)
    })
    .await;
    let cpu = sut.cpu_secs() - cpu_before;
    let generator_cpu = target::cpu_secs(generator) - generator_before;
    let wall = clock.elapsed().as_secs_f64();
    for t in &tasks {
        t.abort();
    }
    let t = tally.lock().unwrap();
    let members = n as u64;
    let lost: u64 = t
        .arrivals
        .iter()
        .zip(&t.acked)
        .filter(|(_, acked)| **acked)
        .map(|(arrived, _)| members.saturating_sub(u64::from(*arrived)))
        .sum();
    let duration = plan.step.as_secs_f64();
    let delivering_secs = (t.last_arrival_ns.saturating_sub(start_ns) as f64 / 1e9).max(duration);
    let per_delivery = (cpu > 0.0 && t.delivered > 0).then(|| cpu / t.delivered as f64);
    let mut r = GroupFanoutResult {
        target: sut.kind,
        members: n,
        payload_bytes: plan.payload,
        target_rate: rate,
        achieved_rate: total as f64 / send_secs.max(duration),
        duration_secs: duration,
        offered_deliveries_per_sec: rate * members,
        scheduled: total,
        sent: t.sent,
        acked: t.acked_count,
        expected_deliveries: t.acked_count * members,
        delivered: t.delivered,
        lost,
        duplicated: t.duplicated,
        reordered: t.reordered,
        messages_complete: t.arrivals.iter().filter(|a| u64::from(**a) == members).count() as u64,
        deliveries_per_sec: t.delivered as f64 / delivering_secs,
        last_member_us: Percentiles::of(&t.last_member_us),
        delivery_us: Percentiles::of(&t.delivery_us),
        ack_latency_us: Percentiles::of(&t.ack_us),
        server_cpu_secs: cpu,
        server_cpu_per_sec: cpu / wall.max(1e-9),
        deliveries_per_server_cpu_sec: per_delivery.map(|c| 1.0 / c),
        server_cpu_us_per_delivery: per_delivery.map(|c| c * 1e6),
        generator_cpu_secs: generator_cpu,
        server_rss_kib: sut.rss_kib(),
        setup_secs,
        errors: t.errors.clone(),
        expectations: Vec::new(),
        valid: false,
        invalid_reasons: Vec::new(),
    };
    r.judge();
    r.check_targets();
    r
}
