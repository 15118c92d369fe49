//! `GET /_proxy/`: the status page, rendered on the server from the status JSON.

use http::Response;

use super::Viewer;
use crate::body::ProxyBody;
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
    Ok(super::html_response(http::StatusCode::OK, html))
}
