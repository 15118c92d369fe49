//! Report and feed documents as Amazon hands them out, and the document host (S3) they live on,
//! served by the simulator itself at presigned-style URLs.
//!
//! Sources: the reports and feeds models (`reports_2021-06-30.json`, `feeds_2021-06-30.json`:
//! statuses, fields, status codes), Amazon's "Verify that report processing is complete" and
//! "Retrieve automatically generated reports" guides (poll getReport until CANCELLED, DONE or
//! FATAL; the document is fetched from a pre-signed URL, gzipped when `compressionAlgorithm`
//! says so), and public reports of what the document host sends (cited where used).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::fixtures::AmazonAnswer;
use super::{hex, lock};
use crate::body::{full, ProxyBody};

/// Where the simulated document host serves downloads ...
pub const S3_GET: &str = "/_sim/s3/";
/// ... and takes uploads.
pub const S3_PUT: &str = "/_sim/s3-upload/";

/// A report that is IN_PROGRESS for [`SLOW_REPORT_TAKES`] after it is first looked up.
pub const SLOW_REPORT: &str = "60001";
/// How long [`SLOW_REPORT`] takes.
pub const SLOW_REPORT_TAKES: Duration = Duration::from_secs(2);
/// A FATAL report with a document saying why.
pub const FATAL_REPORT: &str = "60002";
/// A CANCELLED report (no data), with no document.
pub const CANCELLED_REPORT: &str = "60003";
/// A Japanese listings report whose download names no charset.
pub const JP_REPORT: &str = "60004";
/// A European listings report in Cp1252.
pub const EU_REPORT: &str = "60006";
/// A large gzipped report: [`BIG_REPORT_BLOCKS`] times [`big_report_block`].
pub const BIG_REPORT: &str = "60007";
/// How many blocks [`BIG_REPORT`] holds.
pub const BIG_REPORT_BLOCKS: usize = 200;

/// The Japanese report's text, as the seller wrote it (the document holds it in Shift_JIS).
pub const JP_REPORT_TEXT: &str = "item-name\tseller-sku\tprice\tquantity\n\
    ステンレス製 水筒 500ml（ブルー）\tJP-BOTTLE-01\t1980\t12\n\
    折りたたみ傘 ～軽量～ 晴雨兼用\tJP-UMB-02\t2480\t3\n\
    緑茶ティーバッグ「抹茶入り」50袋\tJP-TEA-03\t980\t40\n";

/// The European report's text (the document holds it in Cp1252).
pub const EU_REPORT_TEXT: &str = "item-name\tseller-sku\tprice\tquantity\n\
    Piña colada Mischung – 500 g\tEU-MIX-01\t7,99\t10\n\
    Café crème « Étoile »\tEU-CAF-02\t4,50\t25\n";

/// The text of the FATAL report's document. The shape of such a document is not in the
/// models or Amazon's guides (its guides only say a FATAL report "may" have one); this text is
/// the simulator's own, and the proxy passes it on as it is without reading it.
pub const FATAL_REPORT_TEXT: &str =
    "simulator: the report could not be generated for the requested dates\n";

/// One MiB of listing rows, the unit of [`BIG_REPORT`].
pub fn big_report_block() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut out = Vec::with_capacity(1 << 20);
        let mut i = 0u64;
        while out.len() < (1 << 20) {
            let row = format!(
                "Listing {i} colour {}\tSKU-{:08}\t{}.{:02}\t{}\n",
                ["red", "green", "blue", "black"][(i % 4) as usize],
                i.wrapping_mul(7919) % 100_000_000,
                i % 500,
                i % 100,
                i % 37
            );
            out.extend_from_slice(row.as_bytes());
            i += 1;
        }
        out.truncate(1 << 20);
        out
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// What a report is and how it goes.
struct Report {
    report_type: &'static str,
    marketplace: &'static str,
    status: Status,
    document: Option<Document>,
}

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Done,
    /// IN_PROGRESS this long after the first look, then DONE.
    Slow(Duration),
    Fatal,
    Cancelled,
}

