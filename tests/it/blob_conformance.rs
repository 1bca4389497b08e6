//! The `BlobStore` contract: every case runs against every backend — a local directory (a
//! fresh tempdir per test) always, and a real S3 server (s3s-fs) when
//! `SWITCHBOARD_TEST_S3_ENDPOINT` and its siblings are set (`scripts/test` starts one with
//! `scripts/s3` and sets them). On S3 each test works under its own key prefix. Also: where the
//! bytes of a key lie on disk (the end-to-end tests read them there), and a dead S3 server
//! failing fast.

use bytes::Bytes;
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::config::AttachmentsConfig;
use switchboard::store::blob::{BlobError, BlobStore, ByteStream, MIN_PART_BYTES, ObjectBlobStore};

/// A backend under test.
struct Backend {
    name: &'static str,
    store: Arc<dyn BlobStore>,
    /// Every key this test uses starts with it (ends in `/`).
    prefix: String,
    /// The object under key K is the file `<files>/K`.
    files: PathBuf,
    _keep: Option<tempfile::TempDir>,
}

impl Backend {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// One instance of every backend.
fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let local = ObjectBlobStore::local(dir.path()).unwrap();
    let mut out = vec![Backend {
        name: "local",
        store: Arc::new(local),
        prefix: "test/".into(),
        files: dir.path().to_path_buf(),
        _keep: Some(dir),
    }];
    if let Ok(endpoint) = std::env::var("SWITCHBOARD_TEST_S3_ENDPOINT") {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (scripts/s3 start writes it)"))
        };
        let config = AttachmentsConfig {
            blob_backend: "s3".into(),
            s3_endpoint: endpoint,
            s3_bucket: var("SWITCHBOARD_TEST_S3_BUCKET"),
            s3_access_key: var("SWITCHBOARD_TEST_S3_ACCESS_KEY"),
            s3_secret_key: var("SWITCHBOARD_TEST_S3_SECRET_KEY"),
            ..AttachmentsConfig::default()
        };
        let files = PathBuf::from(var("SWITCHBOARD_TEST_S3_ROOT")).join(&config.s3_bucket);
        out.push(Backend {
            name: "s3",
            store: Arc::new(ObjectBlobStore::s3(&config).unwrap()),
            prefix: format!("test-{}/", uuid::Uuid::now_v7()),
            files,
            _keep: None,
        });
    }
    out
}

/// `n` bytes that differ from any shifted copy of themselves, so a misplaced piece shows.
fn pattern(n: usize, seed: u8) -> Bytes {
    (0..n).map(|i| (i % 251) as u8 ^ seed).collect::<Vec<u8>>().into()
}

async fn read_all(mut stream: ByteStream) -> Result<Vec<u8>, BlobError> {
    let mut out = Vec::new();
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

async fn range(store: &dyn BlobStore, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, BlobError> {
    read_all(store.get_range(key, range).await?).await
}

#[tokio::test]
async fn put_get_overwrite_and_head() {
    for b in backends() {
        let (s, key) = (&b.store, b.key("a/object.bin"));
        s.put(&key, Bytes::from_static(b"first")).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap(), Bytes::from_static(b"first"), "{}", b.name);
        s.put(&key, Bytes::from_static(b"second!")).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap(), Bytes::from_static(b"second!"), "{}", b.name);
        let head = s.head(&key).await.unwrap().expect("head");
        assert_eq!((head.key.as_str(), head.size), (key.as_str(), 7), "{}", b.name);
        let now = switchboard::model::now_millis();
        assert!(
            (now - head.modified_ms).abs() < 60_000,
            "{}: modified {} now {now}",
            b.name,
            head.modified_ms
        );
        s.put(&b.key("empty"), Bytes::new()).await.unwrap();
        assert_eq!(s.get(&b.key("empty")).await.unwrap().len(), 0, "{}", b.name);
        assert_eq!(s.backend(), b.name);
    }
}

#[tokio::test]
async fn a_missing_key_is_not_found() {
    for b in backends() {
        let (s, key) = (&b.store, b.key("never/written"));
        assert!(matches!(s.get(&key).await, Err(BlobError::NotFound)), "{}", b.name);
        assert!(matches!(s.get_range(&key, 0..1).await, Err(BlobError::NotFound)), "{}", b.name);
        assert_eq!(s.head(&key).await.unwrap(), None, "{}", b.name);
    }
}

