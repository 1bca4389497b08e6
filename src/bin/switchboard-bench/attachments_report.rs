//! S10's results: the record of one blob backend (`AttachmentsResult`: upload and download
//! MiB/s of one file through the server, the same bytes put and read straight from the blob
//! store without encryption, and the server's RSS during concurrent uploads), its verdict and
//! the memory expectation, and the S10 section of `summary.md`. The scenario is
//! `attachments.rs`.

use crate::report::{Check, Counts, counts_line};
use crate::scenarios::report_name;
use crate::target::Kind;
use serde::Serialize;
use std::fmt::Write;

const MIB: f64 = 1024.0 * 1024.0;

/// MiB/s of `bytes` moved in `secs`.
pub fn mib_per_sec(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB / secs.max(1e-9)
}

/// The median of a few samples (the lower middle one of an even count); 0 when empty.
pub fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// Repeated measurements of one transfer: MiB/s of each, and their median.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Rates {
    pub mib_per_sec: Vec<f64>,
    pub median_mib_per_sec: f64,
    /// Server CPU seconds (user + system) each transfer took, when the server took part.
    pub server_cpu_secs: Vec<f64>,
    /// CPU seconds of the S3 server's process (s3s-fs) each transfer took, when known.
    pub store_cpu_secs: Vec<f64>,
}

impl Rates {
    pub fn push(&mut self, bytes: u64, secs: f64, server_cpu: Option<f64>, store_cpu: Option<f64>) {
        self.mib_per_sec.push(mib_per_sec(bytes, secs));
        self.median_mib_per_sec = median(&self.mib_per_sec);
        self.server_cpu_secs.extend(server_cpu);
        self.store_cpu_secs.extend(store_cpu);
    }

    /// `123.4 MiB/s (120.1, 123.4, 130.2)`.
    fn cell(&self) -> String {
        if self.mib_per_sec.is_empty() {
            return "—".into();
        }
        let each: Vec<String> = self.mib_per_sec.iter().map(|v| format!("{v:.1}")).collect();
        format!("{:.1} ({})", self.median_mib_per_sec, each.join(", "))
    }

    fn cpu_cell(samples: &[f64]) -> String {
        if samples.is_empty() { "—".into() } else { format!("{:.2}", median(samples)) }
    }
}

/// The same bytes through the blob store directly, in the generator's process: no server, no
/// encryption, no hashing.
#[derive(Serialize, Clone, Debug, Default)]
pub struct RawStore {
    /// Where the objects went: a directory on the server's filesystem, or the S3 bucket.
    pub location: String,
    /// One `put` of the whole object.
    pub put: Rates,
    /// `create_multipart`, 5 MiB `put_part`s, `complete_multipart`: the server's write path.
    pub multipart_put: Rates,
    /// `get_range` of the whole object, streamed into memory.
    pub get: Rates,
    /// Reads whose bytes equalled what was written (SHA-256).
    pub gets_verified: usize,
}

/// Concurrent uploads of the same file and the server's RSS meanwhile.
#[derive(Serialize, Clone, Debug, Default)]
pub struct ConcurrentUploads {
    pub uploads: usize,
    pub succeeded: usize,
    pub failures: Counts,
    pub wall_secs: f64,
    /// Bytes of the successful uploads over the wall time from the first request to the last
    /// answer.
    pub aggregate_mib_per_sec: f64,
    /// Each upload's own time, seconds: fastest and slowest.
    pub upload_secs_min: f64,
    pub upload_secs_max: f64,
    pub server_cpu_secs: f64,
    pub store_cpu_secs: Option<f64>,
    /// Just before the first request (after the single-file measurements and a pause).
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_peak_at_secs: f64,
    /// A pause after the last answer.
    pub rss_after_kib: u64,
    /// (peak − before) / uploads.
    pub rss_rise_per_upload_kib: f64,
    pub sample_interval_ms: u64,
    /// (seconds since the first request, RSS KiB).
    pub rss_samples: Vec<(f64, u64)>,
}

