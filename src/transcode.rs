//! A document's bytes on their way to the client: gunzipped as they stream, and on request
//! decoded from the document's charset to UTF-8. Nothing here holds a whole document: input is
//! taken a few KiB at a time and each step's output goes out before the next is made.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use encoding_rs::Encoding;
use flate2::write::MultiGzDecoder;
use futures_util::Stream;

use crate::body::BoxError;

/// Input is fed to the decoders this much at a time, which bounds what one step can produce
/// (deflate expands at most about 1,032 times).
const STEP: usize = 4 * 1024;

/// Gunzips a stream of bytes. Amazon has said `GZIP` for documents that were plain
/// (selling-partner-api-models#2648), so the first two bytes decide: the gzip magic number
/// (RFC 1952: 1f 8b) or the bytes as they are. Concatenated gzip members are one document.
pub struct Gunzip {
    mode: Mode,
}

enum Mode {
    /// Fewer than two bytes seen yet.
    Sniffing(Vec<u8>),
    Gzip(Box<MultiGzDecoder<Vec<u8>>>),
    Plain,
}

impl Default for Gunzip {
    fn default() -> Self {
        Gunzip {
            mode: Mode::Sniffing(Vec::new()),
        }
    }
}

impl Gunzip {
    /// Feeds bytes; answers what they decompress to (possibly nothing yet).
    pub fn push(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        if let Mode::Sniffing(seen) = &mut self.mode {
            seen.extend_from_slice(input);
            if seen.len() < 2 {
                return Ok(Vec::new());
            }
            let seen = std::mem::take(seen);
            self.mode = if seen.starts_with(&[0x1f, 0x8b]) {
                Mode::Gzip(Box::new(MultiGzDecoder::new(Vec::new())))
            } else {
                Mode::Plain
            };
            return self.push(&seen);
        }
        match &mut self.mode {
            Mode::Plain => Ok(input.to_vec()),
            Mode::Gzip(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Mode::Sniffing(_) => unreachable!("handled above"),
        }
    }

    /// The end of the input: the rest of the output; an error if the gzip stream was cut short.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        match std::mem::replace(&mut self.mode, Mode::Plain) {
            Mode::Sniffing(seen) => Ok(seen),
            Mode::Plain => Ok(Vec::new()),
            Mode::Gzip(d) => d.finish(),
        }
    }
}

/// Decodes a document's charset to UTF-8, chunk by chunk (a character split between chunks is
/// carried over). Bytes that are not valid in the charset become U+FFFD.
pub struct ToUtf8 {
    decoder: encoding_rs::Decoder,
}

impl ToUtf8 {
    /// From `encoding`; a byte-order mark, if there is one, wins and is dropped.
    pub fn new(encoding: &'static Encoding) -> ToUtf8 {
        ToUtf8 {
            decoder: encoding.new_decoder(),
        }
    }

    /// Decodes `input` (`last`: nothing follows).
    pub fn push(&mut self, input: &[u8], last: bool) -> Vec<u8> {
        let room = self
            .decoder
            .max_utf8_buffer_length(input.len())
            .unwrap_or(input.len().saturating_mul(3).saturating_add(16));
        let mut out = vec![0; room];
        let (_, _read, written, _) = self.decoder.decode_to_utf8(input, &mut out, last);
        out.truncate(written);
        out
    }
}

/// The `charset` parameter of a `Content-Type`, as written.
pub fn charset_param(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    })
}

/// The encoding a charset name stands for: WHATWG's labels (which know `Cp1252`, `utf8`,
/// `Shift_JIS`, `Windows-31J`), and Java's `Cp932`/`MS932`, which report downloads have been
/// read with for Japan (python-amazon-sp-api#244).
pub fn encoding_for(label: &str) -> Option<&'static Encoding> {
    let label = label.trim();
    if label.eq_ignore_ascii_case("cp932") || label.eq_ignore_ascii_case("ms932") {
        return Some(encoding_rs::SHIFT_JIS);
    }
    Encoding::for_label(label.as_bytes())
}