#[tokio::test]
async fn bad_keys_are_refused() {
    for b in backends() {
        for key in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "a\\b", "_multipart/x"] {
            let put = b.store.put(key, Bytes::from_static(b"x")).await;
            assert!(matches!(put, Err(BlobError::Invalid(_))), "{}: {key:?} {put:?}", b.name);
        }
        assert!(matches!(b.store.list("no-slash").await, Err(BlobError::Invalid(_))), "{}", b.name);
    }
}

#[tokio::test]
async fn get_range_streams_the_bytes_asked_for() {
    for b in backends() {
        let (s, key) = (&*b.store, b.key("ranged"));
        let bytes = pattern(300_000, 7);
        s.put(&key, bytes.clone()).await.unwrap();
        assert_eq!(range(s, &key, 1000..1010).await.unwrap(), &bytes[1000..1010], "{}: middle", b.name);
        assert_eq!(range(s, &key, 5..299_999).await.unwrap(), &bytes[5..299_999], "{}: long", b.name);
        assert_eq!(
            range(s, &key, 299_990..300_000).await.unwrap(),
            &bytes[299_990..],
            "{}: to the end",
            b.name
        );
        assert_eq!(range(s, &key, 0..300_000).await.unwrap(), &bytes[..], "{}: all", b.name);
        #[allow(clippy::reversed_empty_ranges)] // a reversed range is one of the bad inputs
        let bad_ranges = [5..5, 9..3, 299_990..300_001, 300_000..300_001, 400_000..400_010];
        for bad in bad_ranges {
            let got = s.get_range(&key, bad.clone()).await.map(|_| ());
            assert!(matches!(got, Err(BlobError::Invalid(_))), "{}: {bad:?} gave {got:?}", b.name);
        }
    }
}

#[tokio::test]
async fn delete_removes_and_deleting_nothing_succeeds() {
    for b in backends() {
        let (s, key) = (&b.store, b.key("doomed/one"));
        s.put(&key, Bytes::from_static(b"bye")).await.unwrap();
        s.delete(&key).await.unwrap();
        assert!(matches!(s.get(&key).await, Err(BlobError::NotFound)), "{}", b.name);
        assert_eq!(s.head(&key).await.unwrap(), None, "{}", b.name);
        s.delete(&key).await.unwrap();
        s.delete(&b.key("never/there")).await.unwrap();
    }
}

#[tokio::test]
async fn list_returns_every_depth_under_the_prefix_only() {
    for b in backends() {
        let s = &b.store;
        let mine = ["p/a", "p/b/c", "p/b/d/e"];
        for (i, name) in mine.iter().enumerate() {
            s.put(&b.key(name), pattern(i + 1, 0)).await.unwrap();
        }
        for name in ["q/a", "p2/a", "pa"] {
            s.put(&b.key(name), Bytes::from_static(b"other")).await.unwrap();
        }
        // An unfinished upload under the prefix is no object.
        let upload = s.create_multipart(&b.key("p/pending")).await.unwrap();
        s.put_part(&b.key("p/pending"), &upload, 0, Bytes::from_static(b"part")).await.unwrap();

        let mut listed = s.list(&b.key("p/")).await.unwrap();
        listed.sort_by(|x, y| x.key.cmp(&y.key));
        let got: Vec<(String, u64)> = listed.iter().map(|e| (e.key.clone(), e.size)).collect();
        let want: Vec<(String, u64)> =
            mine.iter().enumerate().map(|(i, n)| (b.key(n), i as u64 + 1)).collect();
        assert_eq!(got, want, "{}", b.name);
        assert_eq!(s.list(&b.key("nothing/")).await.unwrap(), vec![], "{}", b.name);
        let everything = s.list("").await.unwrap();
        assert!(everything.iter().all(|e| !e.key.starts_with("_multipart/")), "{}: {everything:?}", b.name);
        assert!(everything.iter().any(|e| e.key == b.key("q/a")), "{}", b.name);
        if b.name == "local" {
            // The emulation's staging shows when asked for, and only then.
            let staged = s.list(&format!("_multipart/{upload}/")).await.unwrap();
            assert_eq!(staged.len(), 2, "marker and part 0: {staged:?}");
        }
        s.abort_multipart(&b.key("p/pending"), &upload).await.unwrap();
        if b.name == "local" {
            assert_eq!(s.list("_multipart/").await.unwrap(), vec![], "abort leaves no staging");
        }
    }
}

