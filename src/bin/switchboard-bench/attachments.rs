//! S10 attachments, on each blob backend (the local directory; S3 when an endpoint is given):
//! a server of its own with that backend, two members of a direct conversation, then
//! (a) one random file (50 MiB) uploaded a few times, one POST with the whole body streamed
//! from memory, sent in a message and downloaded by the other member as many times, each
//! download checked against the upload's SHA-256; (c) the same bytes put and read straight
//! from the blob store in this process (`ObjectBlobStore`, no server, no encryption) — the
//! raw store's throughput to set the service's against; (b) concurrent uploads of the file
//! with the server's RSS sampled every 100 ms: before, peak, after. Not in the default list:
//! run it with `--scenarios s10`. Records and summary section: `attachments_report.rs`.

use crate::attachments_report::{AttachmentsResult, ConcurrentUploads, Rates, RawStore};
use crate::report::{Counts, Results, Skipped, bump};
use crate::scenarios::{register_pair, source_ip};
use crate::target::{self, Kind, Sut};
use crate::{Failure, ws};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchboard::attachment::PART_BYTES;
use switchboard::config::AttachmentsConfig;
use switchboard::store::blob::{BlobStore, ObjectBlobStore};
use tokio_tungstenite::tungstenite::Message;

/// S10's options (flattened into `run`'s).
#[derive(clap::Args, Debug, Clone)]
pub struct S10Args {
    /// S10: size of the file, MiB (default 50; quick 6).
    #[arg(long)]
    pub s10_file_mib: Option<u64>,
    /// S10: uploads, and downloads, of the file one at a time (default 3; quick 2).
    #[arg(long)]
    pub s10_repeats: Option<usize>,
    /// S10: concurrent uploads of the file while the server's RSS is sampled (default 20;
    /// quick 3).
    #[arg(long)]
    pub s10_concurrent: Option<usize>,
    /// S10: rounds of concurrent uploads, one after another on the same server: whether a
    /// later round's peak rises above the first's (memory kept) or not (reused) (default 2;
    /// quick 1).
    #[arg(long)]
    pub s10_bursts: Option<usize>,
    /// S10: blob backends to measure, local and/or s3 (default local, plus s3 when an S3
    /// endpoint is given).
    #[arg(long, value_delimiter = ',')]
    pub s10_backends: Option<Vec<String>>,
    /// S10: the S3-compatible server of the s3 backend (`scripts/s3 start` writes these
    /// variables into its env file).
    #[arg(long, env = "SWITCHBOARD_TEST_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "SWITCHBOARD_TEST_S3_BUCKET", default_value = "switchboard")]
    pub s3_bucket: String,
    #[arg(long, env = "SWITCHBOARD_TEST_S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    #[arg(long, env = "SWITCHBOARD_TEST_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// S10: the data root of a `scripts/s3` instance; its parent's `s3s-fs.pid` names the S3
    /// server's process, whose CPU time is then reported.
    #[arg(long, env = "SWITCHBOARD_TEST_S3_ROOT")]
    pub s3_root: Option<PathBuf>,
}

/// What S10 needs from the run.
pub struct Setup<'a> {
    pub args: &'a S10Args,
    pub quick: bool,
    pub switchboard_bin: &'a Path,
    /// The run's scratch dir: the server's data dir and the raw local store go under it.
    pub work: &'a Path,
    pub out: &'a Path,
    pub server_cpu: usize,
    pub server_env: &'a [(String, String)],
}

/// One blob backend to measure.
enum Backend {
    Local,
    S3 { config: Box<AttachmentsConfig>, pid: Option<u32> },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::S3 { .. } => "s3",
        }
    }

    /// The server's environment for this backend (its blob dir stays the data dir's).
    fn server_env(&self) -> Vec<(String, String)> {
        match self {
            Backend::Local => vec![("SWITCHBOARD_BLOB_BACKEND".into(), "local".into())],
            Backend::S3 { config, .. } => vec![
                ("SWITCHBOARD_BLOB_BACKEND".into(), "s3".into()),
                ("SWITCHBOARD_S3_ENDPOINT".into(), config.s3_endpoint.clone()),
                ("SWITCHBOARD_S3_BUCKET".into(), config.s3_bucket.clone()),
                ("SWITCHBOARD_S3_ACCESS_KEY".into(), config.s3_access_key.clone()),
                ("SWITCHBOARD_S3_SECRET_KEY".into(), config.s3_secret_key.clone()),
            ],
        }
    }

    fn store_cpu(&self) -> Option<f64> {
        match self {
            Backend::S3 { pid: Some(pid), .. } => Some(target::cpu_secs(*pid)),
            _ => None,
        }
    }
}

