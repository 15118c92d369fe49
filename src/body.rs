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
