//! Log output: a lean text format, because one line per request is on the request path.
//!
//! tracing-subscriber's default format spends most of a line's cost on its timestamp and its
//! ANSI styling; this one writes the same information (`time LEVEL target: message k=v ...`)
//! with the date part built once per second and the fields written directly.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::lock;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `time LEVEL target: message k=v ...`, one line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and every field.
    Json,
}

/// The format [`init`] installed: set only when the proxy's own subscriber writes the lines,
/// so that [`write_request`] can write a request line itself.
static INSTALLED: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// Installs the subscriber: `RUST_LOG` (default `info`), lines on stderr in `format`.
pub fn init(format: Format) {
    let _ = INSTALLED.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr_in_order)
        .with_ansi(false);
    match format {
        Format::Text => builder.event_format(LeanText).init(),
        Format::Json => builder.event_format(LeanJson).init(),
    }
}

/// The fields of the one line logged per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The request's method.
    pub method: &'a str,
    /// Its path, [`capped`].
    pub path: &'a str,
    /// Whose, or `-`.
    pub seller: &'a str,
    /// The operationId, or `-`.
    pub op: &'a str,
    /// The status answered.
    pub status: u16,
    /// Milliseconds from the request to its answer's head.
    pub latency_ms: u64,
    /// Milliseconds waited for quota.
    pub queue_ms: u64,
    /// `lwa`, `rdt`, `grantless` or `none`.
    pub token: &'a str,
    /// `included`, `omitted` or `-`.
    pub pii: &'a str,
    /// Amazon's `x-amzn-RequestId`, or `-`.
    pub request_id: &'a str,
}

/// The request line's target: the module that logs it.
const REQUEST_TARGET: &str = "spapi_proxy::proxy";

/// Where the request line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSink {
    /// Nowhere: info is off for it.
    Off,
    /// Written by [`write_request`] in this format.
    Direct(Format),
    /// Through `tracing` (another subscriber, or debug level, where the line carries its span,
    /// which only the subscriber knows).
    Tracing,
}

/// Where the request line goes; decided before its fields are gathered. With the proxy's own
/// subscriber installed, its filter (`RUST_LOG`) is fixed for the process's life, so the
/// answer is worked out once: asking the filter cost two hundred-odd instructions per request.
pub fn request_sink() -> RequestSink {
    static DECIDED: std::sync::OnceLock<RequestSink> = std::sync::OnceLock::new();
    if INSTALLED.get().is_some() {
        return *DECIDED.get_or_init(decide_sink);
    }
    decide_sink()
}

fn decide_sink() -> RequestSink {
    if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO) {
        return RequestSink::Off;
    }
    match INSTALLED.get() {
        Some(f) if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::DEBUG) => {
            RequestSink::Direct(*f)
        }
        _ => RequestSink::Tracing,
    }
}

/// The request line as a `tracing` event (another subscriber, or debug level, where the line
/// carries its span); [`write_request`] writes the same bytes without it.
pub fn trace_request(r: &RequestLine<'_>) {
    tracing::info!(
        target: REQUEST_TARGET,
        // A `str`, not a format string: recorded without the formatting machinery.
        message = "request",
        method = r.method,
        path = r.path,
        seller = r.seller,
        op = r.op,
        status = r.status,
        latency_ms = r.latency_ms,
        queue_ms = r.queue_ms,
        token = r.token,
        pii = r.pii,
        request_id = r.request_id,
    );
}

/// Writes the request line straight to stderr in `format`: the same bytes the subscriber
/// writes for the `tracing` event, without the event's dispatch (callsite, field visitor, the
/// subscriber's layers).
///
/// Lines are gathered per thread and written together, as nginx's `access_log ... buffer=
/// flush=` does: every [`FLUSH_EVERY`] (by [`flush_every`]), when the runtime's thread is about
/// to wait for work with [`PARK_FLUSH`] bytes waiting ([`flush_at_park`]), before any other
/// event of the thread is written (so a thread's lines stay in order), and whenever
/// [`PENDING_LIMIT`] bytes are waiting. A script's sequential requests then cost one `write`
/// per tenth of a second, not one each (writing whenever the runtime's thread ran out of work
/// cost 180 instructions per request). Formatting a line never logs: it holds the thread's
/// lines locked, and an event would wait on them.
pub fn write_request(format: Format, r: &RequestLine<'_>) {
    let written = PENDING.try_with(|pending| {
        let mut lines = lock(&pending.0);
        format_request(format, r, SystemTime::now(), &mut lines);
        if lines.len() >= PENDING_LIMIT {
            write_out(&mut lines);
        }
    });
    // Only while the thread ends: the line goes out alone.
    if written.is_err() {
        let mut line = String::new();
        format_request(format, r, SystemTime::now(), &mut line);
        write_out(&mut line);
    }
}

