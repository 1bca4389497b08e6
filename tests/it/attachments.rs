//! Attachments end to end, on the local directory backend and on a real S3 server (s3s-fs,
//! when `SWITCHBOARD_TEST_S3_ENDPOINT` is set — `scripts/test` starts one): a picture uploaded
//! by one user reaches another user's second device as a message with metadata and signed
//! links; the thumbnail loads without a header, the file with a Range request, bytes equal;
//! what lies in blob storage is not the plaintext; strangers are refused; an upload broken off
//! halfway resumes at its last whole part; oversize uploads and decompression bombs are refused;
//! a removed group member keeps earlier files and loses later ones; with the S3 server down,
//! uploads fail clearly while text keeps flowing.

use crate::harness::{Account, Api, Server, WAIT, Ws, pair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const PART: usize = 5 * 1024 * 1024;

/// The blob backends under test: the local directory always; s3s-fs when scripts/test
/// started one. Each: its env for the server, and where an object's bytes lie on disk.
fn backends() -> Vec<(&'static str, Vec<(String, String)>)> {
    let mut out = vec![("local", vec![])];
    if let Ok(endpoint) = std::env::var("SWITCHBOARD_TEST_S3_ENDPOINT") {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| panic!("{k} is set with SWITCHBOARD_TEST_S3_ENDPOINT"))
        };
        out.push((
            "s3",
            vec![
                ("SWITCHBOARD_BLOB_BACKEND".into(), "s3".into()),
                ("SWITCHBOARD_S3_ENDPOINT".into(), endpoint),
                ("SWITCHBOARD_S3_BUCKET".into(), var("SWITCHBOARD_TEST_S3_BUCKET")),
                ("SWITCHBOARD_S3_ACCESS_KEY".into(), var("SWITCHBOARD_TEST_S3_ACCESS_KEY")),
                ("SWITCHBOARD_S3_SECRET_KEY".into(), var("SWITCHBOARD_TEST_S3_SECRET_KEY")),
            ],
        ));
    }
    out
}

async fn start(env: &[(String, String)], extra: &[(&str, &str)]) -> Server {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Server::start_env(&all).await
}

/// Where the server keeps an object's bytes on disk, for either backend.
fn object_path(server: &Server, backend: &str, key: &str) -> PathBuf {
    match backend {
        "local" => server.dir.path().join("data").join("blobs").join(key),
        _ => PathBuf::from(std::env::var("SWITCHBOARD_TEST_S3_ROOT").expect("SWITCHBOARD_TEST_S3_ROOT"))
            .join(std::env::var("SWITCHBOARD_TEST_S3_BUCKET").unwrap())
            .join(key),
    }
}

