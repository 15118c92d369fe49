//! `GET /_proxy/reports/{reportId}/document` and `GET /_proxy/documents/{reportDocumentId}`.

use futures_util::StreamExt;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::{
    poll, processing, Flow, Stop, CHARSET_HEADER, CHARSET_SOURCE_HEADER, COMPRESSION_HEADER,
    DOCUMENT_ID_HEADER, REPORT_TYPE_HEADER,
};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::transcode::{self, Transcoded};

/// How much of a FATAL report's error document is quoted in the error.
const MAX_ERROR_DOCUMENT: usize = 64 * 1024;

/// The model's words for the end states (reports_2021-06-30.json, `processingStatus`).
fn reason(status: &str) -> &'static str {
    match status {
        "CANCELLED" => {
            "The report was cancelled. There are two ways a report can be cancelled: an explicit \
             cancellation request before the report starts processing, or an automatic \
             cancellation if there is no data to return."
        }
        _ => "The report was aborted due to a fatal error.",
    }
}

/// What the flow knows about the report a document belongs to.
#[derive(Default)]
struct About {
    report_type: Option<String>,
    marketplaces: Vec<String>,
}

pub(super) async fn report_document(
    flow: &Flow<'_>,
    id: &str,
) -> Result<Response<ProxyBody>, Stop> {
    let decode = flow.decode()?;
    let target = format!("/reports/2021-06-30/reports/{id}");
    let (report, unfinished) = poll(flow, &target).await?;
    let status = report["processingStatus"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if let Some(retry) = unfinished {
        return Ok(processing("reportId", id, &status, retry));
    }
    let document = report["reportDocumentId"].as_str().map(str::to_string);
    if status != "DONE" {
        // A FATAL report may come with a document that says why.
        let said = match (&status[..], &document) {
            ("FATAL", Some(doc)) => error_document(flow, doc).await.ok(),
            _ => None,
        };
        return Err(ProxyError::Processing {
            what: "report",
            id: id.to_string(),
            reason: reason(&status).to_string(),
            status,
            document: said,
        }
        .into());
    }
    let Some(document) = document else {
        return Err(ProxyError::Upstream(format!(
            "getReport says report {id} is DONE but names no reportDocumentId"
        ))
        .into());
    };
    let about = About {
        report_type: report["reportType"].as_str().map(str::to_string),
        marketplaces: report["marketplaceIds"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    };
    stream(flow, &document, &about, decode).await
}

pub(super) async fn document(flow: &Flow<'_>, id: &str) -> Result<Response<ProxyBody>, Stop> {
    let decode = flow.decode()?;
    // The report is not looked up here, so its marketplace can be given for the charset rule.
    let about = About {
        report_type: None,
        marketplaces: flow
            .param("marketplaceId")
            .map(|m| vec![m.to_string()])
            .unwrap_or_default(),
    };
    stream(flow, id, &about, decode).await
}

/// getReportDocument, then the document itself, streamed.
async fn stream(
    flow: &Flow<'_>,
    document: &str,
    about: &About,
    decode: bool,
) -> Result<Response<ProxyBody>, Stop> {
    let target = format!("/reports/2021-06-30/documents/{document}");
    let answer = flow.call(Method::GET, &target, None).await?.json()?;
    let (url, gzip) = document_location(&answer)?;
    let download = flow.download(&url).await?;
    let content_type = download
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let named = content_type
        .as_deref()
        .and_then(transcode::charset_param)
        .map(str::to_string);
    let marketplaces: Vec<&str> = about.marketplaces.iter().map(String::as_str).collect();
    let (encoding, charset, source) =
        match named.as_deref().map(|n| (n, transcode::encoding_for(n))) {
            Some((n, Some(e))) => (e, n.to_string(), "content-type"),
            Some((n, None)) if decode => {
                return Err(ProxyError::DocumentHost(format!(
                    "a document in charset `{}`, which the proxy cannot decode; ask without \
                 decode=utf-8 for its bytes",
                    crate::logging::capped(n)
                ))
                .into())
            }
            Some((n, None)) => (encoding_rs::UTF_8, n.to_string(), "content-type"),
            None => {
                let e = transcode::default_encoding(&marketplaces, about.report_type.as_deref());
                (e, e.name().to_string(), "rule")
            }
        };
    let length = download.content_length();
    let body = Transcoded::new(download.bytes_stream(), gzip, decode.then_some(encoding));
    let frames = body.map(|chunk| chunk.map(Frame::data));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    let out_type = if decode {
        let media = content_type
            .as_deref()
            .and_then(|c| c.split(';').next())
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .unwrap_or("text/plain");
        Some(format!("{media}; charset=utf-8"))
    } else {
        content_type.clone()
    };
    if let Some(v) = out_type.and_then(|t| HeaderValue::from_str(&t).ok()) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let (Some(len), false, false) = (length, gzip, decode) {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let mut set = |name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(DOCUMENT_ID_HEADER, document);
    if let Some(t) = &about.report_type {
        set(REPORT_TYPE_HEADER, t);
    }
    set(CHARSET_HEADER, &charset);
    set(CHARSET_SOURCE_HEADER, source);
    set(COMPRESSION_HEADER, if gzip { "GZIP" } else { "none" });
    Ok(resp)
}

/// `url` and whether `compressionAlgorithm` is GZIP (the only one the model names).
pub(super) fn document_location(answer: &serde_json::Value) -> Result<(String, bool), Stop> {
    let url = answer["url"]
        .as_str()
        .ok_or_else(|| ProxyError::Upstream("the document answer names no url".into()))?;
    let gzip = match answer["compressionAlgorithm"].as_str() {
        None => false,
        Some("GZIP") => true,
        Some(other) => {
            return Err(ProxyError::Upstream(format!(
                "the document is compressed with {}, which the proxy does not know",
                crate::logging::capped(other)
            ))
            .into())
        }
    };
    Ok((url.to_string(), gzip))
}

/// A FATAL report's document, as text (at most [`MAX_ERROR_DOCUMENT`] bytes of it).
async fn error_document(flow: &Flow<'_>, document: &str) -> Result<String, Stop> {
    let target = format!("/reports/2021-06-30/documents/{document}");
    let answer = flow.call(Method::GET, &target, None).await?.json()?;
    let (url, gzip) = document_location(&answer)?;
    let download = flow.download(&url).await?;
    let mut body = Transcoded::new(download.bytes_stream(), gzip, None);
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|e| ProxyError::DocumentHost(format!("the error document broke off: {e}")))?;
        text.extend_from_slice(&chunk);
        if text.len() >= MAX_ERROR_DOCUMENT {
            text.truncate(MAX_ERROR_DOCUMENT);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&text).trim_end().to_string())
}