/// Request lines a thread holds before writing them without waiting for [`flush_every`].
pub const PENDING_LIMIT: usize = 32 * 1024;

/// The longest a request line waits before [`flush_every`] writes it.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Lines a thread writes when it is about to wait for work, if at least this much waits.
pub const PARK_FLUSH: usize = 4 * 1024;

/// Before the runtime's thread waits for work: writes its lines if [`PARK_FLUSH`] bytes wait.
/// Under load the lines then go out while the thread is idle, in a few KiB, rather than 32 KiB
/// in the middle of a request; a lone request's line waits for [`flush_every`] (a `write` at
/// every wait cost 180 instructions per request).
pub fn flush_at_park() {
    let _ = PENDING.try_with(|pending| write_waiting(&pending.0, PARK_FLUSH));
}

/// Writes this thread's waiting request lines (the subscriber's writer does, before every
/// other event).
pub fn flush() {
    let _ = PENDING.try_with(|pending| write_waiting(&pending.0, 1));
}

/// Writes every thread's waiting request lines ([`flush_every`] does, and `main` before
/// exiting).
pub fn flush_all() {
    for lines in lock(&WAITING).iter() {
        write_waiting(lines, 1);
    }
}

/// Writes `lines` if at least `at_least` bytes wait. The lock is held while they are written,
/// so that the thread they belong to cannot write a later line or event before them.
fn write_waiting(lines: &Mutex<String>, at_least: usize) {
    let mut lines = lock(lines);
    if lines.len() >= at_least {
        write_out(&mut lines);
    }
}

fn write_out(lines: &mut String) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(lines.as_bytes());
    lines.clear();
}

/// Every thread's waiting request lines, for [`flush_all`].
static WAITING: Mutex<Vec<Arc<Mutex<String>>>> = Mutex::new(Vec::new());

/// Writes every thread's waiting request lines every [`FLUSH_EVERY`], for as long as the
/// runtime it is spawned on runs. A task, not a thread of its own: with a second thread, glibc
/// takes its multi-threaded path on every system call (190 instructions per request on a
/// single-threaded runtime).
pub async fn flush_every() {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        flush_all();
    }
}

/// The subscriber's writer: stderr, once this thread's waiting request lines are out.
fn stderr_in_order() -> std::io::Stderr {
    flush();
    std::io::stderr()
}

/// The request line as the subscriber formats the event (see [`LeanText`], [`LeanJson`]). Each
/// run of fixed text is one literal, copied inline; only the values are escaped (a piece per
/// name, `=` and space cost a call each: 800 instructions per line, measured).
fn format_request(format: Format, r: &RequestLine<'_>, now: SystemTime, line: &mut String) {
    let mut status = itoa::Buffer::new();
    let mut latency = itoa::Buffer::new();
    let mut queue = itoa::Buffer::new();
    // Only the path and Amazon's request id come from outside; the rest are the proxy's own
    // words (a method is a token, a seller name is letters, digits, `-`, `_` and `.`, the
    // operation is the catalog's, token and pii are constants) and need no escaping.
    debug_assert!(
        [r.method, r.seller, r.op, r.token, r.pii]
            .iter()
            .all(|f| plain_ascii(f.as_bytes(), true)),
        "{r:?}"
    );
    let (status, latency, queue) = (
        status.format(r.status),
        latency.format(r.latency_ms),
        queue.format(r.queue_ms),
    );
    match format {
        Format::Text => {
            let _ = write_timestamp(line, now);
            write_fields(line, r, [status, latency, queue], &TEXT_FRAME, Escape::Text);
        }
        Format::Json => {
            line.push_str("{\"timestamp\":\"");
            let _ = write_timestamp(line, now);
            write_fields(line, r, [status, latency, queue], &JSON_FRAME, Escape::Json);
        }
    }
}