/// A noisy picture (so its PNG is large and its JPEG thumbnail is not trivial).
pub fn picture(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let n = x.wrapping_mul(2_654_435_761).wrapping_add(y.wrapping_mul(40_503)) >> 7;
        image::Rgb([(x % 256) as u8, (y % 256) as u8, (n % 256) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG whose header claims `side` × `side` pixels, with almost nothing behind it.
fn bomb(side: u32) -> Vec<u8> {
    let mut bytes = picture(2, 2);
    bytes[16..20].copy_from_slice(&side.to_be_bytes());
    bytes[20..24].copy_from_slice(&side.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Uploads a whole file in one request; the status and the JSON answer.
pub async fn upload(api: &Api, who: &Account, conversation: &str, name: &str, bytes: &[u8]) -> (u16, Value) {
    let resp = http()
        .post(format!("{}/v1/conversations/{conversation}/attachments?name={name}", api.base))
        .bearer_auth(&who.token)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn get_bytes(
    api: &Api,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http().get(format!("{}{path}", api.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn send_with(ws: &mut Ws, conversation: &str, client_msg_id: &str, attachments: &[&str]) -> Value {
    ws.send(json!({"type":"send","id":client_msg_id,"conversation_id":conversation,
        "client_msg_id":client_msg_id,"body":"look","attachments":attachments}))
        .await;
    loop {
        let frame = ws.next().await;
        if frame["type"] == "sent" || frame["type"] == "error" {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_picture_reaches_another_device_with_thumbnail_range_and_signed_links() {
    for (backend, env) in backends() {
        let server = start(&env, &[]).await;
        let (api, alice, bob, conversation) = pair(&server).await;
        let bob_phone = api.login("bob").await;
        let mut alice_ws = Ws::connect(&server, &alice).await;
        let mut phone = Ws::connect(&server, &bob_phone).await;

        let original = picture(900, 600);
        let (status, up) = upload(&api, &alice, &conversation, "beach.png", &original).await;
        assert_eq!(status, 201, "{backend}: {up}");
        assert_eq!(up["complete"], true);
        let att = &up["attachment"];
        let id = att["id"].as_str().unwrap().to_owned();
        assert_eq!(att["type"], "image/png", "{backend}: sniffed from the bytes");
        assert_eq!((att["width"].as_u64(), att["height"].as_u64()), (Some(900), Some(600)));
        assert_eq!(att["size"].as_u64(), Some(original.len() as u64));
        assert_eq!(att["sha256"], sha256_hex(&original));
        assert_eq!(att["name"], "beach.png");

        // Not sent yet: only the uploader may read it.
        let early = get_bytes(&api, &format!("/v1/attachments/{id}"), Some(&bob.token), &[]).await;
        assert_eq!(early.status().as_u16(), 404, "{backend}: an unsent upload is the uploader's alone");

        let sent = send_with(&mut alice_ws, &conversation, "pic-1", &[&id]).await;
        assert_eq!(sent["type"], "sent", "{backend}: {sent}");
        let message = phone.expect("message").await;
        let shown = &message["attachments"][0];
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown["name"], "beach.png");
        assert_eq!(shown["size"].as_u64(), Some(original.len() as u64));
        let thumb_url = shown["thumbnail_url"].as_str().expect("a picture has a thumbnail link").to_owned();
        let url = shown["url"].as_str().unwrap().to_owned();
        assert!(!message.to_string().contains("iVBOR"), "the frame carries no file bytes");

        // The thumbnail through the signed link alone (as an <img> would load it).
        let thumb = get_bytes(&api, &thumb_url, None, &[]).await;
        assert_eq!(thumb.status().as_u16(), 200, "{backend}");
        assert_eq!(thumb.headers()["content-type"], "image/jpeg");
        let small = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (320, 213), "{backend}: ≤ 320 px, aspect kept");

        // The file: a range with bob's token, then whole with the link.
        let path = format!("/v1/attachments/{id}");
        let part = get_bytes(&api, &path, Some(&bob_phone.token), &[("Range", "bytes=1000-70999")]).await;
        assert_eq!(part.status().as_u16(), 206, "{backend}");
        assert_eq!(
            part.headers()["content-range"].to_str().unwrap(),
            format!("bytes 1000-70999/{}", original.len())
        );
        assert_eq!(&part.bytes().await.unwrap()[..], &original[1000..71000], "{backend}: range bytes");
        let whole = get_bytes(&api, &url, None, &[]).await;
        assert_eq!(whole.status().as_u16(), 200);
        let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", sha256_hex(&original)));
        assert!(whole.headers()["cache-control"].to_str().unwrap().contains("max-age"));
        assert_eq!(&whole.bytes().await.unwrap()[..], &original[..], "{backend}: the whole file");
        let cached = get_bytes(&api, &path, Some(&bob.token), &[("If-None-Match", &etag)]).await;
        assert_eq!(cached.status().as_u16(), 304);
        let tail = get_bytes(&api, &path, Some(&bob.token), &[("Range", "bytes=-10")]).await;
        assert_eq!(&tail.bytes().await.unwrap()[..], &original[original.len() - 10..]);
        let head = http().head(format!("{}{url}", api.base)).send().await.unwrap();
        assert_eq!(head.headers()["content-length"].to_str().unwrap(), original.len().to_string(), "HEAD");
        let beyond = get_bytes(&api, &path, Some(&bob.token), &[("Range", "bytes=99999999-")]).await;
        assert_eq!(beyond.status().as_u16(), 416);

        // History shows it too, with fresh links.
        let (_, page) =
            api.get(&format!("/v1/conversations/{conversation}/messages"), Some(&bob.token)).await;
        let last = page["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["attachments"][0]["id"], id.as_str());

        // Refusals: a forged link, no credentials, a stranger.
        let forged = thumb_url.replace("sig=", "sig=0");
        assert_eq!(get_bytes(&api, &forged, None, &[]).await.status().as_u16(), 403);
        let longer = url.replace("exp=", "exp=9");
        assert_eq!(get_bytes(&api, &longer, None, &[]).await.status().as_u16(), 403, "exp is signed");
        assert_eq!(get_bytes(&api, &path, None, &[]).await.status().as_u16(), 401);
        let mallory = api.register("mallory").await;
        let stranger = get_bytes(&api, &path, Some(&mallory.token), &[]).await;
        assert_eq!(stranger.status().as_u16(), 403, "{backend}");
        let (status, _) = upload(&api, &mallory, &conversation, "x", b"hi").await;
        assert_eq!(status, 403, "a stranger cannot upload to the conversation");

        // At rest: sealed, not the picture.
        let stored = std::fs::read(object_path(&server, backend, &format!("attachments/{id}/file"))).unwrap();
        assert_ne!(stored.len(), original.len());
        assert!(
            !stored.windows(64).any(|w| w == &original[4096..4160]),
            "{backend}: plaintext found in the stored object"
        );
        let (_, listed) = api.get("/v1/conversations", Some(&bob.token)).await;
        assert!(listed.to_string().contains("look"));
        alice_ws.close().await;
        phone.close().await;
    }
}

#[tokio::test]
async fn oversize_uploads_bombs_and_misused_ids_are_refused() {
    let server = start(&[], &[("SWITCHBOARD_ATTACHMENT_MAX_BYTES", "3000000")]).await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let mut ws = Ws::connect(&server, &alice).await;

    let too_big = http()
        .post(format!("{}/v1/conversations/{conversation}/attachments?name=big", api.base))
        .bearer_auth(&alice.token)
        .header("Upload-Length", "3000001")
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status().as_u16(), 413);
    let v: Value = too_big.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_large");

    let (status, v) = upload(&api, &alice, &conversation, "bomb.png", &bomb(60_000)).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_large");
    assert!(v["error"]["message"].as_str().unwrap().contains("60000 × 60000"), "{v}");
    let (status, v) =
        upload(&api, &alice, &conversation, "fake.png", b"\x89PNG\r\n\x1a\n but not a picture").await;
    assert_eq!(status, 400, "{v}");
    assert!(
        !server.dir.path().join("data/blobs/attachments").exists()
            || std::fs::read_dir(server.dir.path().join("data/blobs/attachments")).unwrap().next().is_none(),
        "nothing of a refused picture is kept"
    );

    // Bytes past the declared length.
    let create = http()
        .post(format!("{}/v1/conversations/{conversation}/attachments?name=x", api.base))
        .bearer_auth(&alice.token)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    let upload_id = create.json::<Value>().await.unwrap()["upload_id"].as_str().unwrap().to_owned();
    let over = http()
        .patch(format!("{}/v1/uploads/{upload_id}", api.base))
        .bearer_auth(&alice.token)
        .header("Upload-Offset", "0")
        .body(vec![1u8; 11])
        .send()
        .await
        .unwrap();
    assert_eq!(over.status().as_u16(), 400);
    let wrong_offset = http()
        .patch(format!("{}/v1/uploads/{upload_id}", api.base))
        .bearer_auth(&alice.token)
        .header("Upload-Offset", "4")
        .body(vec![1u8; 6])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_offset.status().as_u16(), 409);
    let (status, _) = api.get(&format!("/v1/uploads/{upload_id}"), Some(&bob.token)).await;
    assert_eq!(status, 404, "someone else's upload is not there");

    // Sends naming attachments that are not theirs to send.
    let unknown =
        send_with(&mut ws, &conversation, "m-unknown", &["01890a5d-ac96-774b-bcce-b302099a8057"]).await;
    assert_eq!(unknown["code"], "not_found", "{unknown}");
    let unfinished = send_with(&mut ws, &conversation, "m-unfinished", &[&upload_id]).await;
    assert_eq!(unfinished["code"], "not_found", "{unfinished}");
    let (_, bobs) = upload(&api, &bob, &conversation, "b.txt", b"bob's notes").await;
    let bobs_id = bobs["upload_id"].as_str().unwrap();
    let stolen = send_with(&mut ws, &conversation, "m-stolen", &[bobs_id]).await;
    assert_eq!(stolen["code"], "not_found", "{stolen}");
    let (_, mine) = upload(&api, &alice, &conversation, "a.txt", b"alice's notes").await;
    let mine = mine["upload_id"].as_str().unwrap();
    assert_eq!(mine, mine.trim());
    let first = send_with(&mut ws, &conversation, "m-1", &[mine]).await;
    assert_eq!(first["type"], "sent", "{first}");
    let again = send_with(&mut ws, &conversation, "m-1", &[mine]).await;
    assert_eq!(
        (again["type"].as_str(), again["seq"].as_u64()),
        (Some("sent"), first["seq"].as_u64()),
        "idempotent"
    );
    let twice = send_with(&mut ws, &conversation, "m-2", &[mine]).await;
    assert_eq!(twice["code"], "conflict", "{twice}");
    // A plain file is served as a download, never inline.
    let file = get_bytes(&api, &format!("/v1/attachments/{mine}"), Some(&bob.token), &[]).await;
    assert_eq!(file.status().as_u16(), 200);
    assert!(file.headers()["content-disposition"].to_str().unwrap().starts_with("attachment;"));
    assert_eq!(file.headers()["x-content-type-options"], "nosniff");
    assert_eq!(&file.bytes().await.unwrap()[..], b"alice's notes");
    ws.close().await;
}

/// Sends `PATCH` headers announcing `declared` bytes, writes `sent` of them and drops the
/// connection: a client whose network failed mid-upload.
async fn broken_patch(api: &Api, token: &str, upload_id: &str, body: &[u8], declared: usize) {
    let addr = api.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PATCH /v1/uploads/{upload_id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Upload-Offset: 0\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
}

#[tokio::test]
async fn an_upload_broken_off_halfway_resumes_at_its_last_whole_part() {
    for (backend, env) in backends() {
        let server = start(&env, &[]).await;
        let (api, alice, bob, conversation) = pair(&server).await;
        let file = random_bytes(2 * PART + 123_457);
        let created = http()
            .post(format!("{}/v1/conversations/{conversation}/attachments?name=video.bin", api.base))
            .bearer_auth(&alice.token)
            .header("Upload-Length", file.len().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        assert_eq!(created.headers()["upload-offset"], "0");
        let upload_id = created.json::<Value>().await.unwrap()["upload_id"].as_str().unwrap().to_owned();
        broken_patch(&api, &alice.token, &upload_id, &file[..PART + PART / 2], file.len()).await;

        // The server notices the broken body, keeps the whole part, and says so.
        let deadline = tokio::time::Instant::now() + WAIT;
        let offset = loop {
            let resp = http()
                .head(format!("{}/v1/uploads/{upload_id}", api.base))
                .bearer_auth(&alice.token)
                .send()
                .await
                .unwrap();
            let offset: u64 = resp.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
            if offset > 0 || tokio::time::Instant::now() > deadline {
                break offset;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(offset, PART as u64, "{backend}: one whole part stored");
        let rest = loop {
            let resp = http()
                .patch(format!("{}/v1/uploads/{upload_id}", api.base))
                .bearer_auth(&alice.token)
                .header("Upload-Offset", offset.to_string())
                .body(file[PART..].to_vec())
                .send()
                .await
                .unwrap();
            // The broken request may still hold the upload for a moment.
            if resp.status().as_u16() != 409 || tokio::time::Instant::now() > deadline {
                break resp;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(rest.status().as_u16(), 200, "{backend}");
        let done: Value = rest.json().await.unwrap();
        assert_eq!(done["complete"], true, "{backend}: {done}");
        assert_eq!(done["attachment"]["sha256"], sha256_hex(&file), "{backend}: hashed across both requests");
        assert_eq!(done["attachment"]["type"], "application/octet-stream");
        let mut ws = Ws::connect(&server, &alice).await;
        assert_eq!(send_with(&mut ws, &conversation, "v", &[&upload_id]).await["type"], "sent");
        let got = get_bytes(&api, &format!("/v1/attachments/{upload_id}"), Some(&bob.token), &[]).await;
        assert_eq!(got.headers()["content-length"].to_str().unwrap(), file.len().to_string());
        assert!(
            got.bytes().await.unwrap()[..] == file[..],
            "{backend}: the resumed file is whole and in order"
        );
        let stored =
            std::fs::metadata(object_path(&server, backend, &format!("attachments/{upload_id}/file")))
                .unwrap();
        assert!(stored.len() > file.len() as u64, "{backend}: sealed chunks carry tags");
        ws.close().await;
    }
}

#[tokio::test]
async fn a_removed_member_keeps_earlier_files_and_loses_later_ones() {
    let server = Server::start().await;
    let api = server.api();
    let (alice, bob, carol) =
        (api.register("alice").await, api.register("bob").await, api.register("carol").await);
    let (status, v) = api
        .post(
            "/v1/conversations/group",
            Some(&alice.token),
            json!({"title":"trip","members":[bob.user_id, carol.user_id]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let group = v["conversation_id"].as_str().unwrap().to_owned();
    let mut ws = Ws::connect(&server, &alice).await;
    let (_, before) = upload(&api, &alice, &group, "before.txt", b"before").await;
    let before = before["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(send_with(&mut ws, &group, "b", &[&before]).await["type"], "sent");
    let (status, _) = api
        .call("DELETE", &format!("/v1/conversations/{group}/members/{}", carol.user_id), &alice.token, None)
        .await;
    assert_eq!(status, 200);
    let (_, after) = upload(&api, &alice, &group, "after.txt", b"after").await;
    let after = after["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(send_with(&mut ws, &group, "a", &[&after]).await["type"], "sent");

    let read = |id: String, who: &Account| {
        let token = who.token.clone();
        let api = &api;
        async move { get_bytes(api, &format!("/v1/attachments/{id}"), Some(&token), &[]).await.status().as_u16() }
    };
    assert_eq!(read(before.clone(), &carol).await, 200, "sent while carol was a member");
    assert_eq!(read(after.clone(), &carol).await, 403, "sent after carol's removal");
    assert_eq!(read(after, &bob).await, 200);
    ws.close().await;
}

/// A private s3s-fs that a test may kill and start again on the same port and directory.
struct PrivateS3 {
    bin: String,
    port: u16,
    root: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateS3 {
    const KEY: &str = "private-access";
    const SECRET: &str = "private-secret-for-this-test";

    fn start(bin: String) -> PrivateS3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("switchboard")).unwrap();
        let mut s3 = PrivateS3 { bin, port, root, child: None };
        s3.up();
        s3
    }

    fn up(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", Self::KEY, "--secret-key", Self::SECRET])
            .arg(self.root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn with_the_blob_store_down_uploads_fail_clearly_and_text_flows() {
    // A private S3 server that dies mid-test and comes back; without the binary (tests run
    // outside scripts/test), an endpoint where nothing listens.
    let mut s3 = std::env::var("SWITCHBOARD_TEST_S3_BIN").ok().map(PrivateS3::start);
    let port = match &s3 {
        Some(s3) => s3.port,
        None => std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start_env(&[
        ("SWITCHBOARD_BLOB_BACKEND", "s3"),
        ("SWITCHBOARD_S3_ENDPOINT", &endpoint),
        ("SWITCHBOARD_S3_ACCESS_KEY", PrivateS3::KEY),
        ("SWITCHBOARD_S3_SECRET_KEY", PrivateS3::SECRET),
        ("SWITCHBOARD_BLOB_TIMEOUT_MS", "2000"),
    ])
    .await;
    let (api, alice, bob, conversation) = pair(&server).await;
    let mut alice_ws = Ws::connect(&server, &alice).await;
    let mut bob_ws = Ws::connect(&server, &bob).await;
    if s3.is_some() {
        let (status, v) = upload(&api, &alice, &conversation, "up.png", &picture(64, 64)).await;
        assert_eq!(status, 201, "while S3 is up: {v}");
    }
    if let Some(s3) = s3.as_mut() {
        s3.kill();
    }
    let started = std::time::Instant::now();
    let resp = http()
        .post(format!("{}/v1/conversations/{conversation}/attachments?name=a.png", api.base))
        .bearer_auth(&alice.token)
        .body(picture(64, 64))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(started.elapsed() < Duration::from_secs(15), "fails within the blob timeout, not hanging");
    let bogus =
        send_with(&mut alice_ws, &conversation, "with-file", &["01890a5d-ac96-774b-bcce-b302099a8057"]).await;
    assert_eq!(bogus["code"], "unavailable", "{bogus}");
    // Text is untouched.
    alice_ws.send_message(&conversation, "t1", "still here").await;
    let got = bob_ws.expect("message").await;
    assert_eq!(got["body"], "still here");
    // And uploads work again once S3 is back.
    if let Some(s3) = s3.as_mut() {
        s3.up();
        let (status, v) = upload(&api, &alice, &conversation, "back.png", &picture(64, 64)).await;
        assert_eq!(status, 201, "after S3 came back: {v}");
        let id = v["upload_id"].as_str().unwrap();
        assert_eq!(send_with(&mut alice_ws, &conversation, "with-file-2", &[id]).await["type"], "sent");
        assert_eq!(bob_ws.expect("message").await["attachments"][0]["id"], id);
    }
    alice_ws.close().await;
    bob_ws.close().await;
}
