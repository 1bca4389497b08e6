//! The terminal chat client behind `switchboard chat`: logs in (or registers), opens the
//! direct conversation with another user, prints recent history and incoming frames, and
//! sends each line typed on stdin (with a fresh client_msg_id, marking what it shows as read).

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::process::ExitCode;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Base URL of a node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
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

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<(u16, Value), Failure> {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn chat(args: ChatArgs) -> Result<(), Failure> {
    let http = reqwest::Client::new();
    let base = args.server.trim_end_matches('/').to_owned();
    let creds =
        json!({ "username": args.user, "password": args.password, "device_name": "switchboard chat" });
    let (mut status, mut session) = post(&http, format!("{base}/v1/login"), None, creds.clone()).await?;
    if status == 401 && args.register {
        (status, session) = post(&http, format!("{base}/v1/register"), None, creds).await?;
    }
    if !(200..300).contains(&status) {
        return Err(format!("login failed ({status}): {session}").into());
    }
    let token = session["token"].as_str().ok_or("no token in reply")?.to_owned();
    let me = session["user_id"].as_str().unwrap_or_default().to_owned();
    let peer_id = loop {
        let resp = http.get(format!("{base}/v1/users/{}", args.to)).bearer_auth(&token).send().await?;
        let status = resp.status().as_u16();
        let peer: Value = resp.json().await.unwrap_or(Value::Null);
        match (status, peer["user_id"].as_str()) {
            (200, Some(id)) => break id.to_owned(),
            (404, _) => {
                eprintln!("waiting for {} to register…", args.to);
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            _ => return Err(format!("looking up {} failed ({status}): {peer}", args.to).into()),
        }
    };
    let (_, conv) =
        post(&http, format!("{base}/v1/conversations/direct"), Some(&token), json!({ "user_id": peer_id }))
            .await?;
    let conversation = conv["conversation_id"].as_str().ok_or("could not open the conversation")?.to_owned();

    let ws_url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let mut request = ws_url.into_client_request()?;
    request.headers_mut().insert("Authorization", format!("Bearer {token}").parse()?);
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    let (mut tx, mut rx) = socket.split();
    tx.send(Message::text(json!({"type":"history","conversation_id":conversation,"limit":20}).to_string()))
        .await?;
    tx.send(Message::text(json!({"type":"presence_subscribe","user_ids":[peer_id]}).to_string())).await?;
    eprintln!("chatting with {} — type a line and press enter; ctrl-d quits", args.to);

    let name = |id: &str| if id == me { "you".to_owned() } else { args.to.clone() };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut counter = 0u64;
    // The highest seq shown, in order: the sync cursor of this conversation.
    let mut cursor = 0u64;
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if line.trim().is_empty() { continue; }
                counter += 1;
                let frame = json!({
                    "type": "send", "conversation_id": conversation,
                    "client_msg_id": format!("{}-{counter}", uuid::Uuid::now_v7()), "body": line,
                });
                tx.send(Message::text(frame.to_string())).await?;
            }
            frame = rx.next() => {
                let Some(frame) = frame else { break };
                let Message::Text(text) = frame? else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match v["type"].as_str().unwrap_or("") {
                    "message" if v["conversation_id"].as_str() == Some(conversation.as_str()) => {
                        println!("[{}] {}: {}", v["seq"], name(v["author_id"].as_str().unwrap_or("")), v["body"].as_str().unwrap_or(""));
                        cursor = cursor.max(v["seq"].as_u64().unwrap_or(0));
                        let read = json!({"type":"read","conversation_id":v["conversation_id"],"seq":v["seq"]});
                        tx.send(Message::text(read.to_string())).await?;
                    }
                    "sync_done" => {
                        let mine = &v["conversations"][conversation.as_str()];
                        if v["has_more"].as_bool() == Some(true) || mine["has_more"].as_bool() == Some(true) {
                            let sync = json!({"type":"sync","cursors":{conversation.as_str(): cursor}});
                            tx.send(Message::text(sync.to_string())).await?;
                        }
                    }
                    "history" => {
                        for m in v["messages"].as_array().into_iter().flatten() {
                            println!("[{}] {}: {}", m["seq"], name(m["author_id"].as_str().unwrap_or("")), m["body"].as_str().unwrap_or(""));
                            cursor = m["seq"].as_u64().unwrap_or(cursor);
                        }
                        // From here on: what arrived meanwhile, then live messages (other
                        // conversations' messages that the sync brings are not shown).
                        let sync = json!({"type":"sync","cursors":{conversation.as_str(): cursor}});
                        tx.send(Message::text(sync.to_string())).await?;
                    }
                    "sent" => println!("  ✓ stored as #{}", v["seq"]),
                    "receipt" if v["user_id"].as_str() != Some(&me) => println!("  ✓✓ {} read up to #{}", args.to, v["read_seq"]),
                    "presence" => println!("  ({} is {})", args.to, if v["online"].as_bool() == Some(true) { "online" } else { "offline" }),
                    "typing" => {}
                    "error" => println!("  ! {}: {}", v["code"].as_str().unwrap_or(""), v["message"].as_str().unwrap_or("")),
                    _ => {}
                }
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}