/// The fixed text before each field of the request line (and after the last), per format.
struct Frame {
    method: &'static str,
    path: &'static str,
    seller: &'static str,
    op: &'static str,
    status: &'static str,
    latency: &'static str,
    queue: &'static str,
    token: &'static str,
    pii: &'static str,
    request_id: &'static str,
    end: &'static str,
}

/// `... INFO spapi_proxy::proxy: request method=GET path=...`
const TEXT_FRAME: Frame = Frame {
    method: "  INFO spapi_proxy::proxy: request method=",
    path: " path=",
    seller: " seller=",
    op: " op=",
    status: " status=",
    latency: " latency_ms=",
    queue: " queue_ms=",
    token: " token=",
    pii: " pii=",
    request_id: " request_id=",
    end: "\n",
};

/// `{"timestamp":"...","level":"INFO","message":"request","method":"GET",...}`
const JSON_FRAME: Frame = Frame {
    method: "\",\"level\":\"INFO\",\"message\":\"request\",\"method\":\"",
    path: "\",\"path\":\"",
    seller: "\",\"seller\":\"",
    op: "\",\"op\":\"",
    status: "\",\"status\":",
    latency: ",\"latency_ms\":",
    queue: ",\"queue_ms\":",
    token: ",\"token\":\"",
    pii: "\",\"pii\":\"",
    request_id: "\",\"request_id\":\"",
    end: "\",\"target\":\"spapi_proxy::proxy\"}\n",
};

/// The request line's fields in `frame`, after its timestamp. Inlined with a constant frame,
/// so that each piece of fixed text is copied as a literal.
#[inline(always)]
fn write_fields(
    line: &mut String,
    r: &RequestLine<'_>,
    [status, latency, queue]: [&str; 3],
    frame: &Frame,
    escape: Escape,
) {
    line.push_str(frame.method);
    line.push_str(r.method);
    line.push_str(frame.path);
    escape.push(line, r.path);
    line.push_str(frame.seller);
    line.push_str(r.seller);
    line.push_str(frame.op);
    line.push_str(r.op);
    line.push_str(frame.status);
    line.push_str(status);
    line.push_str(frame.latency);
    line.push_str(latency);
    line.push_str(frame.queue);
    line.push_str(queue);
    line.push_str(frame.token);
    line.push_str(r.token);
    line.push_str(frame.pii);
    line.push_str(r.pii);
    line.push_str(frame.request_id);
    escape.push(line, r.request_id);
    line.push_str(frame.end);
}

/// The most of a path (or any client-given text) one log line carries.
pub const MAX_LOGGED_PATH: usize = 512;

/// `text`, or its first [`MAX_LOGGED_PATH`] bytes (cut at a character boundary) and a note of
/// how long it was: a client must not be able to write megabytes of log per request.
pub fn capped(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_LOGGED_PATH {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_LOGGED_PATH;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...({} bytes)", &text[..end], text.len()))
}

/// Control characters, which could forge lines or drive a terminal (CR, LF, ESC, OSC, C1),
/// and the Unicode line and paragraph separators.
fn is_control(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// Whether `s` has anything [`push_text`] or [`push_json`] must escape (bytes first: the
/// usual line is ASCII without a control character).
fn needs_escape(s: &str, quote: bool) -> bool {
    !plain_ascii(s.as_bytes(), quote)
        && (quote && s.contains(['"', '\\']) || s.chars().any(is_control))
}

/// Whether every byte is printable ASCII (and, with `quote`, neither `"` nor `\\`), eight
/// bytes at a time: the usual field has nothing to escape, and a byte-by-byte test of the
/// line's fields cost 450 instructions per request.
fn plain_ascii(bytes: &[u8], quote: bool) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether some byte of `x` is zero (exact: no false positives).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        // With no high bit set, `x - 0x20..` borrows into a byte's high bit only where the
        // byte is below 0x20.
        if x & HIGH != 0
            || x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0
            || zero(x ^ (ONES * 0x7f))
            || (quote
                && (zero(x ^ (ONES * u64::from(b'"'))) || zero(x ^ (ONES * u64::from(b'\\')))))
        {
            return false;
        }
    }
    rest.iter().all(|&b| plain_byte(b, quote))
}

/// What [`plain_ascii`] asks of each byte.
fn plain_byte(b: u8, quote: bool) -> bool {
    (0x20..0x7f).contains(&b) && !(quote && (b == b'"' || b == b'\\'))
}