/// Amazon's Japanese marketplace.
pub const JP_MARKETPLACE: &str = "A1VC38T7YXB528";

/// The charset of a document whose download named none: Shift_JIS (Windows-31J) for the
/// Japanese marketplace's flat files (selling-partner-api-models#545, python-amazon-sp-api#244),
/// otherwise UTF-8, which Amazon states for SP-API reports (selling-partner-api-docs#21). XML
/// and JSON documents declare their own encoding and are UTF-8 in practice.
pub fn default_encoding(marketplaces: &[&str], report_type: Option<&str>) -> &'static Encoding {
    let structured = report_type.is_some_and(|t| t.contains("_XML_") || t.contains("JSON"));
    if !structured && marketplaces.contains(&JP_MARKETPLACE) {
        encoding_rs::SHIFT_JIS
    } else {
        encoding_rs::UTF_8
    }
}

/// A document stream through [`Gunzip`] (if compressed) and [`ToUtf8`] (if asked for).
pub struct Transcoded<S> {
    source: S,
    pending: Bytes,
    gunzip: Option<Gunzip>,
    decode: Option<ToUtf8>,
    done: bool,
}

impl<S> Transcoded<S> {
    /// `source` as it comes from the document host.
    pub fn new(source: S, gunzip: bool, decode: Option<&'static Encoding>) -> Transcoded<S> {
        Transcoded {
            source,
            pending: Bytes::new(),
            gunzip: gunzip.then(Gunzip::default),
            decode: decode.map(ToUtf8::new),
            done: false,
        }
    }

    /// One step: `input` through both stages.
    fn step(&mut self, input: &[u8], last: bool) -> Result<Vec<u8>, BoxError> {
        let mut out = match &mut self.gunzip {
            Some(g) => {
                let mut o = g.push(input)?;
                if last {
                    o.extend(g.finish()?);
                }
                o
            }
            None => input.to_vec(),
        };
        if let Some(d) = &mut self.decode {
            out = d.push(&out, last);
        }
        Ok(out)
    }
}

