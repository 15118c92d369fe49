//! Reports and feeds in one call: `/_proxy/reports/{id}/document`, `/_proxy/documents/{id}`,
//! `POST /_proxy/feeds`, `/_proxy/feeds/{id}/result`, against the simulator's reports, feeds
//! and document host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use spapi_proxy::sim::documents::{
    CANCELLED_REPORT, EU_REPORT, EU_REPORT_TEXT, FATAL_REPORT, FATAL_REPORT_TEXT, JP_REPORT,
    JP_REPORT_TEXT, SLOW_REPORT,
};
use spapi_proxy::sim::hex;

use crate::support::{json, Harness};

/// JP_REPORT_TEXT in Windows-31J as Python's `codecs` encodes it (`text.encode("cp932")`): a
/// reference made by another encoder than the one the simulator and the proxy use.
const JP_REPORT_CP932_HEX: &str = "6974656d2d6e616d650973656c6c65722d736b75097072696365097175616e746974790a835883658393838c835890bb209085939b203530306d6c81698375838b815b816a094a502d424f54544c452d303109313938300931320a90dc82e882bd82bd82dd8e502081608c7997ca81602090b0894a8c939770094a502d554d422d3032093234383009330a97ce928383658342815b836f8362834f81759695928393fc82e88176353091dc094a502d5445412d3033093938300934300a";

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Nothing that reached the document host carried an SP-API header.
fn document_host_saw_no_spapi_header(h: &Harness) {
    let seen = h.sim.document_host_requests();
    assert!(!seen.is_empty(), "the document host was never asked");
    for r in seen {
        assert!(
            !r.header_names.iter().any(|n| n.starts_with("x-amz")
                || n == "authorization"
                || n.starts_with("x-spapi")),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn a_report_document_comes_gunzipped_in_one_call() {
    let h = Harness::start().await;
    let resp = h.get("/_proxy/reports/50001/document").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-spapi-report-type"),
        "GET_MERCHANT_LISTINGS_ALL_DATA"
    );
    assert_eq!(
        header(&resp, "x-spapi-document-id"),
        "amzn1.spdoc.1.4.na.50001"
    );
    assert_eq!(header(&resp, "x-spapi-document-compression"), "GZIP");
    assert_eq!(header(&resp, "x-spapi-document-charset"), "utf8");
    assert_eq!(
        header(&resp, "x-spapi-document-charset-source"),
        "content-type"
    );
    assert_eq!(
        resp.text().await.unwrap(),
        "item-name\tseller-sku\tprice\tquantity\nWidget\tW-1\t9.99\t3\n"
    );
    document_host_saw_no_spapi_header(&h);
    // getReport, then getReportDocument, both through the pipeline with the seller's token.
    let ops: Vec<_> = h
        .sim
        .requests()
        .iter()
        .filter_map(|r| r.operation.clone())
        .collect();
    assert_eq!(
        ops,
        [
            "reports_2021-06-30.getReport",
            "reports_2021-06-30.getReportDocument"
        ]
    );
}

#[tokio::test]
async fn a_restricted_report_type_gets_an_rdt_and_a_plain_one_does_not() {
    let h = Harness::start().await;
    let plain = h.get("/_proxy/reports/50001/document").await;
    assert_eq!(plain.status(), 200);
    assert!(h.sim.rdt_mints().is_empty(), "{:?}", h.sim.rdt_mints());
    let restricted = h.get("/_proxy/reports/90001/document").await;
    assert_eq!(restricted.status(), 200);
    assert_eq!(
        header(&restricted, "x-spapi-report-type"),
        "GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING"
    );
    assert!(restricted.text().await.unwrap().contains("Sam Rivera"));
    let mints = h.sim.rdt_mints();
    assert_eq!(mints.len(), 1, "{mints:?}");
    assert_eq!(
        mints[0].path,
        "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.90001"
    );
}

#[tokio::test]
async fn a_report_not_done_in_time_gives_202_with_retry_after_then_its_document() {
    let h = Harness::start().await;
    let path = format!("/_proxy/reports/{SLOW_REPORT}/document");
    let waiting = h.get_with(&path, "x-spapi-max-wait", "0").await;
    assert_eq!(waiting.status(), 202);
    let retry: u64 = header(&waiting, "retry-after").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(header(&waiting, "x-spapi-processing-status"), "IN_PROGRESS");
    let body = json(waiting).await;
    assert_eq!(body["reportId"], SLOW_REPORT);
    assert_eq!(body["processingStatus"], "IN_PROGRESS");
    // Waiting long enough, the same call gives the document.
    let done = h.get_with(&path, "x-spapi-max-wait", "20").await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().starts_with("item-name"));
}

#[tokio::test]
async fn fatal_and_cancelled_reports_give_amazons_reason() {
    let h = Harness::start().await;
    let fatal = h
        .get(&format!("/_proxy/reports/{FATAL_REPORT}/document"))
        .await;
    assert_eq!(fatal.status(), 422);
    assert_eq!(header(&fatal, "x-spapi-proxy-error"), "report_fatal");
    let body = json(fatal).await;
    let e = &body["errors"][0];
    assert_eq!(e["code"], "ReportFatal");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("The report was aborted due to a fatal error."),
        "{e}"
    );
    // The error document's own words.
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .contains(FATAL_REPORT_TEXT.trim_end()),
        "{e}"
    );

    let cancelled = h
        .get(&format!("/_proxy/reports/{CANCELLED_REPORT}/document"))
        .await;
    assert_eq!(cancelled.status(), 422);
    assert_eq!(
        header(&cancelled, "x-spapi-proxy-error"),
        "report_cancelled"
    );
    let body = json(cancelled).await;
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("automatic cancellation if there is no data to return"));
}

