//! `POST /_proxy/feeds?feedType=...&marketplaceIds=...` and `GET /_proxy/feeds/{feedId}/result`.

use futures_util::StreamExt;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use super::reports::document_location;
use super::{host_status, poll, processing, Flow, Stop, COMPRESSION_HEADER, DOCUMENT_ID_HEADER};
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::transcode::Transcoded;

/// The feeds model's words for the end states (feeds_2021-06-30.json, `processingStatus`).
fn reason(status: &str) -> &'static str {
    match status {
        "CANCELLED" => "The feed was cancelled before it started processing.",
        _ => {
            "The feed was aborted due to a fatal error. Some, none, or all of the operations \
             within the feed may have completed successfully."
        }
    }
}

/// createFeedDocument, the upload (the request's body, streamed with its own length and content
/// type), createFeed; answers 202 with the feedId, as createFeed does.
pub(super) async fn submit(
    flow: &Flow<'_>,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Response<ProxyBody>, Stop> {
    let feed_type = flow
        .param("feedType")
        .ok_or_else(|| ProxyError::BadRequest("feedType is required, e.g. ?feedType=JSON_LISTINGS_FEED&marketplaceIds=ATVPDKIKX0DER".into()))?
        .to_string();
    let marketplaces: Vec<String> = flow
        .param("marketplaceIds")
        .map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if marketplaces.is_empty() {
        return Err(ProxyError::BadRequest(
            "marketplaceIds is required (comma-separated), e.g. marketplaceIds=ATVPDKIKX0DER"
                .into(),
        )
        .into());
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            ProxyError::BadRequest(
                "the feed's Content-Type is required (e.g. application/json; charset=UTF-8); \
                 Amazon's upload URL is signed for it"
                    .into(),
            )
        })?;
    let length: u64 = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            ProxyError::LengthRequired(
                "the feed's Content-Length is required: the document host takes an upload of \
                 known length, and the proxy streams the body rather than hold it"
                    .into(),
            )
        })?;

    // 1. createFeedDocument: where to upload, signed for this content type.
    let created = flow
        .call(
            Method::POST,
            "/feeds/2021-06-30/documents",
            Some(json!({ "contentType": content_type })),
        )
        .await?
        .json()?;
    let (Some(document), Some(url)) = (created["feedDocumentId"].as_str(), created["url"].as_str())
    else {
        return Err(ProxyError::Upstream(
            "createFeedDocument named no feedDocumentId or url".into(),
        )
        .into());
    };
    let url = flow.document_url(url)?;

    // 2. The upload: exactly the content type given, the client's length, the body streamed;
    //    nothing of SP-API's.
    let frames = BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(f) => f.into_data().ok().map(Ok::<_, hyper::Error>),
            Err(e) => Some(Err(e)),
        }
    });
    let upload = flow
        .state
        .documents_http
        .put(url)
        .header(http::header::CONTENT_TYPE, &content_type)
        .header(http::header::CONTENT_LENGTH, length)
        .body(reqwest::Body::wrap_stream(frames))
        .send()
        .await
        .map_err(|e| {
            ProxyError::DocumentHost(format!(
                "nothing to the upload: {}",
                crate::forward::describe(&e.without_url())
            ))
        })?;
    host_status(upload).await?;

    // 3. createFeed.
    let feed = flow
        .call(
            Method::POST,
            "/feeds/2021-06-30/feeds",
            Some(json!({
                "feedType": feed_type,
                "marketplaceIds": marketplaces,
                "inputFeedDocumentId": document,
            })),
        )
        .await?;
    let status = feed.status;
    let answer = feed.json()?;
    let body = json!({
        "feedId": answer["feedId"],
        "feedDocumentId": document,
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = if status.is_success() {
        status
    } else {
        StatusCode::ACCEPTED
    };
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// getFeed until DONE, then its processing report, streamed (gunzipped).
pub(super) async fn result(flow: &Flow<'_>, id: &str) -> Result<Response<ProxyBody>, Stop> {
    let target = format!("/feeds/2021-06-30/feeds/{id}");
    let (feed, unfinished) = poll(flow, &target).await?;
    let status = feed["processingStatus"].as_str().unwrap_or("").to_string();
    if let Some(retry) = unfinished {
        return Ok(processing("feedId", id, &status, retry));
    }
    let document = feed["resultFeedDocumentId"].as_str().map(str::to_string);
    let Some(document) = document.filter(|_| status == "DONE" || status == "FATAL") else {
        return Err(ProxyError::Processing {
            what: "feed",
            id: id.to_string(),
            reason: reason(&status).to_string(),
            status,
            document: None,
        }
        .into());
    };
    // A FATAL feed's processing report, when there is one, is what says why: it is streamed
    // like a DONE one's.
    let target = format!("/feeds/2021-06-30/documents/{document}");
    let answer = flow.call(Method::GET, &target, None).await?.json()?;
    let (url, gzip) = document_location(&answer)?;
    let download = flow.download(&url).await?;
    let content_type = download.headers().get(http::header::CONTENT_TYPE).cloned();
    let body = Transcoded::new(download.bytes_stream(), gzip, None);
    let frames = body.map(|chunk| chunk.map(Frame::data));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let h = resp.headers_mut();
    if let Some(ct) = content_type {
        h.insert(http::header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(&document) {
        h.insert(DOCUMENT_ID_HEADER, v);
    }
    h.insert(
        COMPRESSION_HEADER,
        HeaderValue::from_static(if gzip { "GZIP" } else { "none" }),
    );
    if let Ok(v) = HeaderValue::from_str(&status) {
        h.insert(super::PROCESSING_HEADER, v);
    }
    Ok(resp)
}