#[derive(Clone, Copy)]
struct Document {
    gzip: bool,
    /// The download's `Content-Type`, where a public report shows what the host sends.
    content_type: Option<&'static str>,
    body: Body,
}

#[derive(Clone, Copy)]
enum Body {
    Listings,
    Shipping,
    Japanese,
    European,
    Big,
    Fatal,
}

// What the document host says a download is: `text/plain; charset=utf8` for North American
// listings reports and `text/plain; charset=Cp1252` for European ones (jrl84/amazon-sp-api#144,
// selling-partner-api-models#2748), `text/plain; charset=UTF-8` for others (#2748), and no
// charset at all for some (selling-partner-api-docs#2338).
const UTF8_LOWER: Option<&str> = Some("text/plain; charset=utf8");
const CP1252: Option<&str> = Some("text/plain; charset=Cp1252");
const UTF8: Option<&str> = Some("text/plain; charset=UTF-8");
const NO_CHARSET: Option<&str> = Some("text/plain");

fn report_spec(id: &str) -> Report {
    let done = |report_type, marketplace, document| Report {
        report_type,
        marketplace,
        status: Status::Done,
        document: Some(document),
    };
    let doc = |gzip, content_type, body| Document {
        gzip,
        content_type,
        body,
    };
    match id {
        SLOW_REPORT => Report {
            status: Status::Slow(SLOW_REPORT_TAKES),
            ..done(
                "GET_MERCHANT_LISTINGS_ALL_DATA",
                "ATVPDKIKX0DER",
                doc(false, UTF8_LOWER, Body::Listings),
            )
        },
        FATAL_REPORT => Report {
            status: Status::Fatal,
            ..done(
                "GET_MERCHANT_LISTINGS_ALL_DATA",
                "ATVPDKIKX0DER",
                doc(false, UTF8, Body::Fatal),
            )
        },
        CANCELLED_REPORT => Report {
            report_type: "GET_MERCHANT_LISTINGS_ALL_DATA",
            marketplace: "ATVPDKIKX0DER",
            status: Status::Cancelled,
            document: None,
        },
        JP_REPORT => done(
            "GET_MERCHANT_LISTINGS_ALL_DATA",
            "A1VC38T7YXB528",
            doc(true, NO_CHARSET, Body::Japanese),
        ),
        EU_REPORT => done(
            "GET_MERCHANT_LISTINGS_ALL_DATA",
            "A1PA6795UKMFR9",
            doc(false, CP1252, Body::European),
        ),
        BIG_REPORT => done(
            "GET_MERCHANT_LISTINGS_ALL_DATA",
            "ATVPDKIKX0DER",
            doc(true, UTF8_LOWER, Body::Big),
        ),
        // A restricted report type (the Tokens API guide's list).
        id if id.starts_with('9') => done(
            "GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING",
            "ATVPDKIKX0DER",
            doc(true, UTF8, Body::Shipping),
        ),
        _ => done(
            "GET_MERCHANT_LISTINGS_ALL_DATA",
            "ATVPDKIKX0DER",
            doc(true, UTF8_LOWER, Body::Listings),
        ),
    }
}

/// The report type of a report id (getReportDocument is restricted for some).
pub(super) fn report_type(id: &str) -> &'static str {
    report_spec(id).report_type
}

/// `amzn1.spdoc.1.4.na.REPORTID` -> `REPORTID`.
fn report_of_document(document: &str) -> &str {
    document.rsplit('.').next().unwrap_or("")
}

/// Feed documents and feeds, what was uploaded, and what the document host was sent.
#[derive(Debug, Default)]
pub(super) struct Documents {
    /// When each report was first looked up (slow reports finish some time after).
    first_seen: Mutex<HashMap<String, Instant>>,
    /// Feed document id -> the content type it was created for, and what was uploaded.
    feed_documents: Mutex<HashMap<String, (String, Option<Upload>)>>,
    /// Feed id -> (input feed document id, created).
    feeds: Mutex<HashMap<String, (String, Instant)>>,
    /// Every request the document host received.
    host_requests: Mutex<Vec<HostRequest>>,
    counter: AtomicU64,
}