#[tokio::test]
async fn multipart_joins_the_parts_and_shows_nothing_before_complete() {
    for b in backends() {
        let (s, key) = (&b.store, b.key("big/upload.bin"));
        let (first, last) = (pattern(MIN_PART_BYTES, 1), pattern(12_345, 2));
        let upload = s.create_multipart(&key).await.unwrap();
        // Part 0 stored twice: the second replaces the first.
        s.put_part(&key, &upload, 0, pattern(MIN_PART_BYTES, 9)).await.unwrap();
        let tag0 = s.put_part(&key, &upload, 0, first.clone()).await.unwrap();
        let tag1 = s.put_part(&key, &upload, 1, last.clone()).await.unwrap();
        assert_eq!(s.head(&key).await.unwrap(), None, "{}: visible before complete", b.name);
        assert!(matches!(s.get(&key).await, Err(BlobError::NotFound)), "{}", b.name);
        assert_eq!(s.list(&b.key("big/")).await.unwrap(), vec![], "{}", b.name);

        s.complete_multipart(&key, &upload, vec![tag0, tag1]).await.unwrap();
        let got = s.get(&key).await.unwrap();
        assert_eq!(got.len(), MIN_PART_BYTES + 12_345, "{}", b.name);
        assert!(
            got[..MIN_PART_BYTES] == first[..] && got[MIN_PART_BYTES..] == last[..],
            "{}: bytes differ",
            b.name
        );
        assert_eq!(s.head(&key).await.unwrap().unwrap().size, got.len() as u64, "{}", b.name);
        let tail = range(&**s, &key, MIN_PART_BYTES as u64 - 10..MIN_PART_BYTES as u64 + 10).await.unwrap();
        assert_eq!(tail, &got[MIN_PART_BYTES - 10..MIN_PART_BYTES + 10], "{}: across the seam", b.name);
        // Aborting a finished upload succeeds and leaves the object alone.
        s.abort_multipart(&key, &upload).await.unwrap();
        assert_eq!(s.get(&key).await.unwrap().len(), got.len(), "{}", b.name);
        if b.name == "local" {
            assert_eq!(s.list("_multipart/").await.unwrap(), vec![], "completion leaves no staging");
        }
    }
}

#[tokio::test]
async fn abort_drops_the_upload_and_unknown_uploads_abort_fine() {
    for b in backends() {
        let (s, key) = (&b.store, b.key("aborted"));
        let upload = s.create_multipart(&key).await.unwrap();
        let tag = s.put_part(&key, &upload, 0, Bytes::from_static(b"only part")).await.unwrap();
        s.abort_multipart(&key, &upload).await.unwrap();
        let late = s.complete_multipart(&key, &upload, vec![tag]).await;
        assert!(matches!(late, Err(BlobError::NotFound)), "{}: complete after abort gave {late:?}", b.name);
        let late = s.put_part(&key, &upload, 1, Bytes::from_static(b"late")).await;
        assert!(matches!(late, Err(BlobError::NotFound)), "{}: put_part after abort gave {late:?}", b.name);
        assert_eq!(s.head(&key).await.unwrap(), None, "{}", b.name);
        s.abort_multipart(&key, &upload).await.unwrap();
        s.abort_multipart(&key, &uuid::Uuid::now_v7().to_string()).await.unwrap();
    }
}

#[tokio::test]
async fn a_small_part_before_the_last_is_refused_at_completion() {
    for b in backends() {
        let (s, key) = (&b.store, b.key("small-parts"));
        let upload = s.create_multipart(&key).await.unwrap();
        let tag0 = s.put_part(&key, &upload, 0, pattern(1024, 3)).await.unwrap();
        let tag1 = s.put_part(&key, &upload, 1, pattern(1024, 4)).await.unwrap();
        let done = s.complete_multipart(&key, &upload, vec![tag0, tag1]).await;
        assert!(matches!(done, Err(BlobError::Invalid(_))), "{}: {done:?}", b.name);
        if b.name == "s3" {
            assert!(format!("{done:?}").contains("EntityTooSmall"), "{done:?}");
        }
        assert_eq!(s.head(&key).await.unwrap(), None, "{}", b.name);
        assert!(
            matches!(s.complete_multipart(&key, &upload, vec![]).await, Err(BlobError::Invalid(_))),
            "{}",
            b.name
        );
        s.abort_multipart(&key, &upload).await.unwrap();
    }
}