#[tokio::test]
async fn shift_jis_and_cp1252_documents_decode_to_utf8_byte_exact() {
    let h = Harness::start().await;
    // Raw: the document's own bytes, as Windows-31J.
    let raw = h
        .get(&format!("/_proxy/reports/{JP_REPORT}/document"))
        .await;
    assert_eq!(raw.status(), 200);
    // The download named no charset: the Japanese marketplace's rule chose it.
    assert_eq!(header(&raw, "x-spapi-document-charset"), "Shift_JIS");
    assert_eq!(header(&raw, "x-spapi-document-charset-source"), "rule");
    assert_eq!(hex(&raw.bytes().await.unwrap()), JP_REPORT_CP932_HEX);
    // Decoded: exactly the seller's text in UTF-8.
    let decoded = h
        .get(&format!(
            "/_proxy/reports/{JP_REPORT}/document?decode=utf-8"
        ))
        .await;
    assert_eq!(decoded.status(), 200);
    assert_eq!(
        header(&decoded, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        &decoded.bytes().await.unwrap()[..],
        JP_REPORT_TEXT.as_bytes()
    );

    let eu = h
        .get(&format!(
            "/_proxy/reports/{EU_REPORT}/document?decode=utf-8"
        ))
        .await;
    assert_eq!(header(&eu, "x-spapi-document-charset"), "Cp1252");
    assert_eq!(
        header(&eu, "x-spapi-document-charset-source"),
        "content-type"
    );
    assert_eq!(&eu.bytes().await.unwrap()[..], EU_REPORT_TEXT.as_bytes());

    // A known document id, with the marketplace given for the rule.
    let by_id = h
        .get(&format!(
            "/_proxy/documents/amzn1.spdoc.1.4.na.{JP_REPORT}?decode=utf-8&marketplaceId=A1VC38T7YXB528"
        ))
        .await;
    assert_eq!(by_id.status(), 200);
    assert_eq!(&by_id.bytes().await.unwrap()[..], JP_REPORT_TEXT.as_bytes());
    let bad = h
        .get(&format!(
            "/_proxy/reports/{JP_REPORT}/document?decode=latin-1"
        ))
        .await;
    assert_eq!(bad.status(), 400);
}

/// A fake host that counts every connection it is offered.
async fn counting_host() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, count)
}