/// How a field's text is written: as is in a text line, or inside a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Text,
    Json,
}

impl Escape {
    /// Appends `s` with every control character escaped (`\n`, `\r`, `\t`, then `\u{1b}` in
    /// text, `\u001b` in JSON), so that no field can start a forged line or send escape
    /// sequences; in JSON, quotes and backslashes too (JSON itself requires only C0 escaped).
    ///
    /// The usual text, with nothing to escape, is appended inline (a call per field cost 46
    /// instructions per request line); the escaping is out of line.
    #[inline(always)]
    fn push(self, line: &mut String, s: &str) {
        if needs_escape(s, self == Escape::Json) {
            self.push_escaped(line, s);
        } else {
            line.push_str(s);
        }
    }

    #[cold]
    #[inline(never)]
    fn push_escaped(self, line: &mut String, s: &str) {
        let json = self == Escape::Json;
        for c in s.chars() {
            match c {
                '"' if json => line.push_str("\\\""),
                '\\' if json => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                '\r' => line.push_str("\\r"),
                '\t' => line.push_str("\\t"),
                c if is_control(c) && json => {
                    let _ = write!(line, "\\u{:04x}", c as u32);
                }
                c if is_control(c) => {
                    let _ = write!(line, "\\u{{{:x}}}", c as u32);
                }
                c => line.push(c),
            }
        }
    }

    /// Escapes, in place, what was appended to `line` since `start` (for values formatted by
    /// their own `Debug` or `Display`).
    fn tail(self, line: &mut String, start: usize) {
        if start < line.len() && needs_escape(&line[start..], self == Escape::Json) {
            let tail = line.split_off(start);
            self.push(line, &tail);
        }
    }
}

/// Appends `s` to a text line, control characters escaped (see [`Escape::push`]).
pub fn push_text(line: &mut String, s: &str) {
    Escape::Text.push(line, s);
}

/// Appends `s` as the inside of a JSON string, escaped (see [`Escape::push`]).
pub fn push_json(line: &mut String, s: &str) {
    Escape::Json.push(line, s);
}

/// `2026-11-23T21:40:55.123Z  INFO spapi_proxy::proxy: request method=GET status=200 ...`
#[derive(Debug, Clone, Copy, Default)]
pub struct LeanText;

thread_local! {
    /// The second the cached date is for, and `YYYY-MM-DDTHH:MM:SS.` for it.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes an RFC 3339 UTC timestamp with milliseconds.
pub fn write_timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    STAMP.with(|stamp| {
        let mut stamp = stamp.borrow_mut();
        if stamp.0 != secs {
            let date = crate::forward::amz_date(now);
            // YYYYMMDDTHHMMSSZ -> YYYY-MM-DDTHH:MM:SS.
            stamp.1.clear();
            let _ = write!(
                stamp.1,
                "{}-{}-{}T{}:{}:{}.",
                &date[0..4],
                &date[4..6],
                &date[6..8],
                &date[9..11],
                &date[11..13],
                &date[13..15]
            );
            stamp.0 = secs;
        }
        w.write_str(&stamp.1)
    })?;
    let ms = since.subsec_millis();
    w.write_char(char::from(b'0' + (ms / 100 % 10) as u8))?;
    w.write_char(char::from(b'0' + (ms / 10 % 10) as u8))?;
    w.write_char(char::from(b'0' + (ms % 10) as u8))?;
    w.write_char('Z')
}

thread_local! {
    /// The line being built: written to the subscriber's writer in one call.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// Request lines not yet written (see [`write_request`]); written when the thread ends.
    static PENDING: Pending = Pending::new();
}

/// A thread's waiting request lines, shared with [`flush_all`], and written if the thread ends
/// with some.
struct Pending(Arc<Mutex<String>>);

impl Pending {
    fn new() -> Pending {
        let lines = Arc::new(Mutex::new(String::new()));
        lock(&WAITING).push(Arc::clone(&lines));
        Pending(lines)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        write_waiting(&self.0, 1);
        lock(&WAITING).retain(|lines| !Arc::ptr_eq(lines, &self.0));
    }
}

