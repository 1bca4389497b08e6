//! The terminal chat client behind `switchboard chat`: logs in (or registers), opens the
//! direct conversation with another user, prints recent history and incoming frames, and
//! sends each line typed on stdin (with a fresh client_msg_id, marking what it shows as read).
//!
//! It survives a lost connection: it reconnects with backoff (the state goes to stderr),
//! rotating through the `--server` URLs it was given, syncs again from the cursors it holds
//! (so nothing is shown twice and nothing is missed), and sends every message not yet
//! acknowledged again with the same client_msg_id (the server stores it once). A send answered
//! `unavailable`, `store_unavailable` or `rate_limited`, or not answered in time, is retried the
//! same way. The bookkeeping (`state`: [`Cursors`], [`Outbox`], [`Servers`], [`Backoff`]) is pure and
//! unit-tested; `chat` only wires it to the sockets.

mod state;

use state::jitter;
pub use state::*;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Base URL of a node or load balancer. Repeat the flag or separate URLs with commas to
    /// give several: after a failure the client moves on to the next one.
    #[arg(long = "server", value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    servers: Vec<String>,
    /// Your username.
    #[arg(long)]
    user: String,
    /// Your password (or set SWITCHBOARD_PASSWORD).
    #[arg(long, env = "SWITCHBOARD_PASSWORD")]
    password: String,
    /// Create the account if login fails.
    #[arg(long)]
    register: bool,
    /// The username to chat with.
    #[arg(long)]
    to: String,
}

type Failure = Box<dyn std::error::Error>;