/// What the document host received for an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The feed document it was for.
    pub feed_document_id: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// How many bytes, and their SHA-256 (hex).
    pub bytes: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
}

/// A request the document host received.
#[derive(Debug, Clone)]
pub struct HostRequest {
    /// GET or PUT.
    pub method: Method,
    /// Path and query.
    pub path_and_query: String,
    /// Header names, lowercase.
    pub header_names: Vec<String>,
}

impl Documents {
    /// The uploads received so far.
    pub(super) fn uploads(&self) -> Vec<Upload> {
        lock(&self.feed_documents)
            .values()
            .filter_map(|(_, u)| u.clone())
            .collect()
    }

    pub(super) fn host_requests(&self) -> Vec<HostRequest> {
        lock(&self.host_requests).clone()
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// getReport's answer (reports model: `Report`).
    pub(super) fn report(&self, id: &str) -> Value {
        let spec = report_spec(id);
        let status = match spec.status {
            Status::Done => "DONE",
            Status::Fatal => "FATAL",
            Status::Cancelled => "CANCELLED",
            Status::Slow(takes) => {
                let first = *lock(&self.first_seen)
                    .entry(id.to_string())
                    .or_insert_with(Instant::now);
                if first.elapsed() >= takes {
                    "DONE"
                } else {
                    "IN_PROGRESS"
                }
            }
        };
        let mut report = json!({
            "reportId": id,
            "reportType": spec.report_type,
            "processingStatus": status,
            "marketplaceIds": [spec.marketplace],
            "createdTime": "2026-11-23T10:00:00+00:00",
        });
        // "the response includes a reportDocumentId value if there is report data available"
        // (Verify that report processing is complete); a FATAL report may carry one too.
        if matches!(status, "DONE" | "FATAL") && spec.document.is_some() {
            report["reportDocumentId"] = json!(format!("amzn1.spdoc.1.4.na.{id}"));
        }
        report
    }

    /// getReportDocument's answer (reports model: `ReportDocument`), the URL on this host.
    pub(super) fn report_document(&self, document: &str, host: &str) -> Option<Value> {
        let spec = report_spec(report_of_document(document));
        let doc = spec.document?;
        let mut answer = json!({
            "reportDocumentId": document,
            "url": presigned(host, S3_GET, document, "host"),
        });
        if doc.gzip {
            answer["compressionAlgorithm"] = json!("GZIP");
        }
        Some(answer)
    }

    /// createFeedDocument (feeds model: 201, `CreateFeedDocumentResponse`).
    pub(super) fn create_feed_document(&self, body: &[u8], host: &str) -> Response<ProxyBody> {
        let spec: Option<Value> = serde_json::from_slice(body).ok();
        let Some(content_type) = spec
            .as_ref()
            .and_then(|v| v["contentType"].as_str())
            .map(str::to_string)
        else {
            return AmazonAnswer::InvalidInput.response();
        };
        let id = format!("amzn1.tortuga.3.sim{}.T1", self.next());
        lock(&self.feed_documents).insert(id.clone(), (content_type, None));
        super::fixtures::json_response(
            201,
            json!({
                "feedDocumentId": id,
                // The upload is signed for its content type too (Peddler's feeds helper:
                // "the Host and content-type headers must match the signing").
                "url": presigned(host, S3_PUT, &id, "content-type%3Bhost"),
            }),
        )
    }

    /// createFeed (feeds model: 202, `CreateFeedResponse`).
    pub(super) fn create_feed(&self, body: &[u8]) -> Response<ProxyBody> {
        let spec: Option<Value> = serde_json::from_slice(body).ok();
        let input = spec.as_ref().and_then(|v| {
            v["feedType"].as_str()?;
            v["marketplaceIds"].as_array()?;
            v["inputFeedDocumentId"].as_str().map(str::to_string)
        });
        let Some(input) = input else {
            return AmazonAnswer::InvalidInput.response();
        };
        let id = format!("{}", 80_000 + self.next());
        lock(&self.feeds).insert(id.clone(), (input, Instant::now()));
        super::fixtures::json_response(202, json!({ "feedId": id }))
    }

    /// getFeed (feeds model: `Feed`): IN_QUEUE, then IN_PROGRESS, then DONE with a processing
    /// report; FATAL if nothing was uploaded for it.
    pub(super) fn feed(&self, id: &str) -> Option<Value> {
        let (input, created) = lock(&self.feeds).get(id).cloned()?;
        let uploaded = lock(&self.feed_documents)
            .get(&input)
            .is_some_and(|(_, u)| u.is_some());
        let age = created.elapsed();
        let status = if age < Duration::from_millis(300) {
            "IN_QUEUE"
        } else if age < Duration::from_millis(1000) {
            "IN_PROGRESS"
        } else if uploaded {
            "DONE"
        } else {
            "FATAL"
        };
        let mut feed = json!({
            "feedId": id,
            "feedType": "JSON_LISTINGS_FEED",
            "marketplaceIds": ["ATVPDKIKX0DER"],
            "createdTime": "2026-11-23T10:00:00+00:00",
            "processingStatus": status,
        });
        if status == "DONE" {
            feed["resultFeedDocumentId"] = json!(format!("amzn1.tortuga.3.result.{id}"));
        }
        Some(feed)
    }

    /// getFeedDocument (feeds model: `FeedDocument`): the processing report, gzipped.
    pub(super) fn feed_document(&self, id: &str, host: &str) -> Option<Value> {
        id.starts_with("amzn1.tortuga.3.result.").then(|| {
            json!({
                "feedDocumentId": id,
                "url": presigned(host, S3_GET, id, "host"),
                "compressionAlgorithm": "GZIP",
            })
        })
    }

    /// The document host: downloads and uploads at presigned URLs.
    pub(super) async fn host(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let path = req.uri().path().to_string();
        lock(&self.host_requests).push(HostRequest {
            method: req.method().clone(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |p| p.as_str().to_string()),
            header_names: req.headers().keys().map(|k| k.to_string()).collect(),
        });
        // A presigned URL signs `host` (and for uploads, `content-type`) only: any other
        // x-amz-* header, an SP-API access token among them, is refused.
        let unsigned: Vec<&str> = req
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with("x-amz-") || *k == "authorization")
            .collect();
        if !unsigned.is_empty() {
            return s3_headers_not_signed(&unsigned.join(", "));
        }
        if req.method() == Method::GET {
            if let Some(key) = path.strip_prefix(S3_GET) {
                return self.download(key);
            }
        }
        if req.method() == Method::PUT {
            if let Some(key) = path.strip_prefix(S3_PUT) {
                return self.upload(key.to_string(), req).await;
            }
        }
        s3_error(404, "NoSuchKey", "The specified key does not exist.")
    }