impl<S, N> FormatEvent<S, N> for LeanText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The writer is a `dyn fmt::Write`: the line is built in a plain `String` and handed
        // over once, rather than in a dozen dynamic calls per field.
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                format_line(ctx, event, &mut line)?;
                writer.write_str(&line)
            }
            // An event logged while a line is being formatted (from a field's `Debug`).
            Err(_) => {
                let mut line = String::new();
                format_line(ctx, event, &mut line)?;
                writer.write_str(&line)
            }
        })
    }
}

fn format_line<S, N>(
    ctx: &FmtContext<'_, S, N>,
    event: &Event<'_>,
    line: &mut String,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let meta = event.metadata();
    write_timestamp(line, SystemTime::now())?;
    let level = meta.level().as_str();
    line.push_str(&"      "[..6 - level.len().min(5)]);
    line.push_str(level);
    line.push(' ');
    line.push_str(meta.target());
    line.push(':');
    // Spans (debug level and below): their fields, outermost first.
    if let Some(scope) = ctx.event_scope() {
        for span in scope.from_root() {
            line.push(' ');
            line.push_str(span.name());
            if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                if !fields.is_empty() {
                    line.push('{');
                    push_text(line, fields);
                    line.push('}');
                }
            }
            line.push(':');
        }
    }
    let mut visitor = Fields {
        line,
        result: Ok(()),
        style: Escape::Text,
    };
    event.record(&mut visitor);
    visitor.result?;
    line.push('\n');
    Ok(())
}

/// Writes an event's fields in either format.
struct Fields<'a> {
    line: &'a mut String,
    /// A field's `Debug` can fail; the first failure is kept.
    result: fmt::Result,
    style: Escape,
}

