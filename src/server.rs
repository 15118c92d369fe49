//! Sockets, connections and graceful shutdown; knows nothing about SP-API.
//!
//! Every connection is watched: a client gets `header_read` to send a request's headers
//! (counted from its first byte, or from the connection on a new one) and `client_idle`
//! between requests, and at most `max_connections` are open at once. Past the cap, the idlest
//! connection without a request in flight is closed to make room; if every connection is busy,
//! the newcomer is closed. So silent or slow clients cannot hold every file descriptor.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::body::{BoxError, ProxyBody};
use crate::config::Config;
use crate::proxy::Proxy;

/// What the server needs to know, taken from the config once.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// How long in-flight requests may run on after shutdown starts.
    pub grace: Duration,
    /// Time allowed for a request's headers.
    pub header_read: Duration,
    /// Time allowed between requests on a keep-alive connection.
    pub client_idle: Duration,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Serve h2c (HTTP/2 with prior knowledge) besides HTTP/1.1.
    pub h2c: bool,
}

impl ServerSettings {
    /// The settings in `config`; without `max_connections`, the cap comes from the current
    /// file-descriptor limit less a reserve for upstream and token connections.
    pub fn from_config(config: &Config) -> ServerSettings {
        ServerSettings {
            grace: config.timeouts.shutdown_grace,
            header_read: config.timeouts.header_read,
            client_idle: config.timeouts.client_idle,
            max_connections: config
                .max_connections
                .unwrap_or_else(default_max_connections),
            h2c: config.h2c,
        }
    }
}

/// The soft `RLIMIT_NOFILE` less an eighth (at least 64) for upstream, token and log files.
pub fn default_max_connections() -> usize {
    let soft = fd_soft_limit();
    soft.saturating_sub((soft / 8).max(64)).max(16)
}

/// The soft `RLIMIT_NOFILE` now (1,024 if it cannot be read; at most 2^20).
pub fn fd_soft_limit() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft).unwrap_or(usize::MAX).min(1 << 20)
}

/// Raises the soft file-descriptor limit to the hard one, so the cap can be as high as the
/// system allows; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the file-descriptor limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// Serves `proxy` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish for up to `settings.grace` before returning.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    settings: ServerSettings,
) {
    // hyper's default limit (100 request headers; more is a 431) is kept on purpose: setting
    // `max_headers` explicitly, even to 100, makes hyper fill a heap vector per request
    // instead of using its stack array (1,700 instructions per request, measured).
    let builder = Arc::new(if settings.h2c {
        Http::Auto(auto::Builder::new(TokioExecutor::new()))
    } else {
        Http::One({
            let mut b = hyper::server::conn::http1::Builder::new();
            // An SP-API answer is a small head and a small body: copying the body behind the
            // head and writing once costs less than queueing both for `writev` (400
            // instructions per request, measured; 1 GiB still streams at the same pace).
            b.writev(false);
            b
        })
    });
    let settings = Arc::new(settings);
    let registry = Arc::new(Registry::default());
    // One sweeper closes the connections whose header_read or client_idle passed, instead of a
    // timer in every connection's task that the task polls on every wake-up.
    tokio::spawn(sweep(Arc::downgrade(&registry), Arc::clone(&settings)));
    // Each connection task holds a sender; when all are gone, every connection has ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning while descriptors free up.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !registry.make_room(settings.max_connections) {
                    tracing::warn!(%peer, max = settings.max_connections, "every connection is busy; closing the new one");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let conn = registry.add();
                tokio::spawn(serve_connection(
                    stream,
                    Arc::clone(&proxy),
                    Arc::clone(&builder),
                    conn,
                    Arc::clone(&registry),
                    done_tx.clone(),
                ));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        grace = ?settings.grace,
        "shutting down: no new connections; finishing in-flight requests"
    );
    registry.stop_all();
    drop(done_tx);
    tokio::select! {
        _ = done_rx.recv() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.grace) => tracing::warn!("grace period over; dropping remaining connections"),
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one connection task's parts, passed once"
)]
async fn serve_connection(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    builder: Arc<Http>,
    state: Arc<ConnState>,
    registry: Arc<Registry>,
    _done: mpsc::Sender<()>,
) {
    let io = TokioIo::new(Watched {
        inner: stream,
        state: Arc::clone(&state),
    });
    let service_state = Arc::clone(&state);
    let service = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        let state = Arc::clone(&service_state);
        state.request_started();
        async move {
            // Boxed: hyper keeps room for one request's future in every connection, idle or
            // not, and this one is several KiB; boxed, an idle connection holds a pointer.
            let response = crate::boxed!(proxy.handle(req)).await;
            let (parts, body) = response.into_parts();
            let body = InFlight {
                body,
                _guard: RequestGuard(state),
            };
            Ok::<_, Infallible>(hyper::Response::from_parts(parts, body))
        }
    });
    match &*builder {
        Http::One(b) => drive(b.serve_connection(io, service), &state).await,
        Http::Auto(b) => drive(b.serve_connection(io, service), &state).await,
    }
    registry.remove(state.id);
}

