//! Log output: a lean text format, because one line per request is on the request path.
//!
//! tracing-subscriber's default format spends most of a line's cost on its timestamp and its
//! ANSI styling; this one writes the same information (`time LEVEL target: message k=v ...`)
//! with the date part built once per second and the fields written directly.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `time LEVEL target: message k=v ...`, one line per event.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and every field.
    Json,
}

/// Installs the subscriber: `RUST_LOG` (default `info`), lines on stderr in `format`.
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        Format::Text => builder.event_format(LeanText).init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
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
    let digits = [
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ];
    w.write_str(std::str::from_utf8(&digits).unwrap_or("000"))?;
    w.write_char('Z')
}

thread_local! {
    /// The line being built: written to the subscriber's writer in one call.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
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
                    write!(line, "{{{fields}}}")?;
                }
            }
            line.push(':');
        }
    }
    let mut visitor = Fields {
        line,
        result: Ok(()),
    };
    event.record(&mut visitor);
    visitor.result?;
    line.push('\n');
    Ok(())
}

struct Fields<'a> {
    line: &'a mut String,
    /// A field's `Debug` can fail; the first failure is kept.
    result: fmt::Result,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(' ');
        if field.name() != "message" {
            self.line.push_str(field.name());
            self.line.push('=');
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.line.push_str(value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_str(field, if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        if self.result.is_ok() {
            self.result = write!(self.line, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