/// S10 on one blob backend.
#[derive(Serialize, Debug)]
pub struct AttachmentsResult {
    pub target: Kind,
    /// `local` or `s3`.
    pub backend: String,
    /// The S3 endpoint (no credentials); null for local.
    pub s3_endpoint: Option<String>,
    pub file_bytes: u64,
    /// Right after the server started and the users registered.
    pub rss_start_kib: u64,
    /// One POST with the whole body, streamed from the generator's memory; until the answer
    /// (the upload sealed, stored, completed and recorded).
    pub upload: Rates,
    /// GET of the whole file by the other member after it was sent in a message, until the
    /// last byte.
    pub download: Rates,
    /// Downloads whose bytes equalled the upload (SHA-256), and uploads whose hash the server
    /// reported right.
    pub downloads_verified: usize,
    pub uploads_hash_matched: usize,
    pub raw: RawStore,
    /// One round of concurrent uploads after another, on the same server.
    pub concurrent: Vec<ConcurrentUploads>,
    /// The memory expectations (notes, not the verdict).
    pub expectations: Vec<Check>,
    /// Valid: every upload and download succeeded, every byte came back as uploaded, and the
    /// raw store's reads matched.
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
}

impl AttachmentsResult {
    pub fn judge(&mut self, repeats: usize) {
        let mut reasons = Vec::new();
        if self.upload.mib_per_sec.len() != repeats {
            reasons.push(format!("{} of {repeats} single uploads succeeded", self.upload.mib_per_sec.len()));
        }
        if self.uploads_hash_matched != self.upload.mib_per_sec.len() {
            reasons.push(format!(
                "the server's SHA-256 differed from the file's for {} upload(s)",
                self.upload.mib_per_sec.len() - self.uploads_hash_matched
            ));
        }
        if self.download.mib_per_sec.len() != repeats {
            reasons.push(format!("{} of {repeats} downloads completed", self.download.mib_per_sec.len()));
        }
        if self.downloads_verified != self.download.mib_per_sec.len() {
            reasons.push(format!(
                "{} download(s) differed from the upload (SHA-256)",
                self.download.mib_per_sec.len() - self.downloads_verified
            ));
        }
        if self.raw.gets_verified != self.raw.get.mib_per_sec.len() {
            reasons.push("a raw blob store read differed from what was written".into());
        }
        for (i, c) in self.concurrent.iter().enumerate() {
            if c.succeeded != c.uploads {
                reasons.push(format!(
                    "round {}: {} of {} concurrent uploads succeeded ({})",
                    i + 1,
                    c.succeeded,
                    c.uploads,
                    counts_line(&c.failures)
                ));
            }
        }
        self.valid = reasons.is_empty();
        self.invalid_reasons = reasons;
    }

    /// The memory expectation: streaming, not buffering. The server holds at most one
    /// 5 MiB part per upload plus its sealed copy; 32 MiB more is allowed for everything else.
    /// And a later round of uploads peaks no more than 32 MiB above the first (kept memory is
    /// reused, nothing accumulates).
    pub fn check_memory(&mut self, part_bytes: u64) {
        let Some(c) = self.concurrent.first() else { return };
        let rise = c.rss_peak_kib.saturating_sub(c.rss_before_kib);
        let bound = c.uploads as u64 * 2 * part_bytes / 1024 + 32 * 1024;
        let buffered = c.uploads as u64 * self.file_bytes / 1024;
        self.expectations.push(Check {
            name: format!("server RSS rise during {} concurrent uploads", c.uploads),
            expected: format!(
                "≤ {} (2 × {} MiB per upload + 32 MiB); buffering whole files would be {}",
                mib(bound),
                part_bytes / (1024 * 1024),
                mib(buffered)
            ),
            observed: format!("{} ({:.1} MiB per upload)", mib(rise), c.rss_rise_per_upload_kib / 1024.0),
            evaluated: c.succeeded > 0,
            met: rise <= bound,
        });
        if let Some(last) = self.concurrent.last().filter(|_| self.concurrent.len() > 1) {
            let (first, later) = (c.rss_peak_kib, last.rss_peak_kib);
            self.expectations.push(Check {
                name: format!("server RSS peak of round {} against round 1", self.concurrent.len()),
                expected: format!("≤ {} (round 1's peak + 32 MiB)", mib(first + 32 * 1024)),
                observed: mib(later),
                evaluated: last.succeeded > 0,
                met: later <= first + 32 * 1024,
            });
        }
    }

