//! Several sellers across two regions: one simulator per region (sharing one LWA), one proxy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use spapi_proxy::config::Config;
use spapi_proxy::proxy::Proxy;
use spapi_proxy::sim::{self, Simulator};

use crate::support::{json, Harness};

const ACME: &str = "Atzr|acme-refresh";
const BETA: &str = "Atzr|beta-refresh";
const GAMMA: &str = "Atzr|gamma-refresh";
const DELTA: &str = "Atzr|delta-refresh";
const ACME_KEY: &str = "acme-only-key-0123456789";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

const PARTICIPATIONS: &str = "/sellers/v1/marketplaceParticipations";

/// A proxy for acme (na, default), beta (eu) and gamma (na, token from the environment), in
/// front of an NA simulator (with LWA) and an EU one.
struct Fleet {
    h: Harness,
    eu: Simulator,
    /// What a reload reads.
    toml: Arc<Mutex<String>>,
}

fn sellers_toml(na: &str, eu: &str, extra: &str) -> String {
    format!(
        r#"rate_limit = false
inbound_keys = [{{ key = "{ACME_KEY}", sellers = ["acme"] }}, "{ADMIN_KEY}"]

[endpoints]
na = "{na}"
eu = "{eu}"

[sellers.acme]
refresh_token = "{ACME}"
region = "na"
selling_partner_id = "A1ACME"
default = true

[sellers.beta]
refresh_token = "{BETA}"
region = "eu"

[sellers.gamma]
refresh_token_env = "GAMMA_REFRESH_TOKEN"
region = "na"
{extra}"#
    )
}

