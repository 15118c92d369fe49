//! `GET /_proxy/metrics`: Prometheus metrics, in the classic text format unless the scraper asks
//! for OpenMetrics; a limited key sees only its sellers' series.

use http::Response;

use super::Viewer;
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::metrics;
use crate::proxy::{no_seller, Proxy};

pub(super) fn answer(
    proxy: &Proxy,
    req: &http::request::Parts,
    viewer: Viewer<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let m = metrics::metrics();
    m.bucket_tokens.clear();
    m.bucket_waiting.clear();
    for v in proxy.limiter.views() {
        let seller = v.key.seller.clone().unwrap_or_else(no_seller);
        let labels = metrics::BucketLabels {
            seller: seller.to_string(),
            region: v.key.region.name(),
            api: v.operation_api,
            operation: match v.operation_id {
                "-" => v.operation.clone(),
                id => id.to_string(),
            },
        };
        m.bucket_tokens.get_or_create(&labels).set(v.tokens.floor());
        m.bucket_waiting
            .get_or_create(&labels)
            .set(i64::try_from(v.waiting).unwrap_or(i64::MAX));
        // Every bucket's throttle and error series exist from the start, at 0, so
        // that a rate() over them works before the first 429.
        let op = metrics::OperationLabels {
            seller,
            api: v.operation_api,
            operation: v.operation_id,
        };
        for family in [&m.local_throttled, &m.amazon_throttled, &m.amazon_errors] {
            drop(family.get_or_create(&op));
        }
    }
    let openmetrics = metrics::wants_openmetrics(
        req.headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let text = if openmetrics {
        m.encode()
    } else {
        m.encode_classic()
    };
    let text = if viewer.unrestricted() {
        text
    } else {
        metrics::only_sellers(&text, |seller| viewer.sees(Some(seller)))
    };
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(if openmetrics {
            metrics::OPENMETRICS_TYPE
        } else {
            metrics::CLASSIC_TYPE
        }),
    );
    Ok(resp)
}