/// The end-to-end tests check bytes at rest by reading `<files>/<key>`: for the local backend
/// `<blob_dir>/<key>`, for s3s-fs `<SWITCHBOARD_TEST_S3_ROOT>/<bucket>/<key>`.
#[tokio::test]
async fn an_object_lies_on_disk_under_its_key() {
    for b in backends() {
        let key = b.key("at-rest/x.bin");
        let bytes = pattern(4096, 5);
        b.store.put(&key, bytes.clone()).await.unwrap();
        let on_disk = std::fs::read(b.files.join(&key)).unwrap_or_else(|e| panic!("{}: {key}: {e}", b.name));
        assert_eq!(on_disk, &bytes[..], "{}", b.name);

        let key = b.key("at-rest/joined.bin");
        let upload = b.store.create_multipart(&key).await.unwrap();
        let tag = b.store.put_part(&key, &upload, 0, bytes.clone()).await.unwrap();
        b.store.complete_multipart(&key, &upload, vec![tag]).await.unwrap();
        assert_eq!(std::fs::read(b.files.join(&key)).unwrap(), &bytes[..], "{}: multipart", b.name);
    }
}

fn dead_s3(endpoint: String, timeout_ms: u64) -> ObjectBlobStore {
    let config = AttachmentsConfig {
        blob_backend: "s3".into(),
        s3_endpoint: endpoint,
        s3_access_key: "AKIDEXAMPLE".into(),
        s3_secret_key: "not-a-secret".into(),
        blob_timeout_ms: timeout_ms,
        ..AttachmentsConfig::default()
    };
    ObjectBlobStore::s3(&config).unwrap()
}

/// One call of a blob store, its result reduced to success or the error.
type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BlobError>> + Send + 'a>>;

/// Every kind of call against `store` fails with `Unavailable` within about `limit`.
async fn all_unavailable(store: &ObjectBlobStore, limit: Duration, what: &str) {
    let key = "dead/key";
    let calls: Vec<(&str, Call<'_>)> = vec![
        ("put", Box::pin(store.put(key, Bytes::from_static(b"x")))),
        ("get", Box::pin(async { store.get(key).await.map(|_| ()) })),
        ("get_range", Box::pin(async { store.get_range(key, 0..1).await.map(|_| ()) })),
        ("head", Box::pin(async { store.head(key).await.map(|_| ()) })),
        ("delete", Box::pin(store.delete(key))),
        ("list", Box::pin(async { store.list("dead/").await.map(|_| ()) })),
        ("create_multipart", Box::pin(async { store.create_multipart(key).await.map(|_| ()) })),
    ];
    for (name, call) in calls {
        let started = Instant::now();
        let result = call.await;
        let took = started.elapsed();
        assert!(matches!(result, Err(BlobError::Unavailable(_))), "{what}: {name} gave {result:?}");
        assert!(took < limit, "{what}: {name} took {took:?}");
    }
}

#[tokio::test]
async fn a_dead_s3_server_is_unavailable_within_the_timeout() {
    // Connection refused: a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let refused = dead_s3(format!("http://127.0.0.1:{port}"), 300);
    all_unavailable(&refused, Duration::from_millis(300 + 700), "closed port").await;

    // A server that accepts and never answers: only the time limit ends the call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    all_unavailable(&dead_s3(endpoint, 300), Duration::from_millis(300 + 700), "silent server").await;
    silent.abort();
}

#[tokio::test]
async fn wrong_s3_credentials_are_unavailable_not_missing() {
    let Ok(endpoint) = std::env::var("SWITCHBOARD_TEST_S3_ENDPOINT") else {
        eprintln!("skipped: SWITCHBOARD_TEST_S3_ENDPOINT is not set (scripts/test sets it)");
        return;
    };
    let config = AttachmentsConfig {
        blob_backend: "s3".into(),
        s3_endpoint: endpoint,
        s3_bucket: std::env::var("SWITCHBOARD_TEST_S3_BUCKET").unwrap(),
        s3_access_key: std::env::var("SWITCHBOARD_TEST_S3_ACCESS_KEY").unwrap(),
        s3_secret_key: "wrong-secret".into(),
        ..AttachmentsConfig::default()
    };
    let store = ObjectBlobStore::s3(&config).unwrap();
    let key = format!("test-{}/denied", uuid::Uuid::now_v7());
    let put = store.put(&key, Bytes::from_static(b"x")).await;
    assert!(matches!(put, Err(BlobError::Unavailable(_))), "{put:?}");
    let head = store.head(&key).await;
    assert!(matches!(head, Err(BlobError::Unavailable(_))), "{head:?}");
    // A 403 on an upload means "no such upload" only when the credentials work.
    let abort = store.abort_multipart(&key, &uuid::Uuid::now_v7().to_string()).await;
    assert!(matches!(abort, Err(BlobError::Unavailable(_))), "{abort:?}");
}