/// How connections are served: hyper's HTTP/1 connection directly, or, with `h2c`, hyper-util's
/// version-sniffing one. The direct one skips the sniffing buffer every read goes through
/// otherwise (about 1,000 instructions per request, measured).
enum Http {
    One(hyper::server::conn::http1::Builder),
    Auto(auto::Builder<TokioExecutor>),
}

/// A served connection that can be told to finish what is in flight and close.
trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    type Error = hyper::Error;
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for auto::Connection<'_, I, S, TokioExecutor>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    type Error = BoxError;
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs one connection to its end: closes it when told to (its header_read or client_idle
/// passed, or the cap needs its place), or gracefully on shutdown. On every wake-up the task
/// registers its waker where [`ConnState::tell`] finds it and looks at one atomic word, then
/// polls the connection (a `Notify` future in a `select!` cost 150 instructions per request).
async fn drive<C: Graceful>(conn: C, state: &ConnState) {
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    std::future::poll_fn(|cx| {
        // Registered before the word is read, so a word told in between still wakes us.
        state.waker.register(cx.waker());
        match state.why.load(Ordering::Acquire) {
            // Shutdown: finish what is in flight (told before this connection started, too).
            STOP if !stopping => {
                stopping = true;
                conn.as_mut().graceful();
            }
            CLOSE => {
                tracing::debug!("closing a client connection: header_read or client_idle passed, or its place was needed");
                return Poll::Ready(());
            }
            _ => {}
        }
        conn.as_mut().poll(cx).map(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        })
    })
    .await;
}

/// Closes the connections whose time is up, every `tick` (a twentieth of the shorter of
/// header_read and client_idle, between 10 and 125 ms). Connections note the tick they were
/// active in, not the time (a clock reading per read and per request cost 170 instructions
/// per request); the sweep after that tick stands its own time for it, which is never
/// earlier than the activity. So a timeout fires at most two ticks late, never early.
/// Ends with the server.
async fn sweep(registry: std::sync::Weak<Registry>, settings: Arc<ServerSettings>) {
    let tick = (settings.header_read.min(settings.client_idle) / 20)
        .clamp(Duration::from_millis(10), Duration::from_millis(125));
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        registry.sweep(&settings);
    }
}

/// The sweeper's tick count, which connections note instead of the time. It starts at 1, so
/// 0 means "never".
struct Ticks(AtomicU64);

impl Default for Ticks {
    fn default() -> Ticks {
        Ticks(AtomicU64::new(1))
    }
}

impl Ticks {
    fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Starts a new tick; returns it. Notes taken before this call carry an older number.
    fn advance(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// Open connections, for the cap.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    ticks: Arc<Ticks>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self) -> Arc<ConnState> {
        let state = Arc::new(ConnState::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            Arc::clone(&self.ticks),
        ));
        self.lock().insert(state.id, Arc::clone(&state));
        crate::metrics::metrics().client_connections.inc();
        state
    }

    fn remove(&self, id: u64) {
        if self.lock().remove(&id).is_some() {
            crate::metrics::metrics().client_connections.dec();
        }
    }

    /// One sweep: a new tick begins, then every connection whose time is up is told to close.
    fn sweep(&self, settings: &ServerSettings) {
        let tick = self.ticks.advance();
        let now = Instant::now();
        for c in self.lock().values() {
            if c.why.load(Ordering::Acquire) == NONE && c.expired(settings, now, tick) {
                c.tell(CLOSE);
            }
        }
    }

    /// Shutdown: every connection finishes what is in flight, then closes.
    fn stop_all(&self) {
        for c in self.lock().values() {
            c.tell(STOP);
        }
    }

    /// Below the cap, or an idle connection was told to close (the idlest, and not one
    /// already told): the newcomer may be served.
    fn make_room(&self, max: usize) -> bool {
        let open = self.lock();
        let closing = open
            .values()
            .filter(|c| c.shedding.load(Ordering::Relaxed) == 1)
            .count();
        if open.len().saturating_sub(closing) < max {
            return true;
        }
        let idlest = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .filter(|c| c.shedding.load(Ordering::Relaxed) == 0)
            .min_by_key(|c| c.last_active());
        match idlest {
            Some(c) => {
                c.shedding.store(1, Ordering::Relaxed);
                c.tell(CLOSE);
                true
            }
            None => false,
        }
    }
}