struct Plan {
    file_bytes: u64,
    repeats: usize,
    concurrent: usize,
    bursts: usize,
}

/// Every upload and download may take this long (20 × 50 MiB share one server core).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
const RSS_SAMPLE: Duration = Duration::from_millis(100);

/// Runs S10 on every chosen backend, one server each; a backend that cannot complete fails
/// the run and the next one still runs.
pub async fn run(setup: &Setup<'_>, results: &mut Results) {
    let a = setup.args;
    let plan = Plan {
        file_bytes: a.s10_file_mib.unwrap_or(if setup.quick { 6 } else { 50 }).max(1) * 1024 * 1024,
        repeats: a.s10_repeats.unwrap_or(if setup.quick { 2 } else { 3 }).max(1),
        concurrent: a.s10_concurrent.unwrap_or(if setup.quick { 3 } else { 20 }).max(1),
        bursts: a.s10_bursts.unwrap_or(if setup.quick { 1 } else { 2 }).max(1),
    };
    let names = a.s10_backends.clone().unwrap_or_else(|| {
        let mut names = vec!["local".to_owned()];
        if a.s3_endpoint.is_some() {
            names.push("s3".into());
        }
        names
    });
    if a.s10_backends.is_none() && a.s3_endpoint.is_none() {
        results.skipped.push(Skipped {
            target: Kind::Switchboard,
            scenario: "s10 (s3 backend)".into(),
            reason: "no S3 endpoint (--s3-endpoint or SWITCHBOARD_TEST_S3_ENDPOINT)".into(),
        });
    }
    for name in names {
        let outcome = match backend(a, &name) {
            Ok(backend) => one_backend(setup, &plan, &backend, results).await,
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            eprintln!("  S10 ({name}) could not complete: {e}");
            results.fail(format!("switchboard S10 ({name}) could not complete: {e}"));
        }
    }
}

fn backend(a: &S10Args, name: &str) -> Result<Backend, Failure> {
    match name.trim().to_ascii_lowercase().as_str() {
        "local" => Ok(Backend::Local),
        "s3" => {
            let endpoint = a.s3_endpoint.clone().ok_or("the s3 backend needs --s3-endpoint")?;
            let config = Box::new(AttachmentsConfig {
                blob_backend: "s3".into(),
                s3_endpoint: endpoint,
                s3_bucket: a.s3_bucket.clone(),
                s3_access_key: a.s3_access_key.clone().unwrap_or_default(),
                s3_secret_key: a.s3_secret_key.clone().unwrap_or_default(),
                ..AttachmentsConfig::default()
            });
            let pid = a.s3_root.as_ref().and_then(|root| {
                let pid_file = root.parent()?.join("s3s-fs.pid");
                std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
            });
            Ok(Backend::S3 { config, pid })
        }
        other => Err(format!("unknown S10 backend {other:?} (local or s3)").into()),
    }
}

async fn one_backend(
    setup: &Setup<'_>,
    plan: &Plan,
    backend: &Backend,
    results: &mut Results,
) -> Result<(), Failure> {
    let mut env = setup.server_env.to_vec();
    env.extend(backend.server_env());
    let data_dir = setup.work.join("switchboard");
    let effective = effective_backend(setup.switchboard_bin, &target::switchboard_env(&data_dir, &env));
    if effective.as_deref() != Some(backend.name()) {
        return Err(format!(
            "the server would run with blob backend {effective:?}, not {:?} (does this build have attachments?)",
            backend.name()
        )
        .into());
    }
    let sut = Sut::start_switchboard(setup.switchboard_bin, &data_dir, setup.server_cpu, &env).await?;
    results.note_version(&sut);
    eprintln!(
        "[switchboard] S10 ({}): {} × {} MiB one at a time, then {} × {} concurrently",
        backend.name(),
        plan.repeats,
        plan.file_bytes / (1024 * 1024),
        plan.bursts,
        plan.concurrent
    );
    let outcome = measure(&sut, setup, plan, backend).await;
    sut.stop(setup.out, &format!("switchboard-s10-{}", backend.name())).await;
    let mut r = outcome?;
    r.judge(plan.repeats);
    r.check_memory(PART_BYTES);
    eprintln!("  {}", r.one_line());
    if !r.valid {
        results.fail(format!("switchboard S10 ({}): {}", backend.name(), r.invalid_reasons.join("; ")));
    }
    for c in r.expectations.iter().filter(|c| c.evaluated && !c.met) {
        results.note(format!(
            "switchboard S10 ({}) expectation not met: {} (expected {}; observed {})",
            backend.name(),
            c.name,
            c.expected,
            c.observed
        ));
    }
    results.attachments.push(r);
    Ok(())
}

