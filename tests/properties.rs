//! Property tests of what hostile input reaches first: request-target rules, the matcher and
//! header rewriting. Bounded (a few thousand cases each) so that CI runs them in seconds.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use proptest::prelude::*;
use spapi_proxy::forward::upstream_headers;
use spapi_proxy::operations::Catalog;
use spapi_proxy::target::check_path;

const CASES: u32 = 4000;

/// Paths made of SP-API-like segments with dots, escapes and odd characters mixed in.
fn paths() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("orders".to_string()),
        Just("v0".to_string()),
        Just("2021-06-30".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e%2E".to_string()),
        Just(String::new()),
        "[a-zA-Z0-9%.~_:@!$&'()*+,;={}\\\\\"<> -]{0,10}",
    ];
    (prop::collection::vec(segment, 0..7), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = format!("/{}", segs.join("/"));
        if trailing {
            p.push('/');
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// An accepted path means one thing: a URL parser keeps it byte for byte (no dot
    /// segments resolved, nothing re-encoded), and the matcher finds at most an operation
    /// whose template has as many segments.
    #[test]
    fn an_accepted_path_is_what_the_upstream_receives(path in paths()) {
        if check_path(&path).is_ok() {
            let url = reqwest::Url::parse(&format!("http://upstream.example{path}")).unwrap();
            prop_assert_eq!(url.path(), path.as_str());
            let segments = path.trim_start_matches('/').trim_end_matches('/').split('/').count();
            for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                if let Some(op) = Catalog::builtin().find(&method, &path) {
                    let template = op.template.trim_start_matches('/').split('/').count();
                    prop_assert_eq!(template, segments, "{} {}", path, op.template);
                }
            }
        }
    }

    /// No string at all makes the rules or the matcher panic.
    #[test]
    fn arbitrary_text_never_panics(path in "\\PC{0,60}") {
        let _ = check_path(&path);
        let _ = Catalog::builtin().find(&Method::GET, &path);
    }

    /// Whatever headers a client sends, Amazon gets exactly one token, date and user-agent of
    /// the proxy's, and none of the proxy's own, hop-by-hop or credential headers.
    #[test]
    fn header_rewriting_holds_for_any_headers(
        pairs in prop::collection::vec(
            (
                prop_oneof![
                    Just("x-amz-access-token".to_string()),
                    Just("authorization".to_string()),
                    Just("connection".to_string()),
                    Just("host".to_string()),
                    Just("user-agent".to_string()),
                    Just("x-spapi-proxy-key".to_string()),
                    Just("transfer-encoding".to_string()),
                    "[a-z][a-z0-9-]{0,12}",
                ],
                "[ -~]{0,40}",
            ),
            0..20,
        )
    ) {
        let mut inbound = HeaderMap::new();
        for (name, value) in &pairs {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                inbound.append(n, v);
            }
        }
        let host = HeaderValue::from_static("sellingpartnerapi-na.amazon.com");
        let out = upstream_headers(&inbound, &HeaderValue::from_static("Atza|ours"), std::time::Instant::now(), &host);
        prop_assert_eq!(out.get_all("x-amz-access-token").iter().count(), 1);
        prop_assert_eq!(out.get_all("x-amz-date").iter().count(), 1);
        prop_assert_eq!(out.get_all("user-agent").iter().count(), 1);
        prop_assert!(out["user-agent"].len() <= 500);
        prop_assert_eq!(out.get_all("host").iter().collect::<Vec<_>>(), vec![&host]);
        for gone in ["authorization", "connection", "transfer-encoding", "keep-alive", "te", "upgrade"] {
            prop_assert!(out.get(gone).is_none(), "{} was forwarded", gone);
        }
        prop_assert!(out.keys().all(|k| !k.as_str().starts_with("x-spapi-")));
        for listed in inbound.get_all("connection").iter().filter_map(|v| v.to_str().ok()) {
            for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                prop_assert!(out.get(name).is_none() || name.eq_ignore_ascii_case("x-amz-access-token") || name.eq_ignore_ascii_case("x-amz-date") || name.eq_ignore_ascii_case("user-agent"), "{} named in Connection was forwarded", name);
            }
        }
    }
}