/// What the watchdog knows about one connection. The connection notes ticks ([`Ticks`]);
/// the sweeper turns each newly noted tick into a time (milliseconds since `epoch`).
struct ConnState {
    id: u64,
    epoch: Instant,
    ticks: Arc<Ticks>,
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// The tick in which a request last finished or bytes last arrived (0: never).
    active: Noted,
    /// The tick in which the first byte of a request head arrived while no request was in
    /// flight (0: no head under way).
    head: Noted,
    shedding: AtomicU64,
    /// What the connection was told: [`NONE`], [`CLOSE`] or [`STOP`]; `waker` wakes it.
    why: AtomicU8,
    waker: futures_util::task::AtomicWaker,
}

/// A tick a connection noted, and the time the sweeper stood for it.
#[derive(Default)]
struct Noted {
    /// Written by the connection.
    tick: AtomicU64,
    /// Written by the sweeper: the tick it last turned into `ms`.
    seen: AtomicU64,
    ms: AtomicU64,
}

impl Noted {
    /// The time of the noted tick, as of the sweep of tick `current` at `now_ms`: a tick noted
    /// before this sweep began is stood for by the first sweep that sees it (its activity came
    /// before that sweep's tick began, so before its time); `None` for a tick noted during
    /// this sweep, which may be later than `now_ms`.
    fn time(&self, current: u64, now_ms: u64) -> Option<u64> {
        let tick = self.tick.load(Ordering::Acquire);
        if tick == current {
            return None;
        }
        if tick != self.seen.load(Ordering::Relaxed) {
            self.seen.store(tick, Ordering::Relaxed);
            self.ms.store(now_ms, Ordering::Relaxed);
        }
        Some(self.ms.load(Ordering::Relaxed))
    }
}

/// Nothing to do.
const NONE: u8 = 0;
/// Close now: header_read or client_idle passed, or the cap needs the place.
const CLOSE: u8 = 1;
/// Shutdown: finish what is in flight, then close.
const STOP: u8 = 2;

impl ConnState {
    fn new(id: u64, ticks: Arc<Ticks>) -> ConnState {
        ConnState {
            id,
            epoch: Instant::now(),
            ticks,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            active: Noted::default(),
            head: Noted::default(),
            shedding: AtomicU64::new(0),
            why: AtomicU8::new(NONE),
            waker: futures_util::task::AtomicWaker::new(),
        }
    }

