//! Test harness: `Server` runs the real binary (port 0, its own data dir, env overrides);
//! `Api` speaks REST; `Ws` is a WebSocket client with typed waits.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PASSWORD: &str = "correct horse battery";

/// Held by the tests that load both cores for a while (floods, load runs, hash storms), so
/// they run one at a time instead of skewing each other's latency checks on a 2-core machine.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `switchboard serve` process.
pub struct Server {
    child: Child,
    pub addr: String,
    pub dir: Arc<tempfile::TempDir>,
}

impl Server {
    /// A fresh node with its own data dir.
    pub async fn start() -> Server {
        Server::start_with(Arc::new(tempfile::tempdir().unwrap()), &[]).await
    }

    pub async fn start_env(env: &[(&str, &str)]) -> Server {
        Server::start_with(Arc::new(tempfile::tempdir().unwrap()), env).await
    }

    /// A node whose store may be unreachable: returns once it listens, without waiting for
    /// `/readyz`.
    pub async fn start_unready(env: &[(&str, &str)]) -> Server {
        Server::spawn(Arc::new(tempfile::tempdir().unwrap()), env).await
    }

    /// A node on `dir` (reuse it to restart on the same data). With
    /// `SWITCHBOARD_TEST_E2E_STORE=cassandra` (and `SWITCHBOARD_TEST_CASSANDRA=host:port`) the
    /// node stores in Cassandra, in a keyspace of its own named after `dir`.
    pub async fn start_with(dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Server {
        let server = Server::spawn(dir, env).await;
        server.wait_ready().await;
        server
    }

    async fn spawn(dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_HTTP_ADDR", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
            .env("SWITCHBOARD_WORKERS", "2")
            .env("SWITCHBOARD_REGISTER_IP_PER_HOUR", "100000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (k, v) in cassandra_env(dir.path()) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start switchboard");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("server did not start in time")
            .unwrap()
            .unwrap_or_else(|| panic!("server exited: {}", read_log(dir.path())));
        let addr = first
            .strip_prefix("switchboard listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server { child, addr, dir }
    }

    /// Runs `serve` on `dir` expecting it to refuse to start: its exit code and its stderr.
    pub async fn refused(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> (Option<i32>, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_HTTP_ADDR", "127.0.0.1:0")
            .env("SWITCHBOARD_DATA_DIR", dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in cassandra_env(dir.path()) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
            .await
            .expect("the server should have refused to start")
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Waits until `/readyz` answers 200 (the store is reachable).
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(resp) = reqwest::get(format!("http://{}/readyz", self.addr)).await
                && resp.status().is_success()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "node never became ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn api(&self) -> Api {
        Api::at(&self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    }

    /// SIGKILL: no chance to flush anything.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap()
    }

    /// The server's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

/// Whether the end-to-end suite runs against Cassandra (see `Server::start_with`).
pub fn e2e_on_cassandra() -> bool {
    std::env::var("SWITCHBOARD_TEST_E2E_STORE").is_ok_and(|v| v == "cassandra")
}

/// The env that points a node at its own Cassandra keyspace (schema applied once, serialised).
fn cassandra_env(dir: &Path) -> Vec<(String, String)> {
    if !e2e_on_cassandra() {
        return Vec::new();
    }
    static SCHEMA_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let nodes = std::env::var("SWITCHBOARD_TEST_CASSANDRA").expect("SWITCHBOARD_TEST_CASSANDRA=host:port");
    let name = dir.file_name().unwrap().to_string_lossy().to_lowercase();
    let keyspace: String = format!("sbtest_e2e_{name}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let env = vec![
        ("SWITCHBOARD_STORE_BACKEND".to_owned(), "cassandra".to_owned()),
        ("SWITCHBOARD_CASSANDRA_NODES".to_owned(), nodes),
        ("SWITCHBOARD_CASSANDRA_KEYSPACE".to_owned(), keyspace),
        (
            "SWITCHBOARD_CASSANDRA_REPLICATION".to_owned(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}".to_owned(),
        ),
    ];
    let _guard = SCHEMA_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    schema_apply(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    env
}

/// Runs `switchboard schema apply` with these overrides; panics with its stderr on failure.
pub fn schema_apply<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["schema", "apply"])
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "schema apply: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(PathBuf::from(dir).join("server.log")).unwrap_or_default()
}

/// A registered user with one device token.
#[derive(Clone, Debug)]
pub struct Account {
    pub username: String,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

impl Account {
    fn from_reply(v: &Value) -> Account {
        Account {
            username: v["username"].as_str().unwrap().to_owned(),
            user_id: v["user_id"].as_str().unwrap().to_owned(),
            device_id: v["device_id"].as_str().unwrap().to_owned(),
            token: v["token"].as_str().unwrap().to_owned(),
        }
    }
}

pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    /// The REST API at `addr` (host:port).
    pub fn at(addr: &str) -> Api {
        Api { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Any method, with an optional JSON body.
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub async fn register(&self, username: &str) -> Account {
        let (status, v) =
            self.post("/v1/register", None, json!({"username": username, "password": PASSWORD})).await;
        assert_eq!(status, 201, "register {username}: {v}");
        Account::from_reply(&v)
    }

    /// A new device of an existing user.
    pub async fn login(&self, username: &str) -> Account {
        let (status, v) =
            self.post("/v1/login", None, json!({"username": username, "password": PASSWORD})).await;
        assert_eq!(status, 200, "login {username}: {v}");
        Account::from_reply(&v)
    }

    /// The direct conversation of `a` with `b`.
    pub async fn direct(&self, a: &Account, b: &Account) -> String {
        let (status, v) =
            self.post("/v1/conversations/direct", Some(&a.token), json!({"user_id": b.user_id})).await;
        assert_eq!(status, 200, "{v}");
        v["conversation_id"].as_str().unwrap().to_owned()
    }
}

/// A WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl Ws {
    /// Connects with the token in the upgrade header and waits for `welcome`.
    pub async fn connect(server: &Server, account: &Account) -> Ws {
        let mut request = server.ws_url().into_client_request().unwrap();
        request.headers_mut().insert("Authorization", format!("Bearer {}", account.token).parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("ws connect");
        let mut ws = Ws { stream, welcome: Value::Null };
        ws.welcome = ws.expect("welcome").await;
        ws
    }

    /// Connects to `addr` (host:port), `None` if that fails or `welcome` does not come in time.
    pub async fn try_connect(addr: &str, account: &Account, wait: Duration) -> Option<Ws> {
        let mut request = format!("ws://{addr}/v1/ws").into_client_request().ok()?;
        request.headers_mut().insert("Authorization", format!("Bearer {}", account.token).parse().ok()?);
        let (stream, _) =
            tokio::time::timeout(wait, tokio_tungstenite::connect_async(request)).await.ok()?.ok()?;
        let mut ws = Ws { stream, welcome: Value::Null };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame =
                ws.next_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await?;
            if frame["type"] == "welcome" {
                ws.welcome = frame;
                return Some(ws);
            }
        }
    }

    /// Sends a frame; `false` if the connection is gone.
    pub async fn try_send(&mut self, frame: Value) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.stream.send(Message::text(frame.to_string())))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Connects without credentials (the first frame must be `auth`).
    pub async fn connect_anonymous(server: &Server) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("ws connect");
        Ws { stream, welcome: Value::Null }
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream.send(Message::text(frame.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.unwrap();
    }

    /// The next text frame as JSON, `None` on close or after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()??;
            match next {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("server sent JSON")),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT).await.expect("expected a frame")
    }

    /// The next frame of this type; frames of other types in between are skipped.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next_within(WAIT).await.unwrap_or_else(|| panic!("expected a {kind} frame"));
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Asserts no frame of this type arrives within `wait`.
    pub async fn expect_none(&mut self, kind: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(frame) =
            self.next_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await
        {
            assert_ne!(frame["type"], kind, "unexpected frame {frame}");
        }
    }

    /// Sends `ping` and waits for its `pong`: the connection is alive and every frame sent
    /// before has been handled.
    pub async fn roundtrip(&mut self) {
        self.send(json!({"type": "ping", "id": "rt"})).await;
        let pong = self.expect("pong").await;
        assert_eq!(pong["id"], "rt");
    }

    /// Waits for the server's close frame, skipping data frames.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next()).await.expect("expected close") {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    eprintln!("websocket ended without a close frame: {e}");
                    return None;
                }
                None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }

    /// Sends a message and waits for its `sent`.
    pub async fn send_message(&mut self, conversation: &str, client_msg_id: &str, body: &str) -> Value {
        self.send(json!({"type":"send","id":client_msg_id,"conversation_id":conversation,"client_msg_id":client_msg_id,"body":body})).await;
        let sent = self.expect("sent").await;
        assert_eq!(sent["client_msg_id"], client_msg_id);
        sent
    }
}

/// Every message of a conversation, oldest first, read through REST history page by page.
pub async fn all_messages(api: &Api, conversation: &str, token: &str) -> Vec<Value> {
    let mut stored: Vec<Value> = Vec::new();
    let mut before = u64::MAX;
    loop {
        let (status, page) = api
            .get(&format!("/v1/conversations/{conversation}/messages?limit=200&before={before}"), Some(token))
            .await;
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap();
        stored.extend(messages.iter().rev().cloned());
        if page["has_more"] != true || messages.is_empty() {
            break;
        }
        before = messages[0]["seq"].as_u64().unwrap();
    }
    stored.reverse();
    stored
}

/// alice and bob, registered, with their direct conversation.
pub async fn pair(server: &Server) -> (Api, Account, Account, String) {
    let api = server.api();
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    let conversation = api.direct(&alice, &bob).await;
    (api, alice, bob, conversation)
}

pub fn close_code(frame: &Option<CloseFrame>) -> u16 {
    frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(0)
}