    fn download(&self, key: &str) -> Response<ProxyBody> {
        if let Some(feed) = key.strip_prefix("amzn1.tortuga.3.result.") {
            // The Listings feed processing report schema: header, issues, summary.
            let report = json!({
                "header": {"sellerId": "A3SIMSELLER", "version": "2.0", "feedId": feed},
                "issues": [],
                "summary": {"errors": 0, "warnings": 0, "messagesProcessed": 1,
                            "messagesAccepted": 1, "messagesInvalid": 0},
            });
            return bytes_response(gzip(report.to_string().as_bytes()), None);
        }
        let spec = report_spec(report_of_document(key));
        let Some(doc) = spec.document else {
            return s3_error(404, "NoSuchKey", "The specified key does not exist.");
        };
        let text: Vec<u8> = match doc.body {
            Body::Listings => b"item-name\tseller-sku\tprice\tquantity\nWidget\tW-1\t9.99\t3\n".to_vec(),
            Body::Shipping => b"order-id\tbuyer-name\tship-address-1\n902-3159896-1390916\tSam Rivera\t1200 Pine St\n".to_vec(),
            Body::Japanese => encoding_rs::SHIFT_JIS.encode(JP_REPORT_TEXT).0.into_owned(),
            Body::European => encoding_rs::WINDOWS_1252.encode(EU_REPORT_TEXT).0.into_owned(),
            Body::Fatal => FATAL_REPORT_TEXT.as_bytes().to_vec(),
            Body::Big => return big_report(doc.content_type),
        };
        let body = if doc.gzip { gzip(&text) } else { text };
        bytes_response(body, doc.content_type)
    }