impl<S, E> Stream for Transcoded<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if !this.pending.is_empty() {
                if this.gunzip.is_none() && this.decode.is_none() {
                    // Nothing to do to the bytes: the chunk goes on as it came, uncopied.
                    return Poll::Ready(Some(Ok(std::mem::take(&mut this.pending))));
                }
                let piece = this.pending.split_to(this.pending.len().min(STEP));
                match this.step(&piece, false) {
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(Bytes::from(out)))),
                }
            }
            match Pin::new(&mut this.source).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.pending = chunk,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.step(&[], true) {
                        Err(e) => Poll::Ready(Some(Err(e))),
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Bytes::from(out)))),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn run(chunks: Vec<Vec<u8>>, gunzip: bool, decode: Option<&'static Encoding>) -> Vec<u8> {
        let source = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        );
        let mut t = Transcoded::new(source, gunzip, decode);
        let mut out = Vec::new();
        while let Some(chunk) = t.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    /// Splits `data` into pieces of `size` bytes.
    fn pieces(data: &[u8], size: usize) -> Vec<Vec<u8>> {
        data.chunks(size).map(<[u8]>::to_vec).collect()
    }

    #[tokio::test]
    async fn gunzip_and_decode_table() {
        let text = "sku\tname\nA-1\t日本語の商品\nB-2\tPiña Están\n".repeat(300);
        // Shift_JIS holds no ñ: the Japanese cases use Japanese text (～ is Windows-31J's).
        let jp = "sku\tname\nA-1\t日本語の商品 ～軽量～\n".repeat(300);
        let sjis = encoding_rs::SHIFT_JIS.encode(&jp).0.into_owned();
        let cp1252 = "sku\tname\nB-2\tPiña Están\n";
        // (name, input, gunzip, decode from, expected output)
        type Case = (
            &'static str,
            Vec<u8>,
            bool,
            Option<&'static Encoding>,
            Vec<u8>,
        );
        let cases: Vec<Case> = vec![
            (
                "gzip, raw",
                gzip(text.as_bytes()),
                true,
                None,
                text.as_bytes().to_vec(),
            ),
            (
                "said GZIP but plain",
                text.as_bytes().to_vec(),
                true,
                None,
                text.as_bytes().to_vec(),
            ),
            (
                "plain",
                text.as_bytes().to_vec(),
                false,
                None,
                text.as_bytes().to_vec(),
            ),
            (
                "two gzip members are one document",
                [gzip(b"first\n"), gzip(b"second\n")].concat(),
                true,
                None,
                b"first\nsecond\n".to_vec(),
            ),
            (
                "Shift_JIS to UTF-8",
                sjis.clone(),
                false,
                Some(encoding_rs::SHIFT_JIS),
                jp.as_bytes().to_vec(),
            ),
            (
                "gzipped Shift_JIS to UTF-8",
                gzip(&sjis),
                true,
                Some(encoding_rs::SHIFT_JIS),
                jp.as_bytes().to_vec(),
            ),
            (
                "Cp1252 to UTF-8",
                encoding_rs::WINDOWS_1252.encode(cp1252).0.into_owned(),
                false,
                Some(encoding_rs::WINDOWS_1252),
                cp1252.as_bytes().to_vec(),
            ),
            (
                "empty",
                Vec::new(),
                true,
                Some(encoding_rs::UTF_8),
                Vec::new(),
            ),
            ("one byte", b"x".to_vec(), true, None, b"x".to_vec()),
        ];
        for (name, input, gunzip, decode, want) in cases {
            // Any chunking gives the same bytes, characters split between chunks included.
            for size in [1, 3, 4096, 1 << 20] {
                let got = run(pieces(&input, size), gunzip, decode).await;
                assert!(
                    got == want,
                    "{name}, chunks of {size}: {} bytes, want {}",
                    got.len(),
                    want.len()
                );
            }
        }
    }

    #[tokio::test]
    async fn a_cut_gzip_stream_is_an_error_not_a_short_document() {
        let whole = gzip(&b"row\n".repeat(10_000));
        let cut = whole[..whole.len() / 2].to_vec();
        let source = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(cut))]);
        let mut t = Transcoded::new(source, true, None);
        let mut failed = false;
        while let Some(chunk) = t.next().await {
            failed |= chunk.is_err();
        }
        assert!(failed);
    }

    #[test]
    fn charsets_table() {
        let cases = [
            ("text/plain; charset=Cp1252", Some("windows-1252")),
            ("text/plain; charset=utf8", Some("UTF-8")),
            ("text/plain; charset=UTF-8", Some("UTF-8")),
            ("text/plain;charset=\"Shift_JIS\"", Some("Shift_JIS")),
            ("text/plain; charset=Windows-31J", Some("Shift_JIS")),
            ("text/plain; charset=Cp932", Some("Shift_JIS")),
            ("text/plain", None),
            ("text/plain; charset=", None),
            ("text/plain; charset=klingon", None),
        ];
        for (ct, want) in cases {
            let got = charset_param(ct).and_then(encoding_for).map(Encoding::name);
            assert_eq!(got, want, "{ct}");
        }
        assert_eq!(
            default_encoding(&[JP_MARKETPLACE], None),
            encoding_rs::SHIFT_JIS
        );
        assert_eq!(
            default_encoding(
                &[JP_MARKETPLACE],
                Some("GET_XML_ALL_ORDERS_DATA_BY_LAST_UPDATE_GENERAL")
            ),
            encoding_rs::UTF_8
        );
        assert_eq!(
            default_encoding(&["ATVPDKIKX0DER"], None),
            encoding_rs::UTF_8
        );
        assert_eq!(default_encoding(&[], None), encoding_rs::UTF_8);
    }
}
