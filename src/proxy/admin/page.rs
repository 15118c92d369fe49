//! `GET /_proxy/`: the status page, rendered on the server from the status JSON.

use http::Response;

use super::Viewer;
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::proxy::{Proxy, State};

pub(super) fn answer(
    proxy: &Proxy,
    state: &State,
    viewer: Viewer<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let html = crate::status_page::render(&super::status::status(
        state,
        &proxy.limiter,
        proxy.shared_view(),
        viewer,
    ));
    let mut resp = Response::new(full(html));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Everything is inline; nothing else may load, and no other site may frame it.
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