pub fn run(args: ChatArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chat(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard chat: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ REST setup

/// Why a REST step failed: worth another server / a later try, or not.
enum StepError {
    Retry(String),
    Fatal(String),
}

impl From<reqwest::Error> for StepError {
    fn from(e: reqwest::Error) -> StepError {
        StepError::Retry(e.to_string())
    }
}

/// 5xx and 429 are worth another try (a node down behind a balancer, overload); other
/// statuses are final.
/// A message as the terminal shows it: its body, then one `[file: name, size]` per attachment.
fn shown(m: &Value) -> String {
    let mut line = m["body"].as_str().unwrap_or("").to_owned();
    for a in m["attachments"].as_array().into_iter().flatten() {
        let kind = if a["thumbnail"] == true { "picture" } else { "file" };
        line.push_str(&format!(" [{kind}: {}, {} bytes]", a["name"].as_str().unwrap_or("?"), a["size"]));
    }
    line
}

fn status_error(what: &str, status: u16, body: &Value) -> StepError {
    let msg = format!("{what} failed ({status}): {body}");
    if status >= 500 || status == 429 { StepError::Retry(msg) } else { StepError::Fatal(msg) }
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<(u16, Value), StepError> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

struct Login {
    token: String,
    me: String,
}

async fn login(http: &reqwest::Client, base: &str, args: &ChatArgs) -> Result<Login, StepError> {
    let creds =
        json!({ "username": args.user, "password": args.password, "device_name": "switchboard chat" });
    let (mut status, mut session) = post(http, format!("{base}/v1/login"), None, creds.clone()).await?;
    if status == 401 && args.register {
        (status, session) = post(http, format!("{base}/v1/register"), None, creds).await?;
    }
    if !(200..300).contains(&status) {
        return Err(status_error("login", status, &session));
    }
    let token = session["token"].as_str().ok_or(StepError::Fatal("no token in reply".into()))?.to_owned();
    Ok(Login { token, me: session["user_id"].as_str().unwrap_or_default().to_owned() })
}

/// The peer's user id (waiting for them to register) and the direct conversation's id.
async fn open_conversation(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    to: &str,
) -> Result<(String, String), StepError> {
    let peer_id = loop {
        let resp = http.get(format!("{base}/v1/users/{to}")).bearer_auth(token).send().await?;
        let status = resp.status().as_u16();
        let peer: Value = resp.json().await.unwrap_or(Value::Null);
        match (status, peer["user_id"].as_str()) {
            (200, Some(id)) => break id.to_owned(),
            (404, _) => {
                eprintln!("waiting for {to} to register…");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            _ => return Err(status_error(&format!("looking up {to}"), status, &peer)),
        }
    };
    let (status, conv) =
        post(http, format!("{base}/v1/conversations/direct"), Some(token), json!({ "user_id": peer_id }))
            .await?;
    match conv["conversation_id"].as_str() {
        Some(c) => Ok((peer_id, c.to_owned())),
        None => Err(status_error("opening the conversation", status, &conv)),
    }
}

/// Runs a REST step against the current server; a retryable failure moves on to the next
/// server after a backoff (said on stderr).
async fn with_servers<T, F, Fut>(servers: &mut Servers, what: &str, mut step: F) -> Result<T, Failure>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, StepError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match step(servers.current().to_owned()).await {
            Ok(v) => return Ok(v),
            Err(StepError::Fatal(e)) => return Err(e.into()),
            Err(StepError::Retry(e)) => {
                let (failed, next, delay) = move_on(servers, &mut backoff);
                eprintln!("[{what} at {failed} failed: {e}; trying {next} in {:.1} s]", delay.as_secs_f64());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

// ------------------------------------------------------------------ the chat loop

type Tx = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Rx = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// An open connection and when it last showed life.
struct Conn {
    tx: Tx,
    rx: Rx,
    last_heard: Instant,
    /// Three of the server's heartbeat intervals (from `welcome`): silent that long, the
    /// connection is taken for dead.
    silence_limit: Duration,
}

enum ConnectError {
    /// The token was refused (401): log in again.
    Unauthorized,
    Other(String),
}

async fn connect(servers: &Servers, token: &str) -> Result<Conn, ConnectError> {
    let other = |e: &dyn std::fmt::Display| ConnectError::Other(e.to_string());
    let mut request = servers.ws_url().into_client_request().map_err(|e| other(&e))?;
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().map_err(|e| other(&e))?);
    let (socket, _) = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Err(_) => return Err(ConnectError::Other("no answer within 10 s".into())),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) if resp.status().as_u16() == 401 => {
            return Err(ConnectError::Unauthorized);
        }
        Ok(Err(e)) => return Err(other(&e)),
        Ok(Ok(s)) => s,
    };
    let (tx, mut rx) = socket.split();
    // The first frame is `welcome`; it says the heartbeat interval.
    let welcome = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.next()).await {
            Err(_) => return Err(ConnectError::Other("no welcome within 10 s".into())),
            Ok(None) => return Err(ConnectError::Other("closed before welcome".into())),
            Ok(Some(Err(e))) => return Err(other(&e)),
            Ok(Some(Ok(Message::Text(t)))) => break serde_json::from_str::<Value>(&t).unwrap_or(Value::Null),
            Ok(Some(Ok(Message::Close(f)))) => {
                return Err(match f {
                    Some(f) if u16::from(f.code) == 4001 => ConnectError::Unauthorized,
                    f => ConnectError::Other(format!("closed before welcome: {f:?}")),
                });
            }
            Ok(Some(Ok(_))) => {}
        }
    };
    if welcome["type"] != "welcome" {
        return Err(ConnectError::Other(format!("expected welcome, got {welcome}")));
    }
    let heartbeat = Duration::from_millis(welcome["heartbeat_ms"].as_u64().unwrap_or(15_000).max(1_000));
    eprintln!("[connected to {} (node {})]", servers.current(), welcome["node"].as_str().unwrap_or("?"));
    Ok(Conn { tx, rx, last_heard: Instant::now(), silence_limit: heartbeat * 3 })
}

async fn send_json(tx: &mut Tx, v: Value) -> Result<(), String> {
    tx.send(Message::text(v.to_string())).await.map_err(|e| e.to_string())
}

/// How long to wait for unacknowledged messages after stdin closed.
const DRAIN_ON_EXIT: Duration = Duration::from_secs(30);

async fn chat(args: ChatArgs) -> Result<(), Failure> {
    let mut servers = Servers::new(&args.servers)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let mut session = with_servers(&mut servers, "login", |base| {
        let (http, args) = (&http, &args);
        async move { login(http, &base, args).await }
    })
    .await?;
    let token = session.token.clone();
    let (peer_id, conversation) = with_servers(&mut servers, "opening the conversation", |base| {
        let (http, token, to) = (&http, token.clone(), args.to.clone());
        async move { open_conversation(http, &base, &token, &to).await }
    })
    .await?;
    eprintln!("chatting with {} — type a line and press enter; ctrl-d quits", args.to);

    let me = session.me.clone();
    let name = |id: &str| if id == me { "you".to_owned() } else { args.to.clone() };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut exit_deadline: Option<Instant> = None;
    let mut cursors = Cursors::default();
    let mut outbox = Outbox::new(uuid::Uuid::now_v7().to_string());
    let mut backoff = Backoff::default();
    let mut conn: Option<Conn> = None;
    let mut reconnect_at = Instant::now();
    // History is shown once, on the first connection that gets it.
    let mut history_shown = false;

    loop {
        if !stdin_open && outbox.is_empty() {
            break;
        }
        if let Some(deadline) = exit_deadline
            && Instant::now() >= deadline
        {
            eprintln!("[giving up: {} message(s) not acknowledged by the server]", outbox.len());
            break;
        }
        // (Re)connect when due.
        if conn.is_none() && Instant::now() >= reconnect_at {
            match connect(&servers, &session.token).await {
                Ok(mut c) => {
                    backoff.reset();
                    let mut opening = vec![json!({"type":"presence_subscribe","user_ids":[peer_id]})];
                    if history_shown {
                        // Strict live rule: sync after connecting, from what is held.
                        opening.push(json!({"type":"sync","cursors":cursors.sync_cursors()}));
                    } else {
                        opening.push(json!({"type":"history","conversation_id":conversation,"limit":20}));
                    }
                    let mut ok = true;
                    for frame in opening {
                        ok = ok && send_json(&mut c.tx, frame).await.is_ok();
                    }
                    if ok {
                        if history_shown && !outbox.is_empty() {
                            eprintln!(
                                "[syncing from #{}; sending {} unacknowledged message(s) again]",
                                cursors.held(&conversation),
                                outbox.len()
                            );
                        }
                        conn = Some(c);
                    } else {
                        reconnect_at = Instant::now();
                    }
                }
                Err(ConnectError::Unauthorized) => {
                    eprintln!("[token refused by {}: logging in again]", servers.current());
                    match login(&http, servers.current(), &args).await {
                        Ok(s) => session = s,
                        Err(StepError::Fatal(e)) => return Err(e.into()),
                        Err(StepError::Retry(e)) => {
                            let (failed, next, delay) = move_on(&mut servers, &mut backoff);
                            eprintln!(
                                "[login at {failed} failed: {e}; trying {next} in {:.1} s]",
                                delay.as_secs_f64()
                            );
                            reconnect_at = Instant::now() + delay;
                        }
                    }
                }
                Err(ConnectError::Other(e)) => {
                    let (failed, next, delay) = move_on(&mut servers, &mut backoff);
                    eprintln!(
                        "[cannot connect to {failed}: {e}; reconnecting to {next} in {:.1} s (attempt {})]",
                        delay.as_secs_f64(),
                        backoff.failures()
                    );
                    reconnect_at = Instant::now() + delay;
                }
            }
        }
        // Write what is due.
        if let Some(c) = conn.as_mut() {
            let mut broke = None;
            for (id, body) in outbox.take_due(Instant::now()) {
                let frame = json!({"type":"send","id":id,"conversation_id":conversation,"client_msg_id":id,"body":body});
                if let Err(e) = send_json(&mut c.tx, frame).await {
                    broke = Some(e);
                    break;
                }
            }
            if let Some(e) = broke {
                conn = lost(conn, &mut outbox, &mut servers, &mut backoff, &mut reconnect_at, &e);
            }
        }
        // Sleep until something happens.
        let mut wake = Instant::now() + Duration::from_secs(3600);
        match &conn {
            None => wake = wake.min(reconnect_at),
            Some(c) => {
                wake = wake.min(c.last_heard + c.silence_limit);
                if let Some(at) = outbox.next_due() {
                    wake = wake.min(at);
                }
            }
        }
        if let Some(at) = exit_deadline {
            wake = wake.min(at);
        }
        let event = tokio::select! {
            line = lines.next_line(), if stdin_open => Event::Line(line),
            frame = next_frame(&mut conn) => Event::Frame(frame),
            _ = tokio::time::sleep_until(wake) => Event::Tick,
        };
        match event {
            Event::Line(Ok(Some(line))) => {
                if !line.trim().is_empty() {
                    outbox.push(line, Instant::now());
                    if conn.is_none() {
                        eprintln!("[offline: the message is kept and sent once connected]");
                    }
                }
            }
            Event::Line(_) => {
                stdin_open = false;
                if !outbox.is_empty() {
                    eprintln!(
                        "[waiting up to {} s for {} unacknowledged message(s)]",
                        DRAIN_ON_EXIT.as_secs(),
                        outbox.len()
                    );
                    exit_deadline = Some(Instant::now() + DRAIN_ON_EXIT);
                }
            }
            Event::Tick => {
                if let Some(c) = &conn
                    && c.last_heard.elapsed() >= c.silence_limit
                {
                    let why = format!("nothing heard for {} s", c.silence_limit.as_secs());
                    conn = lost(conn, &mut outbox, &mut servers, &mut backoff, &mut reconnect_at, &why);
                }
            }
            Event::Frame(frame) => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(f))) => {
                        let code = f.as_ref().map(|f| u16::from(f.code));
                        let why = format!(
                            "closed by the server ({})",
                            code.map_or("no code".into(), |c| c.to_string())
                        );
                        conn = lost(conn, &mut outbox, &mut servers, &mut backoff, &mut reconnect_at, &why);
                        continue;
                    }
                    Some(Ok(_)) => {
                        if let Some(c) = conn.as_mut() {
                            c.last_heard = Instant::now();
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        conn = lost(
                            conn,
                            &mut outbox,
                            &mut servers,
                            &mut backoff,
                            &mut reconnect_at,
                            &e.to_string(),
                        );
                        continue;
                    }
                    None => {
                        conn = lost(
                            conn,
                            &mut outbox,
                            &mut servers,
                            &mut backoff,
                            &mut reconnect_at,
                            "connection ended",
                        );
                        continue;
                    }
                };
                let Some(c) = conn.as_mut() else { continue };
                c.last_heard = Instant::now();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let mut reply: Vec<Value> = Vec::new();
                match v["type"].as_str().unwrap_or("") {
                    "message" => {
                        let conv = v["conversation_id"].as_str().unwrap_or("");
                        let seq = v["seq"].as_u64().unwrap_or(0);
                        // Every conversation's cursor is kept (a re-sync starts from it); only
                        // this chat's messages are shown, each once.
                        if cursors.record(conv, seq) && conv == conversation {
                            println!(
                                "[{seq}] {}: {}",
                                name(v["author_id"].as_str().unwrap_or("")),
                                shown(&v)
                            );
                            reply.push(json!({"type":"read","conversation_id":conv,"seq":seq}));
                        }
                    }
                    "sync_done" => {
                        let more = v["has_more"].as_bool() == Some(true)
                            || v["conversations"]
                                .as_object()
                                .is_some_and(|m| m.values().any(|c| c["has_more"].as_bool() == Some(true)));
                        if more {
                            reply.push(json!({"type":"sync","cursors":cursors.sync_cursors()}));
                        }
                    }
                    "history" if !history_shown => {
                        let mut last = 0;
                        for m in v["messages"].as_array().into_iter().flatten() {
                            println!(
                                "[{}] {}: {}",
                                m["seq"],
                                name(m["author_id"].as_str().unwrap_or("")),
                                shown(m)
                            );
                            last = m["seq"].as_u64().unwrap_or(last);
                        }
                        cursors.hold_up_to(&conversation, last);
                        history_shown = true;
                        // From here on: what arrived meanwhile, then live messages.
                        reply.push(json!({"type":"sync","cursors":cursors.sync_cursors()}));
                    }
                    "sent" => {
                        let id = v["client_msg_id"].as_str().unwrap_or("");
                        let seq = v["seq"].as_u64().unwrap_or(0);
                        if outbox.acked(id).is_some() {
                            cursors.record(v["conversation_id"].as_str().unwrap_or(&conversation), seq);
                            println!("  ✓ stored as #{seq}");
                        }
                    }
                    "receipt" if v["user_id"].as_str() != Some(&session.me) => {
                        println!("  ✓✓ {} read up to #{}", args.to, v["read_seq"])
                    }
                    "presence" => println!(
                        "  ({} is {})",
                        args.to,
                        if v["online"].as_bool() == Some(true) { "online" } else { "offline" }
                    ),
                    "error" => {
                        let code = v["code"].as_str().unwrap_or("");
                        let message = v["message"].as_str().unwrap_or("");
                        match v["id"].as_str().map(|id| outbox.failed(id, code, Instant::now())) {
                            Some(Failed::Retry(d)) => {
                                eprintln!("  [{code}: sending again in {:.1} s]", d.as_secs_f64())
                            }
                            Some(Failed::GaveUp(body)) => {
                                println!("  ! {code}: {message} (not sent: {body})")
                            }
                            _ => println!("  ! {code}: {message}"),
                        }
                    }
                    _ => {}
                }
                let mut broke = None;
                for frame in reply {
                    if let Err(e) = send_json(&mut c.tx, frame).await {
                        broke = Some(e);
                        break;
                    }
                }
                if let Some(e) = broke {
                    conn = lost(conn, &mut outbox, &mut servers, &mut backoff, &mut reconnect_at, &e);
                }
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.tx.send(Message::Close(None)).await;
    }
    Ok(())
}

