//! 100 MiB bodies stream through the proxy in both directions, intact and without buffering.
//!
//! A binary of its own so that the memory it measures belongs to this test alone.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use spapi_proxy::sim::{hex, pattern_byte};

use support::{json, Harness};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: u64 = 256 * 1024;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples RSS every few milliseconds until dropped; reports the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl RssWatch {
    fn start() -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        RssWatch { peak, done }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// `size` bytes of the simulator's pattern, in chunks.
fn pattern_chunks(size: u64) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter((0..size.div_ceil(CHUNK)).map(move |i| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(size);
        Ok(Bytes::from(
            (start..end).map(pattern_byte).collect::<Vec<u8>>(),
        ))
    }))
}

/// The SHA-256 of the pattern's first `size` bytes.
fn expected_sha(size: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(CHUNK as usize);
    let mut start = 0;
    while start < size {
        let end = (start + CHUNK).min(size);
        buf.clear();
        buf.extend((start..end).map(pattern_byte));
        h.update(&buf);
        start = end;
    }
    hex(&h.finalize())
}

/// Reads a response to its end: its SHA-256, its length, and when its first byte came.
async fn read_through(
    resp: reqwest::Response,
    started: Instant,
) -> (String, u64, Option<std::time::Duration>) {
    let mut stream = resp.bytes_stream();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut first_byte = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        first_byte.get_or_insert_with(|| started.elapsed());
        total += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (hex(&hasher.finalize()), total, first_byte)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_bodies_stream_through_intact_with_flat_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start().await;
    let want = expected_sha(SIZE);
    // Warm up: the token, the connection pools, the allocator's arenas.
    assert_eq!(h.get("/_sim/bytes?size=1048576").await.status(), 200);
    let baseline = rss_bytes();
    let watch = RssWatch::start();

    // Upload, chunked (no length known in advance).
    let started = Instant::now();
    let resp = h
        .client
        .put(h.url("/_sim/sha256"))
        .body(reqwest::Body::wrap_stream(pattern_chunks(SIZE)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = json(resp).await;
    let upload = started.elapsed();
    assert_eq!(got["bytes"], SIZE);
    assert_eq!(got["sha256"], want.as_str());

    // Download.
    let started = Instant::now();
    let resp = h.get(&format!("/_sim/bytes?size={SIZE}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(SIZE));
    let (sha, total, first_byte) = read_through(resp, started).await;
    let download = started.elapsed();
    assert_eq!(total, SIZE);
    assert_eq!(sha, want);

    let peak = watch.peak();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "streaming: upload {upload:?}, download {download:?}, first byte after {:?}, \
         RSS baseline {} MiB, peak {} MiB (+{} MiB) for 2 x 100 MiB",
        first_byte.unwrap(),
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    // Buffering either body would add at least 100 MiB; streaming adds a few chunks.
    assert!(
        growth < 40 * 1024 * 1024,
        "RSS grew by {} MiB while streaming",
        growth >> 20
    );
}

/// The memory tests measure this process's RSS: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Issue 20: a 200 MiB (decompressed) gzipped report comes through `/_proxy/reports/ID/document`
/// decompressed as it streams: RSS grows by less than 10 MB, the bytes are exactly the
/// document's, and the first byte comes long before the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_gzip_report_streams_through_decompressed_with_flat_memory() {
    use spapi_proxy::sim::documents::{big_report_block, BIG_REPORT, BIG_REPORT_BLOCKS};
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start().await;
    let mut want = Sha256::new();
    for _ in 0..BIG_REPORT_BLOCKS {
        want.update(big_report_block());
    }
    let want = hex(&want.finalize());
    // Warm up: the token, the pools, the simulator's compressed block, the allocator.
    assert_eq!(h.get("/_proxy/reports/50001/document").await.status(), 200);
    let warm = h
        .get(&format!("/_proxy/reports/{BIG_REPORT}/document"))
        .await;
    let mut warm = warm.bytes_stream();
    let _ = warm.next().await;
    drop(warm);
    // Amazon's own calls and the document host's first byte, directly, for comparison.
    let started = Instant::now();
    assert_eq!(
        h.get(&format!("/reports/2021-06-30/reports/{BIG_REPORT}"))
            .await
            .status(),
        200
    );
    let doc = json(
        h.get(&format!(
            "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.{BIG_REPORT}"
        ))
        .await,
    )
    .await;
    let amazon_calls = started.elapsed();
    let host = reqwest::Client::new();
    let started = Instant::now();
    let direct = host.get(doc["url"].as_str().unwrap()).send().await.unwrap();
    let mut direct = direct.bytes_stream();
    let _ = direct.next().await;
    let host_first_byte = started.elapsed();
    drop(direct);

    let baseline = rss_bytes();
    let watch = RssWatch::start();
    let started = Instant::now();
    let resp = h
        .get(&format!("/_proxy/reports/{BIG_REPORT}/document"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-spapi-document-compression"], "GZIP");
    let (sha, total, first_byte) = read_through(resp, started).await;
    let whole = started.elapsed();
    let first_byte = first_byte.unwrap();
    assert_eq!(total, (BIG_REPORT_BLOCKS as u64) << 20);
    assert_eq!(sha, want);
    let growth = watch.peak().saturating_sub(baseline);
    eprintln!(
        "report document: 200 MiB decompressed in {whole:?}; first byte after {first_byte:?} \
         (Amazon's two calls {amazon_calls:?} + the document host's first byte \
         {host_first_byte:?}, directly); RSS +{:.1} MiB",
        growth as f64 / f64::from(1 << 20)
    );
    assert!(
        growth < 10_000_000,
        "RSS grew by {growth} bytes while a report streamed"
    );
    // Nothing waits for the whole document before the first byte goes out.
    assert!(
        first_byte * 4 < whole,
        "first byte {first_byte:?} of {whole:?}"
    );
}

/// Issue 20: a 50 MiB feed goes up through `POST /_proxy/feeds` streamed: the document host
/// receives exactly the bytes and the content type, and RSS grows by less than 10 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_feed_streams_up_with_flat_memory() {
    const FEED: u64 = 50 * 1024 * 1024;
    let _one = ONE_AT_A_TIME.lock().await;
    let h = Harness::start().await;
    let want = expected_sha(FEED);
    let url =
        h.url("/_proxy/feeds?feedType=POST_FLAT_FILE_LISTINGS_DATA&marketplaceIds=ATVPDKIKX0DER");
    // Warm up with a small feed.
    let warm = h
        .client
        .post(&url)
        .header("content-type", "text/tab-separated-values; charset=UTF-8")
        .body("sku\tquantity\n")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 202);

    let baseline = rss_bytes();
    let watch = RssWatch::start();
    let started = Instant::now();
    let resp = h
        .client
        .post(&url)
        .header("content-type", "text/tab-separated-values; charset=UTF-8")
        .header("content-length", FEED)
        .body(reqwest::Body::wrap_stream(pattern_chunks(FEED)))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let growth = watch.peak().saturating_sub(baseline);
    let uploads = h.sim.uploads();
    let upload = uploads
        .iter()
        .find(|u| u.bytes == FEED)
        .expect("the 50 MiB upload reached the document host");
    assert_eq!(upload.sha256, want);
    assert_eq!(
        upload.content_type,
        "text/tab-separated-values; charset=UTF-8"
    );
    eprintln!(
        "feed upload: 50 MiB in {took:?}; RSS +{:.1} MiB",
        growth as f64 / f64::from(1 << 20)
    );
    assert!(
        growth < 10_000_000,
        "RSS grew by {growth} bytes while a feed streamed"
    );
}