    /// Tells the connection `why` (a first word only: STOP does not undo CLOSE, and the other
    /// way round) and wakes it.
    fn tell(&self, why: u8) {
        if self
            .why
            .compare_exchange(NONE, why, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    fn bytes_read(&self) {
        let tick = self.ticks.current();
        self.active.tick.store(tick, Ordering::Release);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self
                .head
                .tick
                .compare_exchange(0, tick, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.head.tick.store(0, Ordering::Release);
    }

    fn request_finished(&self) {
        self.active
            .tick
            .store(self.ticks.current(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// For the cap: when the connection was last active, as far as the sweeper has told
    /// (activity it has not seen yet counts as the latest).
    fn last_active(&self) -> u64 {
        if self.active.tick.load(Ordering::Acquire) != self.active.seen.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        self.active.ms.load(Ordering::Relaxed)
    }

    /// Whether the connection has had its time, as of the sweep of tick `current` at `now`:
    /// no request in flight, and past its deadline (header_read from the connection's start
    /// or from a head's first byte; client_idle from the last activity).
    fn expired(&self, s: &ServerSettings, now: Instant, current: u64) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let now_ms = ms(now.saturating_duration_since(self.epoch));
        let deadline = if self.head.tick.load(Ordering::Acquire) != 0 {
            match self.head.time(current, now_ms) {
                Some(started) => started.saturating_add(ms(s.header_read)),
                None => return false,
            }
        } else if self.requests.load(Ordering::Relaxed) == 0 {
            ms(s.header_read)
        } else {
            match self.active.time(current, now_ms) {
                Some(active) => active.saturating_add(ms(s.client_idle)),
                None => return false,
            }
        };
        now_ms >= deadline
    }
}

/// The client's socket, noting when bytes arrive.
struct Watched {
    inner: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks a request finished when its response body is done (or dropped).
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct InFlight {
    body: ProxyBody,
    _guard: RequestGuard,
}

impl Body for InFlight {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what `docker stop` sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServerSettings {
        ServerSettings {
            grace: Duration::from_secs(1),
            header_read: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            max_connections: 2,
            h2c: false,
        }
    }

    /// One connection and the sweeps that watch it, on the paused clock.
    struct Watch {
        ticks: Arc<Ticks>,
        c: ConnState,
    }

    impl Watch {
        fn new() -> Watch {
            let ticks = Arc::new(Ticks::default());
            let c = ConnState::new(1, Arc::clone(&ticks));
            Watch { ticks, c }
        }

        /// A sweep now: whether it finds the connection's time up.
        fn sweep(&self) -> bool {
            let tick = self.ticks.advance();
            self.c.expired(&settings(), Instant::now(), tick)
        }

        /// Sweeps every `tick` for `d`; whether any found the time up.
        async fn sweep_for(&self, d: Duration, tick: Duration) -> bool {
            let mut expired = false;
            let end = Instant::now() + d;
            while Instant::now() < end {
                tokio::time::advance(tick.min(end - Instant::now())).await;
                expired |= self.sweep();
            }
            expired
        }
    }

    const TICK: Duration = Duration::from_millis(100);

    #[tokio::test(start_paused = true)]
    async fn a_silent_new_connection_gets_header_read() {
        let w = Watch::new();
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(!w.sweep());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(w.sweep());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_gets_header_read_from_its_first_byte() {
        let w = Watch::new();
        w.c.request_started();
        w.c.request_finished();
        assert!(!w.sweep_for(Duration::from_secs(30), TICK).await);
        w.c.bytes_read();
        assert!(!w.sweep_for(Duration::from_secs(9), TICK).await);
        w.c.bytes_read();
        assert!(
            !w.sweep_for(Duration::from_millis(900), TICK).await,
            "a byte a second does not reset the clock, and nothing fires early"
        );
        assert!(
            w.sweep_for(Duration::from_millis(200), TICK).await,
            "fired within two ticks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_gets_client_idle_and_busy_never_expires() {
        let w = Watch::new();
        w.c.request_started();
        assert!(
            !w.sweep_for(Duration::from_secs(600), TICK).await,
            "a long request is not idle"
        );
        w.c.request_finished();
        assert!(!w.sweep_for(Duration::from_secs(60), TICK).await);
        assert!(w.sweep_for(Duration::from_millis(200), TICK).await);
    }

    /// A request that ends while a sweep runs is not dated by that sweep's earlier time (which
    /// would close the connection 5 s early here), but by the next sweep's.
    #[tokio::test(start_paused = true)]
    async fn activity_is_never_dated_before_it_happened() {
        let w = Watch::new();
        w.c.request_started();
        w.c.request_finished();
        assert!(!w.sweep());
        tokio::time::advance(Duration::from_secs(30)).await;
        // A sweep begins (its tick and time taken) ...
        let tick = w.ticks.advance();
        let then = Instant::now();
        // ... a request runs for 5 s and ends ...
        w.c.request_started();
        tokio::time::advance(Duration::from_secs(5)).await;
        w.c.request_finished();
        // ... and only then does the sweep reach this connection.
        assert!(!w.c.expired(&settings(), then, tick));
        assert!(!w.sweep_for(Duration::from_millis(59_900), TICK).await);
        assert!(w.sweep_for(Duration::from_millis(200), TICK).await);
    }

    /// The sweeper tells each connection when its time is up, within two ticks (here 125 ms:
    /// header_read 10 s, client_idle 60 s), and never a busy one; shutdown tells them all.
    #[tokio::test(start_paused = true)]
    async fn the_sweeper_closes_what_expired_within_two_ticks() {
        let r = Arc::new(Registry::default());
        let s = Arc::new(settings());
        let silent = r.add();
        let busy = r.add();
        busy.request_started();
        let idle = r.add();
        idle.request_started();
        idle.request_finished();
        tokio::spawn(sweep(Arc::downgrade(&r), Arc::clone(&s)));
        let why = |c: &ConnState| c.why.load(Ordering::Acquire);
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert_eq!(why(&silent), NONE, "header_read is 10 s");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(why(&silent), CLOSE);
        // A head started between requests gets header_read from its first byte.
        idle.bytes_read();
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert_eq!(why(&idle), NONE);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(why(&idle), CLOSE);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(why(&busy), NONE, "a request in flight is never cut");
        r.stop_all();
        assert_eq!(why(&busy), STOP);
        assert_eq!(why(&silent), CLOSE, "a close already told stands");
    }

    #[test]
    fn past_the_cap_the_idlest_idle_connection_is_shed() {
        let r = Registry::default();
        let busy = r.add();
        busy.request_started();
        let idle = r.add();
        assert!(r.make_room(2), "sheds the idle one");
        assert_eq!(idle.shedding.load(Ordering::Relaxed), 1);
        assert_eq!(busy.shedding.load(Ordering::Relaxed), 0);
        let newcomer = r.add();
        newcomer.request_started();
        assert!(!r.make_room(2), "the rest are busy");
        r.remove(idle.id);
        assert!(!r.make_room(2), "still two busy ones");
        newcomer.request_finished();
        assert!(r.make_room(2));
        assert_eq!(newcomer.shedding.load(Ordering::Relaxed), 1);
    }
}