#[tokio::test]
async fn a_client_supplied_url_is_never_fetched() {
    let h = Harness::start().await;
    let (evil, count) = counting_host().await;
    let encoded: String = form_urlencoded::byte_serialize(format!("{evil}/x").as_bytes()).collect();
    // In the id: refused before any call.
    let in_id = h.get(&format!("/_proxy/documents/{encoded}")).await;
    assert_eq!(in_id.status(), 400);
    assert_eq!(header(&in_id, "x-spapi-proxy-error"), "bad_request");
    // In the query and in headers: ignored; the document comes from where Amazon said.
    let resp = h
        .client
        .get(h.url(&format!(
            "/_proxy/reports/50001/document?url={encoded}&documentUrl={encoded}"
        )))
        .header("x-spapi-document-url", format!("{evil}/x"))
        .header("location", format!("{evil}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let feed = h
        .client
        .post(h.url(&format!(
            "/_proxy/feeds?feedType=JSON_LISTINGS_FEED&marketplaceIds=ATVPDKIKX0DER&url={encoded}"
        )))
        .header("content-type", "application/json; charset=UTF-8")
        .header("x-spapi-upload-url", format!("{evil}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 202);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "the client's URL was fetched"
    );
}

#[tokio::test]
async fn a_feed_goes_up_in_one_call_and_its_result_comes_back() {
    let h = Harness::start().await;
    let content = br#"{"header":{"sellerId":"A3SIMSELLER","version":"2.0"},"messages":[{"messageId":1,"sku":"W-1","operationType":"PATCH","productType":"PRODUCT","patches":[{"op":"replace","path":"/attributes/fulfillment_availability","value":[{"fulfillment_channel_code":"DEFAULT","quantity":5}]}]}]}"#.repeat(2000);
    let resp = h
        .client
        .post(h.url("/_proxy/feeds?feedType=JSON_LISTINGS_FEED&marketplaceIds=ATVPDKIKX0DER"))
        .header("content-type", "application/json; charset=UTF-8")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body = json(resp).await;
    let feed_id = body["feedId"].as_str().unwrap().to_string();
    let uploads = h.sim.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].content_type, "application/json; charset=UTF-8");
    assert_eq!(uploads[0].bytes, content.len() as u64);
    assert_eq!(uploads[0].sha256, hex(&Sha256::digest(&content)));
    assert_eq!(uploads[0].feed_document_id, body["feedDocumentId"]);
    document_host_saw_no_spapi_header(&h);

    let path = format!("/_proxy/feeds/{feed_id}/result");
    let early = h.get_with(&path, "x-spapi-max-wait", "0").await;
    assert_eq!(early.status(), 202);
    assert!(header(&early, "retry-after").parse::<u64>().unwrap() >= 1);
    let result = h.get_with(&path, "x-spapi-max-wait", "20").await;
    assert_eq!(result.status(), 200);
    assert_eq!(header(&result, "x-spapi-processing-status"), "DONE");
    let report = json(result).await;
    assert_eq!(report["header"]["feedId"], feed_id.as_str());
    assert_eq!(report["summary"]["messagesAccepted"], 1);
}

#[tokio::test]
async fn a_feed_without_a_length_or_type_is_refused_before_any_call() {
    let h = Harness::start().await;
    let url = h.url("/_proxy/feeds?feedType=JSON_LISTINGS_FEED&marketplaceIds=ATVPDKIKX0DER");
    // Chunked: no length to give the document host.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"{}"),
    )]);
    let chunked = h
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 411);
    assert_eq!(header(&chunked, "x-spapi-proxy-error"), "length_required");
    let untyped = h.client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(untyped.status(), 400);
    let no_type = h
        .client
        .post(h.url("/_proxy/feeds?marketplaceIds=ATVPDKIKX0DER"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 400);
    assert!(h.sim.requests().is_empty(), "nothing reached Amazon");
    assert!(h.sim.uploads().is_empty());
}
