//! The web client as the server serves it: `/` is the embedded page with a strict CSP, its
//! hashed assets are served with their types and cached for good, paths outside the client
//! stay JSON 404s. (The page itself is tested in a real browser by `scripts/web e2e`.)

use super::harness::Server;

#[tokio::test]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"), "{headers:?}");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    assert_eq!(headers["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    if html.contains("was not built") {
        // A build without Node.js embeds no page; scripts/test always builds it.
        panic!("the web client was not built into this binary: run scripts/web build");
    }
    // Every asset the page references is served, with its type, cached for good.
    let assets: Vec<&str> = html.split('"').filter(|s| s.starts_with("./assets/")).collect();
    assert!(!assets.is_empty(), "{html}");
    for asset in assets {
        let r = http.get(format!("{base}/{}", &asset[2..])).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.contains("javascript") || kind.contains("css"), "{asset}: {kind}");
        assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    }
    for path in ["/v1/nope", "/nope.js", "/assets/../Cargo.toml"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}
