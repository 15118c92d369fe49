//! The one body type the proxy hands to hyper, whatever produced it.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Boxed error type for body streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: a buffered answer of the proxy's own, or Amazon's streamed through.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A client's request body on its way upstream: the part already read, then the rest. If the
/// client's side breaks off, the reason is kept in `broke`, so the failure is not blamed on
/// Amazon.
pub struct ClientBody {
    prefix: Option<Bytes>,
    rest: hyper::body::Incoming,
    broke: std::sync::Arc<std::sync::OnceLock<String>>,
}

impl ClientBody {
    /// `prefix` is sent first (if not empty), then `rest`.
    pub fn new(
        prefix: Bytes,
        rest: hyper::body::Incoming,
        broke: std::sync::Arc<std::sync::OnceLock<String>>,
    ) -> Self {
        ClientBody {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
            broke,
        }
    }
}

impl hyper::body::Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        let polled = std::pin::Pin::new(&mut self.rest).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            let _ = self.broke.set(e.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower().saturating_add(extra));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint
    }
}
