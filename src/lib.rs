//! spapi-proxy: a transparent signing reverse proxy for the Amazon Selling Partner API.
//!
//! # Layout
//!
//! - [`config`]: `proxy.toml` and the environment, validated into a [`config::Config`].
//! - [`server`]: sockets, connections (timeouts, the connection cap), graceful shutdown.
//! - [`access`]: who may act through the proxy: inbound keys, `Host`, browsers.
//! - [`proxy`]: the request pipeline; every error becomes a response here. Its `admin`
//!   module holds the `/_proxy/*` endpoints, one file each; `state` the reloadable state and
//!   the reload; `upstream` the request body, sending, and Amazon's answer; `documents` the
//!   reports and feeds flows, whose SP-API calls go through the same pipeline.
//! - [`operations`]: the SP-API operation catalog and the (method, path) matcher.
//! - [`limiter`]: token buckets per operation, the wait queue, the pacing policy, and the
//!   store seam under the buckets.
//! - [`shared`]: what replicas share through Redis (`shared_state`): buckets as a Lua pacing
//!   step, tokens encrypted with a fetch lock, and the fallback while Redis is away.
//! - [`auth`]: which token a request carries: LWA ([`auth::lwa`]), RDT ([`auth::rdt`]),
//!   grantless ([`auth::grantless`]).
//! - [`forward`]: the upstream side: header hygiene, signing headers, the pooled client.
//! - [`error`]: the error enum and its one status mapping.
//! - [`logging`]: the log format (one line per request is on the request path).
//! - [`explain`]: the `operations` and `explain` commands.
//! - [`sim`]: a local SP-API and LWA simulator for `demo` and the tests.
//! - [`target`]: request-target rules, so that what is matched is what Amazon receives.
//! - [`transcode`]: gunzip and charset decoding of documents as they stream.
//! - [`secret`], [`body`]: small shared types.
//!
//! # Request path
//!
//! ```text
//! server::serve  accept -> hyper connection (watched for graceful shutdown) -> Proxy::handle
//! Proxy::handle  Proxy::admit: target::check (one target, one meaning), access (Host, Origin,
//!                inbound key); then /_proxy/* -> own endpoints; otherwise
//!                operations::Catalog::find, then Proxy::proxy:
//!   0. unknown operation: forward under the shared bucket, or 404 if configured to reject
//!   1. auth::plan     LWA, RDT (path, dataElements, what a role refusal leads to) or grantless
//!                     scope; bad input is a 400 here
//!   2. read_body      small bodies are held so the request can be replayed
//!   3. limiter        precheck: a full queue or a wait past max_wait is a 429 now
//!   4. auth::token    the cached token (single-flight fetch/mint), filled before queueing; an
//!                     RDT refused for lack of a role falls back to LWA where PII is optional
//!   5. limiter        wait our turn in the operation's bucket (FIFO, max_wait)
//!   6. forward::send  signing headers set, path and query byte for byte, bodies streamed;
//!                     x-amzn-RateLimit-Limit adapts the bucket
//!   7. on 403 "token expired/revoked": drop the token, get a new one, replay once
//!   8. on Amazon's 429: slow the bucket, retry safe methods after waiting for quota
//!   9. getReport(s) answers teach which report documents are restricted
//!  10. Amazon's response back untouched (hop-by-hop headers aside) + x-spapi-proxy-queued-ms
//!      (+ x-spapi-proxy-pii where personal data is optional)
//! ```

#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod body;
pub mod commands;
pub mod config;
pub mod error;
pub mod forward;
pub mod key;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod operations;
pub mod proxy;
pub mod region;
pub mod secret;
pub mod server;
pub mod shared;
pub mod sim;
pub mod status_page;
pub mod target;
pub mod transcode;

/// `Box::pin(future)` without the copy: `Box::pin` builds the future on the stack and copies
/// all of it, every state's room included, into the box (the request's future is several KiB:
/// about 500 instructions per request, measured); written into an uninitialised box, only its
/// few initial fields are stored. A macro, because passing the future to a function copies it
/// just the same, even inlined (measured).
macro_rules! boxed {
    ($future:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $future))
    };
}
pub(crate) use boxed;

/// `m` locked, even if a thread panicked while holding it: what it guards (caches, queues,
/// waiting log lines) stays usable, and a panic is not passed on to every later user.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