fn env() -> HashMap<String, String> {
    [
        ("SPAPI_CLIENT_ID", sim::SIM_CLIENT_ID.to_string()),
        ("SPAPI_CLIENT_SECRET", sim::SIM_CLIENT_SECRET.to_string()),
        ("GAMMA_REFRESH_TOKEN", GAMMA.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn load(
    toml: &str,
    extra_env: &[(&str, &str)],
) -> Result<Config, spapi_proxy::config::ConfigError> {
    let mut env = env();
    for (k, v) in extra_env {
        env.insert(k.to_string(), v.to_string());
    }
    Config::from_toml_str(toml, "sellers.toml", &|k| env.get(k).cloned())
}

impl Fleet {
    async fn start(extra: &str) -> Fleet {
        Fleet::start_with(extra, &[]).await
    }

    async fn start_with(extra: &str, extra_env: &[(&str, &str)]) -> Fleet {
        let na = Simulator::start().await.unwrap();
        for rt in [ACME, BETA, GAMMA] {
            na.add_seller(rt);
        }
        let eu = na.start_region().await.unwrap();
        let mut toml = sellers_toml(&na.url(), &eu.url(), extra);
        toml = toml.replace(
            "[endpoints]",
            &format!("token_url = \"{}\"\n\n[endpoints]", na.token_url()),
        );
        let config = load(&toml, extra_env).expect("valid sellers config");
        let shared = Arc::new(Mutex::new(toml));
        let source = Arc::clone(&shared);
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let proxy = Proxy::new(&config).unwrap().with_source(Box::new(move || {
            let text = source.lock().unwrap().clone();
            let pairs: Vec<(&str, &str)> = extra_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            load(&text, &pairs)
        }));
        Fleet {
            h: Harness::with_proxy(na, proxy, &config).await,
            eu,
            toml: shared,
        }
    }

    fn na(&self) -> &Simulator {
        &self.h.sim
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self
            .h
            .client
            .get(self.h.url(path))
            .header("x-spapi-proxy-key", ADMIN_KEY);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn reload(&self) -> reqwest::Response {
        self.h
            .client
            .post(self.h.url("/_proxy/reload"))
            .header("x-spapi-proxy-key", ADMIN_KEY)
            .send()
            .await
            .unwrap()
    }
}

/// The sellers (refresh tokens) whose tokens reached `sim` for `path`.
fn sellers_seen(sim: &Simulator, path: &str) -> Vec<String> {
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with(path))
        .map(|r| r.seller.clone().unwrap_or_else(|| "(none)".into()))
        .collect()
}

#[tokio::test]
async fn each_seller_goes_with_its_own_token_to_its_own_region() {
    let f = Fleet::start("").await;
    for (seller, status) in [("acme", 200), ("beta", 200), ("gamma", 200)] {
        let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", seller)]).await;
        assert_eq!(resp.status(), status, "{seller}");
    }
    // No seller named: the default (acme).
    assert_eq!(f.get(PARTICIPATIONS, &[]).await.status(), 200);
    assert_eq!(
        sellers_seen(f.na(), PARTICIPATIONS),
        [ACME, GAMMA, ACME],
        "NA got acme, gamma and the default"
    );
    assert_eq!(
        sellers_seen(&f.eu, PARTICIPATIONS),
        [BETA],
        "EU got beta alone"
    );
}

#[tokio::test]
async fn an_unknown_seller_is_a_400_naming_the_known_ones() {
    let f = Fleet::start("").await;
    let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", "zeta")]).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().contains_key("x-spapi-proxy-error"));
    let body = json(resp).await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("acme, beta, gamma"), "{message}");
    assert!(f.na().requests().is_empty() && f.eu.requests().is_empty());
}

#[tokio::test]
async fn the_seller_prefix_is_stripped_before_matching_and_forwarding() {
    let f = Fleet::start("").await;
    let resp = f
        .get(
            "/_seller/beta/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9",
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    // getOrders asks for an RDT first (restricted_data = "auto"): minted in beta's region.
    let got: Vec<_> =
        f.eu.requests()
            .into_iter()
            .filter(|r| !r.path_and_query.starts_with("/tokens/"))
            .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].path_and_query,
        "/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9"
    );
    assert_eq!(got[0].operation.as_deref(), Some("ordersV0.getOrders"));
    assert_eq!(got[0].seller.as_deref(), Some(BETA));
    // A prefix and a header that disagree are refused.
    let resp = f
        .get(
            "/_seller/beta/sellers/v1/marketplaceParticipations",
            &[("x-spapi-seller", "acme")],
        )
        .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn marketplaces_choose_the_region_and_mixed_ones_are_refused() {
    let f = Fleet::start("").await;
    // acme's region is NA, but a German marketplace goes to Europe.
    let resp = f
        .get("/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9", &[])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sellers_seen(&f.eu, "/orders/v0/orders"), [ACME]);
    assert!(sellers_seen(f.na(), "/orders/v0/orders").is_empty());

    let resp = f
        .get(
            "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER,A1PA6795UKMFR9",
            &[],
        )
        .await;
    assert_eq!(resp.status(), 400);
    let message = json(resp).await["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("ATVPDKIKX0DER (na)") && message.contains("A1PA6795UKMFR9 (eu)"),
        "{message}"
    );

    // x-spapi-region forces the region.
    let resp = f.get(PARTICIPATIONS, &[("x-spapi-region", "eu")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sellers_seen(&f.eu, PARTICIPATIONS), [ACME]);

    // A held JSON body's marketplaceIds count too (createReport).
    let resp = f
        .h
        .client
        .post(f.h.url("/reports/2021-06-30/reports"))
        .header("x-spapi-proxy-key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body(r#"{"reportType":"GET_MERCHANT_LISTINGS_ALL_DATA","marketplaceIds":["A1VC38T7YXB528","A1PA6795UKMFR9"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "Japan and Germany are two regions");
}

#[tokio::test]
async fn buckets_are_per_seller() {
    let f = Fleet::start("[operations.getOrder]\nrate = 0.5\nburst = 2\n").await;
    // The fleet's config says rate_limit = false; switch it on for this test.
    let toml = f
        .toml
        .lock()
        .unwrap()
        .replace("rate_limit = false", "rate_limit = true");
    *f.toml.lock().unwrap() = toml;
    assert_eq!(f.reload().await.status(), 200);
    let order = "/orders/v0/orders/902-3159896-1390916";
    let no_wait = ("x-spapi-max-wait", "0");
    for _ in 0..2 {
        let resp = f.get(order, &[("x-spapi-seller", "acme"), no_wait]).await;
        assert_eq!(resp.status(), 200);
    }
    let resp = f.get(order, &[("x-spapi-seller", "acme"), no_wait]).await;
    assert_eq!(resp.status(), 429, "acme's bucket is empty");
    assert!(resp.headers().contains_key("x-spapi-proxy-error"));
    // gamma shares acme's region and operation, but not its quota.
    let resp = f.get(order, &[("x-spapi-seller", "gamma"), no_wait]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-spapi-proxy-queued-ms"], "0");

    let quota = json(f.get("/_proxy/quota", &[]).await).await;
    let rows: Vec<(String, String)> = quota["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["operation"] == "ordersV0.getOrder")
        .map(|b| {
            (
                b["seller"].as_str().unwrap().to_string(),
                b["region"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("acme".to_string(), "na".to_string()),
            ("gamma".into(), "na".into())
        ]
    );
}

#[tokio::test]
async fn a_key_limited_to_one_seller_cannot_act_for_another() {
    let f = Fleet::start("").await;
    let as_acme = |seller: &'static str| {
        f.h.client
            .get(f.h.url(PARTICIPATIONS))
            .header("x-spapi-proxy-key", ACME_KEY)
            .header("x-spapi-seller", seller)
            .send()
    };
    assert_eq!(as_acme("acme").await.unwrap().status(), 200);
    let resp = as_acme("beta").await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "seller_not_allowed");
    assert!(f.eu.requests().is_empty(), "beta's region saw nothing");
    // Nor may it reload the proxy.
    let resp =
        f.h.client
            .post(f.h.url("/_proxy/reload"))
            .header("x-spapi-proxy-key", ACME_KEY)
            .send()
            .await
            .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn a_reload_adds_a_seller_while_requests_keep_succeeding() {
    let f = Arc::new(Fleet::start("").await);
    f.na().add_seller(DELTA);
    let before = f.na().lwa_calls();
    let load = {
        let f = Arc::clone(&f);
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                statuses.push(f.get(PARTICIPATIONS, &[]).await.status().as_u16());
            }
            statuses
        })
    };
    let added = format!(
        "{}\n[sellers.delta]\nrefresh_token = \"{DELTA}\"\nregion = \"eu\"\n",
        f.toml.lock().unwrap()
    );
    *f.toml.lock().unwrap() = added;
    let resp = f.reload().await;
    assert_eq!(resp.status(), 200);
    let summary = json(resp).await["summary"].as_str().unwrap().to_string();
    assert!(summary.contains("added: delta"), "{summary}");
    let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", "delta")]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sellers_seen(&f.eu, PARTICIPATIONS), [DELTA]);
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // acme kept its cached token through the reload: one LWA call for acme, one for delta.
    assert_eq!(f.na().lwa_calls() - before, 2);
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let f = Fleet::start("").await;
    let broken = format!(
        "{}\n[sellers.delta]\nregion = \"eu\"\n",
        f.toml.lock().unwrap()
    );
    *f.toml.lock().unwrap() = broken;
    let resp = f.reload().await;
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().contains_key("x-spapi-proxy-error"));
    let message = json(resp).await["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("sellers.delta.refresh_token"), "{message}");
    assert_eq!(f.get(PARTICIPATIONS, &[]).await.status(), 200);
    assert_eq!(
        f.get(PARTICIPATIONS, &[("x-spapi-seller", "delta")])
            .await
            .status(),
        400,
        "delta was never added"
    );
}

#[tokio::test]
async fn a_removed_seller_stops_being_served() {
    let f = Fleet::start("").await;
    assert_eq!(
        f.get(PARTICIPATIONS, &[("x-spapi-seller", "gamma")])
            .await
            .status(),
        200
    );
    let without = f.toml.lock().unwrap().replace(
        "[sellers.gamma]\nrefresh_token_env = \"GAMMA_REFRESH_TOKEN\"\nregion = \"na\"\n",
        "",
    );
    *f.toml.lock().unwrap() = without;
    let resp = f.reload().await;
    assert_eq!(resp.status(), 200);
    assert!(json(resp).await["summary"]
        .as_str()
        .unwrap()
        .contains("removed: gamma"));
    assert_eq!(
        f.get(PARTICIPATIONS, &[("x-spapi-seller", "gamma")])
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn a_revoked_seller_fails_fast_while_the_others_work() {
    let f = Fleet::start("").await;
    for seller in ["acme", "beta"] {
        assert_eq!(
            f.get(PARTICIPATIONS, &[("x-spapi-seller", seller)])
                .await
                .status(),
            200
        );
    }
    f.na().revoke_seller(BETA);
    // SP-API rejects beta's token; the fresh one LWA will not issue: 502 token_refused.
    let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", "beta")]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_refused");
    let calls = f.na().lwa_calls();
    for _ in 0..5 {
        let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", "beta")]).await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-spapi-proxy-error"], "token_refused");
    }
    assert_eq!(
        f.na().lwa_calls(),
        calls,
        "no LWA call while beta is marked refused"
    );
    assert_eq!(
        f.get(PARTICIPATIONS, &[("x-spapi-seller", "acme")])
            .await
            .status(),
        200
    );

    let ready = f.get("/_proxy/ready?seller=beta", &[]).await;
    assert_eq!(ready.status(), 503);
    let ready = f.get("/_proxy/ready", &[]).await;
    assert_eq!(ready.status(), 200, "the other sellers are ready");
    let body = json(ready).await;
    assert_eq!(body["sellers"]["beta"]["status"], "not ready");
    assert_eq!(body["sellers"]["acme"]["status"], "ready");
    let status = json(f.get("/_proxy/status", &[]).await).await;
    assert_eq!(status["sellers"]["beta"]["regions"]["eu"]["healthy"], false);
    assert_eq!(status["sellers"]["acme"]["regions"]["na"]["healthy"], true);
}

#[tokio::test]
async fn the_next_client_secret_takes_over_when_lwa_refuses_the_current_one() {
    let f = Fleet::start_with("", &[("SPAPI_NEXT_CLIENT_SECRET", "rotated-secret")]).await;
    // The secret was rotated in Seller Central and the old one has now expired.
    f.na().set_client_secrets(&["rotated-secret"]);
    let before = f.na().lwa_calls();
    assert_eq!(f.get(PARTICIPATIONS, &[]).await.status(), 200);
    assert_eq!(
        f.na().lwa_calls() - before,
        2,
        "refused with the old secret, then the next"
    );
    // From then on the next secret is used first.
    assert_eq!(
        f.get(PARTICIPATIONS, &[("x-spapi-seller", "beta")])
            .await
            .status(),
        200
    );
    assert_eq!(f.na().lwa_calls() - before, 3);
    let status = json(f.get("/_proxy/status", &[]).await).await;
    assert_eq!(status["client_secret"], "next_client_secret");
    let text = status.to_string();
    assert!(!text.contains("rotated-secret") && !text.contains(sim::SIM_CLIENT_SECRET));
}

/// A key limited to acme, from the probe: no application-wide operation, nothing of beta or
/// gamma in any admin answer or error.
#[tokio::test]
async fn a_limited_key_cannot_act_for_the_application_or_see_other_sellers() {
    let f = Fleet::start("").await;
    let as_acme = |path: &str| {
        f.h.client
            .get(f.h.url(path))
            .header("x-spapi-proxy-key", ACME_KEY)
            .send()
    };
    // Grantless (notifications destinations) affects every seller: refused, and the simulator
    // never sees it. The unrestricted key may.
    let before = f.na().requests().len();
    let resp = as_acme("/notifications/v1/destinations").await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-spapi-proxy-error"], "seller_not_allowed");
    assert_eq!(f.na().requests().len(), before);
    let resp = f.get("/notifications/v1/destinations", &[]).await;
    assert_eq!(resp.status(), 200);

    let shows_no_other = |what: &str, text: &str| {
        for name in ["beta", "gamma"] {
            assert!(!text.contains(name), "{what} shows {name}: {text}");
        }
    };
    for path in [
        "/_proxy/status",
        "/_proxy/quota",
        "/_proxy/metrics",
        "/_proxy/",
        "/_proxy/ready",
    ] {
        // Some traffic for every seller first, so that each has buckets and series.
        for seller in ["acme", "beta", "gamma"] {
            f.get(PARTICIPATIONS, &[("x-spapi-seller", seller)]).await;
        }
        let resp = as_acme(path).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("acme"),
            "{path} shows the key's own seller: {text}"
        );
        shows_no_other(path, &text);
    }
    // The unrestricted key sees them all.
    let all = f.get("/_proxy/status", &[]).await.text().await.unwrap();
    assert!(all.contains("beta") && all.contains("gamma"), "{all}");

    // Naming another seller, existing or not, is refused alike, naming only the key's own
    // (and what the client named itself).
    let unnamed = |name: &str, what: &str, text: &str| {
        for other in ["beta", "gamma"].into_iter().filter(|o| *o != name) {
            assert!(!text.contains(other), "{what} shows {other}: {text}");
        }
    };
    for name in ["beta", "nosuch"] {
        let resp = as_acme(&format!("/_proxy/ready?seller={name}"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "ready?seller={name}");
        unnamed(name, "ready", &resp.text().await.unwrap());
        let resp =
            f.h.client
                .get(f.h.url(PARTICIPATIONS))
                .header("x-spapi-proxy-key", ACME_KEY)
                .header("x-spapi-seller", name)
                .send()
                .await
                .unwrap();
        assert_eq!(resp.status(), 403, "{name}");
        unnamed(name, "the refusal", &resp.text().await.unwrap());
    }
    // An unrestricted key is told which sellers exist.
    let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", "nosuch")]).await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("beta") && text.contains("gamma"), "{text}");
}

/// With no default seller, a limited key names its own seller; it is never inferred.
#[tokio::test]
async fn without_a_default_a_limited_key_must_name_its_seller() {
    let f = Fleet::start("").await;
    let without_default = f.toml.lock().unwrap().replace("default = true\n", "");
    *f.toml.lock().unwrap() = without_default;
    assert_eq!(f.reload().await.status(), 200);
    let send = |seller: Option<&str>| {
        let mut req =
            f.h.client
                .get(f.h.url(PARTICIPATIONS))
                .header("x-spapi-proxy-key", ACME_KEY);
        if let Some(s) = seller {
            req = req.header("x-spapi-seller", s);
        }
        req.send()
    };
    let resp = send(None).await.unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("acme") && !text.contains("beta"), "{text}");
    assert_eq!(send(Some("acme")).await.unwrap().status(), 200);
}

/// An editor's empty or half-written file, or one without keys, is refused on reload; the
/// proxy keeps serving every seller with the keys it had.
#[tokio::test]
async fn a_reload_that_would_drop_every_seller_or_key_is_refused() {
    let f = Fleet::start("").await;
    let good = f.toml.lock().unwrap().clone();
    let keyless = good
        .lines()
        .filter(|l| !l.starts_with("inbound_keys"))
        .collect::<Vec<_>>()
        .join("\n");
    let token_url = good.lines().find(|l| l.starts_with("token_url")).unwrap();
    for (what, text) in [
        ("empty", String::new()),
        (
            "sellers cut off",
            format!("rate_limit = false\ninbound_keys = [\"{ADMIN_KEY}\"]\n{token_url}\n"),
        ),
        ("no keys", keyless),
    ] {
        *f.toml.lock().unwrap() = text;
        let resp = f.reload().await;
        assert_eq!(resp.status(), 400, "{what}");
        for seller in ["acme", "beta", "gamma"] {
            let resp = f.get(PARTICIPATIONS, &[("x-spapi-seller", seller)]).await;
            assert_eq!(resp.status(), 200, "{what}: {seller}");
        }
        let keyless =
            f.h.client
                .get(f.h.url(PARTICIPATIONS))
                .send()
                .await
                .unwrap();
        assert_eq!(keyless.status(), 401, "{what}: keys still required");
    }
    *f.toml.lock().unwrap() = good;
    assert_eq!(f.reload().await.status(), 200);
}