/// `blob_backend` of the server's effective configuration under `env` (`switchboard config`).
fn effective_backend(bin: &Path, env: &[(String, String)]) -> Option<String> {
    let out = std::process::Command::new(bin).arg("config").envs(env.iter().cloned()).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let rest = l.trim().strip_prefix("blob_backend")?.trim_start().strip_prefix([':', '='])?;
        Some(rest.trim().trim_end_matches(',').trim_matches('"').to_owned())
    })
}

fn http_client() -> Result<reqwest::Client, Failure> {
    Ok(reqwest::Client::builder()
        .timeout(TRANSFER_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .build()?)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn measure(
    sut: &Sut,
    setup: &Setup<'_>,
    plan: &Plan,
    backend: &Backend,
) -> Result<AttachmentsResult, Failure> {
    let http = http_client()?;
    let name = backend.name();
    let (a_token, b_token, conversation) =
        register_pair(&http, &sut.http, &format!("att_{name}_a"), &format!("att_{name}_b")).await?;
    let mut file = vec![0u8; plan.file_bytes as usize];
    getrandom::fill(&mut file).map_err(|e| format!("random bytes: {e}"))?;
    let file = Bytes::from(file);
    let sha = sha256_hex(&file);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut r = AttachmentsResult {
        target: Kind::Switchboard,
        backend: name.into(),
        s3_endpoint: match backend {
            Backend::S3 { config, .. } => Some(config.s3_endpoint.clone()),
            Backend::Local => None,
        },
        file_bytes: plan.file_bytes,
        rss_start_kib: sut.rss_kib(),
        upload: Rates::default(),
        download: Rates::default(),
        downloads_verified: 0,
        uploads_hash_matched: 0,
        raw: RawStore::default(),
        concurrent: Vec::new(),
        expectations: Vec::new(),
        valid: false,
        invalid_reasons: Vec::new(),
    };

    // (a) one at a time: uploads, one of them sent, downloads by the other member.
    let mut first_id = None;
    for i in 0..plan.repeats {
        let (cpu, store) = (sut.cpu_secs(), backend.store_cpu());
        let up = upload(&http, &sut.http, &a_token, &conversation, file.clone()).await;
        let (cpu, store) = (sut.cpu_secs() - cpu, backend.store_cpu().zip(store).map(|(b, a)| b - a));
        match up {
            Ok(u) => {
                r.upload.push(plan.file_bytes, u.secs, Some(cpu), store);
                if u.sha256 == sha {
                    r.uploads_hash_matched += 1;
                }
                eprintln!("  upload {i}: {:.2} s, server {cpu:.2} CPU-s", u.secs);
                first_id.get_or_insert(u.id);
            }
            Err(e) => eprintln!("  upload {i} failed: {e}"),
        }
    }
    let id = first_id.ok_or("no upload succeeded")?;
    send_with_attachment(sut, &a_token, &conversation, &id).await?;
    for i in 0..plan.repeats {
        let (cpu, store) = (sut.cpu_secs(), backend.store_cpu());
        let down = download(&http, &sut.http, &b_token, &id, plan.file_bytes).await;
        let (cpu, store) = (sut.cpu_secs() - cpu, backend.store_cpu().zip(store).map(|(b, a)| b - a));
        match down {
            Ok((bytes, secs)) => {
                r.download.push(plan.file_bytes, secs, Some(cpu), store);
                let same = sha256_hex(&bytes) == sha;
                r.downloads_verified += usize::from(same);
                eprintln!("  download {i}: {secs:.2} s, server {cpu:.2} CPU-s, same bytes: {same}");
            }
            Err(e) => eprintln!("  download {i} failed: {e}"),
        }
    }

    // (c) the same bytes straight through the blob store, no server.
    r.raw = raw_store(backend, setup.work, plan, &file, &sha).await?;
    eprintln!(
        "  raw {}: put {:.1}, multipart put {:.1}, get {:.1} MiB/s",
        r.raw.location,
        r.raw.put.median_mib_per_sec,
        r.raw.multipart_put.median_mib_per_sec,
        r.raw.get.median_mib_per_sec
    );

    // (b) concurrent uploads, RSS sampled; again, to see whether the memory is reused.
    for burst in 0..plan.bursts {
        let c = concurrent_uploads(sut, backend, plan, &http, &a_token, &conversation, &file).await;
        eprintln!(
            "  burst {burst}: {} of {} ok in {:.1} s ({:.1} MiB/s), server {:.1} CPU-s, RSS {:.1} → peak {:.1} → {:.1} MiB",
            c.succeeded,
            c.uploads,
            c.wall_secs,
            c.aggregate_mib_per_sec,
            c.server_cpu_secs,
            c.rss_before_kib as f64 / 1024.0,
            c.rss_peak_kib as f64 / 1024.0,
            c.rss_after_kib as f64 / 1024.0
        );
        r.concurrent.push(c);
    }
    Ok(r)
}

struct Uploaded {
    id: String,
    sha256: String,
    secs: f64,
}

/// `http_<status>:<code>` of a failed answer, or the transport failure's kind.
fn failure_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        "transport".into()
    }
}