enum Event {
    Line(std::io::Result<Option<String>>),
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Tick,
}

/// The next frame of the open connection; pending forever while there is none.
async fn next_frame(
    conn: &mut Option<Conn>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match conn {
        Some(c) => c.rx.next().await,
        None => std::future::pending().await,
    }
}

/// After a failure: the server that failed, the one to try next (the same when only one was
/// given), and how long to wait first (the backoff, with jitter).
fn move_on(servers: &mut Servers, backoff: &mut Backoff) -> (String, String, Duration) {
    let failed = servers.current().to_owned();
    let delay = backoff.next(jitter());
    let next = servers.rotate().to_owned();
    (failed, next, delay)
}

/// A connection was lost: says so on stderr, puts what was in flight back in the queue, and
/// schedules the reconnection to the next server (the same one when only one was given) after
/// a backoff (250 ms after a connection that worked, growing while attempts fail). Returns
/// the new (absent) connection.
fn lost(
    _conn: Option<Conn>,
    outbox: &mut Outbox,
    servers: &mut Servers,
    backoff: &mut Backoff,
    reconnect_at: &mut Instant,
    why: &str,
) -> Option<Conn> {
    let waiting = outbox.connection_lost(Instant::now());
    let (_, next, delay) = move_on(servers, backoff);
    *reconnect_at = Instant::now() + delay;
    eprintln!(
        "[disconnected: {why}; reconnecting to {next} in {:.1} s{}]",
        delay.as_secs_f64(),
        if waiting > 0 { format!(", {waiting} message(s) waiting") } else { String::new() }
    );
    None
}
