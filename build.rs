//! Build script: keeps the web client's assets (`web/dist/`, embedded by `src/http/web.rs`)
//! current. When they are missing or older than the client's sources it runs `npm ci` (if
//! `web/node_modules` is absent) and `npm run build` in `web/`. Without npm, or with
//! `SWITCHBOARD_SKIP_WEB_BUILD=1`, it only warns: the binary then embeds whatever `web/dist/`
//! holds, and `/` says how to build the page. Node.js is never needed at run time.

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

/// Files and folders of the client whose change makes `web/dist/` stale.
const SOURCES: [&str; 6] = [
    "web/src",
    "web/index.html",
    "web/package.json",
    "web/package-lock.json",
    "web/vite.config.ts",
    "web/tsconfig.json",
];

/// The newest modification time under `path` (a file or a folder, recursively).
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()).filter_map(|e| newest(&e.path())).max()
}

fn npm(args: &[&str]) -> Result<(), String> {
    let status = Command::new("npm")
        .args(args)
        .current_dir("web")
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`npm {}` failed ({status})", args.join(" "))) }
}

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-changed=web/dist/index.html");
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_SKIP_WEB_BUILD");
    if !Path::new("web/package.json").exists() {
        return;
    }
    let built = newest(Path::new("web/dist/index.html"));
    let sources = SOURCES.iter().filter_map(|s| newest(Path::new(s))).max();
    let stale = match (built, sources) {
        (None, _) => true,
        (Some(built), Some(sources)) => sources > built,
        (Some(_), None) => false,
    };
    if !stale {
        return;
    }
    if std::env::var("SWITCHBOARD_SKIP_WEB_BUILD").as_deref() == Ok("1") {
        println!(
            "cargo:warning=web client assets are missing or stale; not built (SWITCHBOARD_SKIP_WEB_BUILD=1)"
        );
        return;
    }
    let result = (|| {
        if !Path::new("web/node_modules").exists() {
            npm(&["ci", "--no-audit", "--no-fund"])?;
        }
        npm(&["run", "build"])
    })();
    if let Err(e) = result {
        println!("cargo:warning=web client not built ({e}); run `scripts/web build` (needs Node.js and npm)");
    }
}