impl Fields<'_> {
    /// ` name=` in text (the message bare), `,"name":` in JSON.
    fn key(&mut self, field: &Field) {
        match self.style {
            Escape::Text => {
                self.line.push(' ');
                if field.name() != "message" {
                    self.line.push_str(field.name());
                    self.line.push('=');
                }
            }
            Escape::Json => {
                self.line.push_str(",\"");
                push_json(self.line, field.name());
                self.line.push_str("\":");
            }
        }
    }

    /// A JSON string's quote; nothing in text.
    fn quote(&mut self) {
        if self.style == Escape::Json {
            self.line.push('"');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.quote();
        self.style.push(self.line, value);
        self.quote();
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match self.style {
            Escape::Text => self.record_debug(field, &value),
            Escape::Json => {
                self.key(field);
                if value.is_finite() {
                    let _ = write!(self.line, "{value}");
                } else {
                    self.line.push_str("null");
                }
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.quote();
        if self.result.is_ok() {
            let start = self.line.len();
            self.result = write!(self.line, "{value:?}");
            self.style.tail(self.line, start);
        }
        self.quote();
    }
}

/// `{"timestamp":"...","level":"INFO","message":"request","method":"GET",...,"target":"..."}`:
/// one JSON object per event, the event's fields at the top level, every string escaped by
/// [`push_json`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LeanJson;

impl<S, N> FormatEvent<S, N> for LeanJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        let meta = event.metadata();
        line.push_str("{\"timestamp\":\"");
        write_timestamp(&mut line, SystemTime::now())?;
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        let mut visitor = Fields {
            line: &mut line,
            result: Ok(()),
            style: Escape::Json,
        };
        event.record(&mut visitor);
        visitor.result?;
        line.push_str(",\"target\":\"");
        push_json(&mut line, meta.target());
        line.push_str("\"}\n");
        writer.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The eight-at-a-time test agrees with the byte-by-byte definition for every byte value
    /// at every position of a line longer than two words, in both modes.
    #[test]
    fn the_word_test_agrees_with_the_byte_test() {
        let by_byte = |bytes: &[u8], quote: bool| bytes.iter().all(|&b| plain_byte(b, quote));
        let mut line = *b"/orders/v0/orders?Marketplace";
        for at in 0..line.len() {
            let kept = line[at];
            for b in 0..=255u8 {
                line[at] = b;
                for quote in [false, true] {
                    assert_eq!(
                        plain_ascii(&line, quote),
                        by_byte(&line, quote),
                        "byte {b:#x} at {at}, quote {quote}"
                    );
                }
            }
            line[at] = kept;
        }
    }

    #[test]
    fn control_characters_are_escaped_in_both_formats() {
        // (input, text, JSON string body)
        let cases = [
            ("plain /orders/v0", "plain /orders/v0", "plain /orders/v0"),
            ("a\r\nb", "a\\r\\nb", "a\\r\\nb"),
            (
                "x\u{1b}]0;pwn\u{7}",
                "x\\u{1b}]0;pwn\\u{7}",
                "x\\u001b]0;pwn\\u0007",
            ),
            ("csi\u{9b}31m", "csi\\u{9b}31m", "csi\\u009b31m"),
            ("del\u{7f}", "del\\u{7f}", "del\\u007f"),
            ("tab\there", "tab\\there", "tab\\there"),
            ("sep\u{2028}", "sep\\u{2028}", "sep\\u2028"),
            ("quote\"back\\", "quote\"back\\", "quote\\\"back\\\\"),
            (
                "caf\u{e9} \u{65e5}\u{672c}",
                "caf\u{e9} \u{65e5}\u{672c}",
                "caf\u{e9} \u{65e5}\u{672c}",
            ),
        ];
        for (input, text, json) in cases {
            let mut out = String::new();
            push_text(&mut out, input);
            assert_eq!(out, text, "text of {input:?}");
            assert!(!out.chars().any(is_control), "{out:?}");
            let mut out = String::new();
            push_json(&mut out, input);
            assert_eq!(out, json, "JSON of {input:?}");
            let parsed: String = serde_json::from_str(&format!("\"{out}\"")).unwrap();
            assert_eq!(parsed, input);
        }
    }

    #[test]
    fn long_paths_are_capped() {
        assert_eq!(capped("/short"), "/short");
        let long = format!("/{}", "\u{e9}".repeat(40_000));
        let c = capped(&long);
        assert!(c.len() < MAX_LOGGED_PATH + 32, "{}", c.len());
        assert!(c.ends_with("...(80001 bytes)"), "{}", &c[c.len() - 20..]);
    }

    #[test]
    fn timestamps() {
        let cases = [
            (1_556_627_760_000, "2019-04-30T12:36:00.000Z"),
            (1_556_627_760_007, "2019-04-30T12:36:00.007Z"),
            (1_795_478_399_999, "2026-11-23T23:59:59.999Z"),
            (1_795_478_400_250, "2026-11-24T00:00:00.250Z"),
        ];
        for (ms, want) in cases {
            let mut out = String::new();
            write_timestamp(&mut out, UNIX_EPOCH + Duration::from_millis(ms)).unwrap();
            assert_eq!(out, want);
        }
    }

    /// What the subscriber writes for one event, in `format`.
    fn through_subscriber(format: Format, emit: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false);
        match format {
            Format::Text => {
                tracing::subscriber::with_default(builder.event_format(LeanText).finish(), emit)
            }
            Format::Json => {
                tracing::subscriber::with_default(builder.event_format(LeanJson).finish(), emit)
            }
        }
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    /// The directly written request line is byte for byte the subscriber's, timestamp aside.
    #[test]
    fn the_direct_request_line_is_the_subscribers() {
        let cases = [
            RequestLine {
                method: "GET",
                path: "/orders/v0/orders",
                seller: "acme",
                op: "getOrders",
                status: 200,
                latency_ms: 12,
                queue_ms: 0,
                token: "lwa",
                pii: "-",
                request_id: "b1f5-42",
            },
            RequestLine {
                method: "POST",
                path: "/x\r\ny \"q\" \u{1b}]0;",
                seller: "-",
                op: "-",
                status: 429,
                latency_ms: u64::MAX,
                queue_ms: 7,
                token: "none",
                pii: "omitted",
                request_id: "-",
            },
        ];
        let strip = |s: &str, format: Format| -> String {
            match format {
                // `2026-12-07T02:45:43.466Z` starts every text line.
                Format::Text => s[24..].to_string(),
                Format::Json => {
                    let start = s.find("\"timestamp\":\"").unwrap() + 13;
                    format!("{}{}", &s[..start], &s[start + 24..])
                }
            }
        };
        for r in cases {
            for format in [Format::Text, Format::Json] {
                let via_tracing = through_subscriber(format, || trace_request(&r));
                let mut direct = String::new();
                format_request(format, &r, SystemTime::now(), &mut direct);
                assert_eq!(
                    strip(&direct, format),
                    strip(&via_tracing, format),
                    "{format:?}"
                );
            }
        }
    }
}