/// One POST with the whole file as its body; the time until the answer.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    conversation: &str,
    file: Bytes,
) -> Result<Uploaded, String> {
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/v1/conversations/{conversation}/attachments?name=s10.bin"))
        .bearer_auth(token)
        .body(file)
        .send()
        .await
        .map_err(|e| failure_kind(&e))?;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.map_err(|e| failure_kind(&e))?;
    let secs = started.elapsed().as_secs_f64();
    let attachment = &v["attachment"];
    match (status, v["complete"].as_bool(), attachment["id"].as_str()) {
        (201, Some(true), Some(id)) => Ok(Uploaded {
            id: id.to_owned(),
            sha256: attachment["sha256"].as_str().unwrap_or_default().to_owned(),
            secs,
        }),
        _ => Err(format!("http_{status}:{}", v["error"]["code"].as_str().unwrap_or("?"))),
    }
}

/// GET of the whole file into memory; the time until its last byte.
async fn download(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    size: u64,
) -> Result<(Vec<u8>, f64), String> {
    let started = Instant::now();
    let mut resp = http
        .get(format!("{base}/v1/attachments/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| failure_kind(&e))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(format!("http_{status}:{}", v["error"]["code"].as_str().unwrap_or("?")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    while let Some(piece) = resp.chunk().await.map_err(|e| failure_kind(&e))? {
        bytes.extend_from_slice(&piece);
    }
    Ok((bytes, started.elapsed().as_secs_f64()))
}

/// Sends a message carrying attachment `id`, so the other member may download it.
async fn send_with_attachment(sut: &Sut, token: &str, conversation: &str, id: &str) -> Result<(), Failure> {
    let mut socket = ws::connect(&sut.ws_url, source_ip(0), Some(token)).await?;
    target::handshake(Kind::Switchboard, &mut socket).await?;
    let client_msg_id = format!("s10-{id}");
    let frame = json!({
        "type": "send",
        "id": "s10",
        "conversation_id": conversation,
        "client_msg_id": client_msg_id,
        "body": "the S10 file",
        "attachments": [id],
    });
    socket.send(Message::text(frame.to_string())).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .map_err(|_| "no `sent` for the message with the attachment within 10 s")?
            .ok_or("connection closed before `sent`")??;
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("sent") if v["client_msg_id"] == client_msg_id.as_str() => break,
            Some("error") => return Err(format!("sending the attachment: {text}").into()),
            _ => {}
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}

/// (c): the file put whole, put as 5 MiB multipart parts (the server's write path) and read
/// back as one stream, `repeats` times each, straight through `ObjectBlobStore`.
async fn raw_store(
    backend: &Backend,
    work: &Path,
    plan: &Plan,
    file: &Bytes,
    sha: &str,
) -> Result<RawStore, Failure> {
    let local_dir = work.join("s10-raw-local");
    let (store, location) = match backend {
        Backend::Local => {
            let _ = std::fs::remove_dir_all(&local_dir);
            (ObjectBlobStore::local(&local_dir)?, format!("local dir {}", local_dir.display()))
        }
        Backend::S3 { config, .. } => {
            (ObjectBlobStore::s3(config)?, format!("s3 {}/{}", config.s3_endpoint, config.s3_bucket))
        }
    };
    let mut raw = RawStore { location, ..RawStore::default() };
    let run = format!("{:x}", crate::scenarios::unix_ms());
    let size = plan.file_bytes;
    for i in 0..plan.repeats {
        let key = format!("s10-raw/{run}-{i}-whole");
        let cpu = backend.store_cpu();
        let started = Instant::now();
        store.put(&key, file.clone()).await?;
        raw.put.push(size, started.elapsed().as_secs_f64(), None, delta(cpu, backend.store_cpu()));
        store.delete(&key).await?;

        let key = format!("s10-raw/{run}-{i}-parts");
        let cpu = backend.store_cpu();
        let started = Instant::now();
        let upload = store.create_multipart(&key).await?;
        let mut tags = Vec::new();
        for (index, from) in (0..size).step_by(PART_BYTES as usize).enumerate() {
            let part = file.slice(from as usize..(from + PART_BYTES).min(size) as usize);
            tags.push(store.put_part(&key, &upload, index as u32, part).await?);
        }
        store.complete_multipart(&key, &upload, tags).await?;
        raw.multipart_put.push(size, started.elapsed().as_secs_f64(), None, delta(cpu, backend.store_cpu()));

        let cpu = backend.store_cpu();
        let started = Instant::now();
        let mut stream = store.get_range(&key, 0..size).await?;
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(piece) = stream.next().await {
            bytes.extend_from_slice(&piece?);
        }
        raw.get.push(size, started.elapsed().as_secs_f64(), None, delta(cpu, backend.store_cpu()));
        raw.gets_verified += usize::from(sha256_hex(&bytes) == sha);
        store.delete(&key).await?;
    }
    if matches!(backend, Backend::Local) {
        let _ = std::fs::remove_dir_all(&local_dir);
    }
    Ok(raw)
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// (b): `plan.concurrent` uploads at once; the server's RSS every 100 ms from just before the
/// first request until a pause after the last answer.
async fn concurrent_uploads(
    sut: &Sut,
    backend: &Backend,
    plan: &Plan,
    http: &reqwest::Client,
    token: &str,
    conversation: &str,
    file: &Bytes,
) -> ConcurrentUploads {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = sut.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = {
        let (stop, pid) = (stop.clone(), sut.pid);
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                samples.push((started.elapsed().as_secs_f64(), target::rss_kib(pid)));
                std::thread::sleep(RSS_SAMPLE);
            }
            samples
        })
    };
    let (cpu, store) = (sut.cpu_secs(), backend.store_cpu());
    let tasks: Vec<_> = (0..plan.concurrent)
        .map(|_| {
            let (http, base, token, conversation, file) =
                (http.clone(), sut.http.clone(), token.to_owned(), conversation.to_owned(), file.clone());
            tokio::spawn(async move { upload(&http, &base, &token, &conversation, file).await })
        })
        .collect();
    let mut failures = Counts::new();
    let mut secs = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(u)) => secs.push(u.secs),
            Ok(Err(kind)) => bump(&mut failures, kind),
            Err(_) => bump(&mut failures, "task_failed"),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let (cpu, store) = (sut.cpu_secs() - cpu, delta(store, backend.store_cpu()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = sut.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let samples =
        tokio::task::spawn_blocking(move || sampler.join().unwrap_or_default()).await.unwrap_or_default();
    let (peak_at, peak) =
        samples.iter().copied().fold((0.0, rss_before), |m, s| if s.1 > m.1 { s } else { m });
    let succeeded = secs.len();
    ConcurrentUploads {
        uploads: plan.concurrent,
        succeeded,
        failures,
        wall_secs: wall,
        aggregate_mib_per_sec: crate::attachments_report::mib_per_sec(
            succeeded as u64 * plan.file_bytes,
            wall,
        ),
        upload_secs_min: secs.iter().copied().fold(f64::INFINITY, f64::min).min(wall),
        upload_secs_max: secs.iter().copied().fold(0.0, f64::max),
        server_cpu_secs: cpu,
        store_cpu_secs: store,
        rss_before_kib: rss_before,
        rss_peak_kib: peak,
        rss_peak_at_secs: peak_at,
        rss_after_kib: rss_after,
        rss_rise_per_upload_kib: peak.saturating_sub(rss_before) as f64 / plan.concurrent as f64,
        sample_interval_ms: RSS_SAMPLE.as_millis() as u64,
        rss_samples: samples,
    }
}