    async fn upload(&self, key: String, req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(expected) = lock(&self.feed_documents).get(&key).map(|(c, _)| c.clone()) else {
            return s3_error(404, "NoSuchKey", "The specified key does not exist.");
        };
        let content_type = header(req.headers(), http::header::CONTENT_TYPE);
        if content_type.as_deref() != Some(expected.as_str()) {
            // The signature covers the content type: another one does not match it.
            return s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            );
        }
        if !req.headers().contains_key(http::header::CONTENT_LENGTH) {
            return s3_error(
                411,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
            );
        }
        let Some((sha256, total)) = super::hash_body(req.into_body()).await else {
            return s3_error(
                400,
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            );
        };
        let upload = Upload {
            feed_document_id: key.clone(),
            content_type: expected,
            bytes: total,
            sha256,
        };
        if let Some(entry) = lock(&self.feed_documents).get_mut(&key) {
            entry.1 = Some(upload);
        }
        // PutObject's success: 200 with an empty body (Amazon S3 API reference, PutObject; the
        // ETag it also sends is left out, as the proxy does not read it).
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::OK;
        resp
    }
}

fn header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A presigned-style URL on this host: SigV4 query parameters as S3's presigned URLs carry
/// them (selling-partner-api-models#2648 shows one of Amazon's report URLs).
fn presigned(host: &str, prefix: &str, key: &str, signed_headers: &str) -> String {
    let signature = hex(&Sha256::digest(format!("{prefix}{key}").as_bytes()));
    format!(
        "http://{host}{prefix}{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261123T100000Z\
         &X-Amz-SignedHeaders={signed_headers}&X-Amz-Expires=300\
         &X-Amz-Credential=AKIASIMULATOR%2F20261123%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Signature={signature}"
    )
}

fn bytes_response(body: Vec<u8>, content_type: Option<&'static str>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    if let Some(ct) = content_type {
        resp.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp
}

/// [`BIG_REPORT`]: the same gzip member [`BIG_REPORT_BLOCKS`] times (a gzip file may hold
/// several members, RFC 1952 2.2), streamed without being held whole.
fn big_report(content_type: Option<&'static str>) -> Response<ProxyBody> {
    static MEMBER: OnceLock<Bytes> = OnceLock::new();
    let member = MEMBER
        .get_or_init(|| Bytes::from(gzip(big_report_block())))
        .clone();
    let total = member.len() as u64 * BIG_REPORT_BLOCKS as u64;
    let frames = futures_util::stream::iter(
        (0..BIG_REPORT_BLOCKS)
            .map(move |_| Ok::<_, crate::body::BoxError>(Frame::data(member.clone()))),
    );
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(total));
    if let Some(ct) = content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    resp
}

/// S3's error document (Amazon S3 API reference, "Error responses": the XML shape and the codes
/// `NoSuchKey`, `SignatureDoesNotMatch`, `MissingContentLength`, `IncompleteBody`).
fn s3_error(status: u16, code: &str, message: &str) -> Response<ProxyBody> {
    xml_error(
        status,
        &format!("<Code>{code}</Code><Message>{message}</Message>"),
    )
}

/// S3's refusal of a presigned request carrying headers the URL did not sign, as S3 sends it
/// (soto-project/soto#374, aws/aws-sdk-js#896).
fn s3_headers_not_signed(names: &str) -> Response<ProxyBody> {
    xml_error(
        403,
        &format!(
            "<Code>AccessDenied</Code><Message>There were headers present in the request which were not signed</Message><HeadersNotSigned>{names}</HeadersNotSigned>"
        ),
    )
}

fn xml_error(status: u16, inner: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>{inner}<RequestId>SIMREQUEST0001</RequestId><HostId>sim</HostId></Error>"
    );
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}