    pub fn one_line(&self) -> String {
        let rounds: Vec<String> = self
            .concurrent
            .iter()
            .map(|c| {
                format!(
                    "{} × {:.0} MiB concurrently: {} ok, {:.1} MiB/s, RSS {} → peak {} → {}",
                    c.uploads,
                    self.file_bytes as f64 / MIB,
                    c.succeeded,
                    c.aggregate_mib_per_sec,
                    mib(c.rss_before_kib),
                    mib(c.rss_peak_kib),
                    mib(c.rss_after_kib)
                )
            })
            .collect();
        format!(
            "{} {}: upload {:.1} MiB/s, download {:.1} MiB/s (verified {}/{}), raw put {:.1} / multipart put {:.1} / get {:.1} MiB/s; {}{}",
            if self.valid { "valid" } else { "INVALID" },
            self.backend,
            self.upload.median_mib_per_sec,
            self.download.median_mib_per_sec,
            self.downloads_verified,
            self.download.mib_per_sec.len(),
            self.raw.put.median_mib_per_sec,
            self.raw.multipart_put.median_mib_per_sec,
            self.raw.get.median_mib_per_sec,
            rounds.join("; "),
            if self.valid { String::new() } else { format!(" ({})", self.invalid_reasons.join("; ")) }
        )
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The S10 section of `summary.md`.
pub fn markdown(md: &mut String, rows: &[AttachmentsResult]) {
    let Some(first) = rows.first() else { return };
    let _ = writeln!(md, "\n## S10 attachments\n");
    let _ = writeln!(
        md,
        "One {:.0} MiB random file: uploaded {} times (one POST with the whole body), sent in a message, \
         downloaded {} times by the other member (SHA-256 checked); the same bytes put and read \
         straight from the blob store by the generator (no server, no encryption); then {} concurrent \
         uploads ({} round(s), one after another) with the server's RSS sampled every {} ms. MiB/s: \
         median (each run). Server pinned to one core, the generator to another; the S3 server \
         (s3s-fs) unpinned.\n",
        first.file_bytes as f64 / MIB,
        first.upload.mib_per_sec.len().max(first.download.mib_per_sec.len()),
        first.download.mib_per_sec.len(),
        first.concurrent.first().map_or(0, |c| c.uploads),
        first.concurrent.len(),
        first.concurrent.first().map_or(0, |c| c.sample_interval_ms)
    );
    let _ = writeln!(
        md,
        "| target | backend | upload MiB/s | download MiB/s | raw put MiB/s | raw multipart put MiB/s | raw get MiB/s | server CPU-s per upload / download | S3 server CPU-s per upload / download | verified | valid |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} of {} downloads, {} of {} server hashes | {} |",
            report_name(r.target),
            r.backend,
            r.upload.cell(),
            r.download.cell(),
            r.raw.put.cell(),
            r.raw.multipart_put.cell(),
            r.raw.get.cell(),
            Rates::cpu_cell(&r.upload.server_cpu_secs),
            Rates::cpu_cell(&r.download.server_cpu_secs),
            Rates::cpu_cell(&r.upload.store_cpu_secs),
            Rates::cpu_cell(&r.download.store_cpu_secs),
            r.downloads_verified,
            r.download.mib_per_sec.len(),
            r.uploads_hash_matched,
            r.upload.mib_per_sec.len(),
            if r.valid { "yes".into() } else { format!("**no**: {}", r.invalid_reasons.join("; ")) }
        );
    }
    let _ = writeln!(
        md,
        "\n| backend | round | concurrent uploads | succeeded | wall s | aggregate MiB/s | one upload s (min – max) | server CPU-s | S3 server CPU-s | RSS at start | RSS before | RSS peak (at s) | RSS after | rise per upload |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (r, (i, c)) in rows.iter().flat_map(|r| r.concurrent.iter().enumerate().map(move |c| (r, c))) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {}{} | {:.1} | {:.1} | {:.1} – {:.1} | {:.1} | {} | {} | {} | {} ({:.1}) | {} | {:.1} MiB |",
            r.backend,
            i + 1,
            c.uploads,
            c.succeeded,
            if c.failures.is_empty() { String::new() } else { format!(" ({})", counts_line(&c.failures)) },
            c.wall_secs,
            c.aggregate_mib_per_sec,
            c.upload_secs_min,
            c.upload_secs_max,
            c.server_cpu_secs,
            c.store_cpu_secs.map_or("—".into(), |v| format!("{v:.1}")),
            mib(r.rss_start_kib),
            mib(c.rss_before_kib),
            mib(c.rss_peak_kib),
            c.rss_peak_at_secs,
            mib(c.rss_after_kib),
            c.rss_rise_per_upload_kib / 1024.0
        );
    }
    let checks: Vec<(&str, &Check)> =
        rows.iter().flat_map(|r| r.expectations.iter().map(move |c| (r.backend.as_str(), c))).collect();
    if !checks.is_empty() {
        let _ = writeln!(md, "\n| backend | expectation | expected | observed | met |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for (backend, c) in checks {
            let met = if !c.evaluated {
                "n/a"
            } else if c.met {
                "yes"
            } else {
                "**no**"
            };
            let _ = writeln!(md, "| {backend} | {} | {} | {} | {met} |", c.name, c.expected, c.observed);
        }
    }
}
