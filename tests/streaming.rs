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

fn pattern_chunks() -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter((0..SIZE.div_ceil(CHUNK)).map(|i| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(SIZE);
        Ok(Bytes::from(
            (start..end).map(pattern_byte).collect::<Vec<u8>>(),
        ))
    }))
}

fn expected_sha() -> String {
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(CHUNK as usize);
    let mut start = 0;
    while start < SIZE {
        let end = (start + CHUNK).min(SIZE);
        buf.clear();
        buf.extend((start..end).map(pattern_byte));
        h.update(&buf);
        start = end;
    }
    hex(&h.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_bodies_stream_through_intact_with_flat_memory() {
    let h = Harness::start().await;
    let want = expected_sha();
    // Warm up: the token, the connection pools, the allocator's arenas.
    assert_eq!(h.get("/_sim/bytes?size=1048576").await.status(), 200);
    let baseline = rss_bytes();
    let watch = RssWatch::start();

    // Upload, chunked (no length known in advance).
    let started = Instant::now();
    let resp = h
        .client
        .put(h.url("/_sim/sha256"))
        .body(reqwest::Body::wrap_stream(pattern_chunks()))
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
    let download = started.elapsed();
    assert_eq!(total, SIZE);
    assert_eq!(hex(&hasher.finalize()), want);

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
