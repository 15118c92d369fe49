//! Onboarding a seller through the website authorization workflow: `/_proxy/oauth/start`, the
//! simulator's consent page, `/_proxy/oauth/callback`, the seller store, and revoking.

use std::path::PathBuf;
use std::time::Duration;

use spapi_proxy::config::stored;
use spapi_proxy::proxy::Proxy;
use spapi_proxy::sim::oauth::{SIM_APPLICATION_ID, SIM_SELLING_PARTNER_ID};
use spapi_proxy::sim::Simulator;

use crate::support::{client, config_for, json, Harness};

const FULL_KEY: &str = "full-key-0123456789abcdef";
const LIMITED_KEY: &str = "limited-key-0123456789abcdef";

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spapi-onboarding-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A proxy whose onboarding points at the simulator's consent page, listening on a port known
/// before it starts (the redirect URI names it). `keys`: inbound keys, or none.
async fn onboarding_harness(test: &str, keys: bool) -> (Harness, PathBuf) {
    let dir = scratch(test);
    let sellers_file = dir.join("sellers.toml");
    let store = format!("sellers_file = \"{}\"\n", sellers_file.display());
    let (h, _) = onboarding_harness_with(keys, &store).await;
    (h, sellers_file)
}

/// The same with `store` naming where sellers are kept; also answers the config text, for
/// replicas.
pub(crate) async fn onboarding_harness_with(keys: bool, store: &str) -> (Harness, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = Simulator::start().await.unwrap();
    let keys = if keys {
        format!(
            "inbound_keys = [\"{FULL_KEY}\", {{ key = \"{LIMITED_KEY}\", sellers = [\"default\"] }}]\n"
        )
    } else {
        String::new()
    };
    let toml = format!(
        "rate_limit = false\n{keys}{store}\
         [credentials]\napplication_id = \"{SIM_APPLICATION_ID}\"\n\
         [oauth]\nredirect_uri = \"http://127.0.0.1:{port}/_proxy/oauth/callback\"\n\
         authorize_url = \"{}\"\n",
        sim.url()
    );
    let config = config_for(&sim, &toml);
    let proxy = Proxy::new(&config).unwrap();
    let h = Harness::with_proxy_on(sim, proxy, &config, &format!("127.0.0.1:{port}")).await;
    (h, toml)
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The flow without a browser: start (with `key`), the consent page, its Confirm link; answers
/// the callback URL Amazon sends the browser to.
pub(crate) async fn consent(h: &Harness, seller: &str, key: Option<&str>) -> String {
    let c = client();
    let mut start = c.get(h.url(&format!("/_proxy/oauth/start?seller={seller}&region=na")));
    if let Some(k) = key {
        start = start.header("x-spapi-proxy-key", k);
    }
    let start = start.send().await.unwrap();
    assert_eq!(start.status(), 302);
    let consent_url = location(&start);
    assert!(
        consent_url.starts_with(&format!("{}/apps/authorize/consent?", h.sim.url())),
        "{consent_url}"
    );
    assert!(consent_url.contains(&format!("application_id={SIM_APPLICATION_ID}")));
    let page = c
        .get(&consent_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let href = page
        .split("href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let confirmed = c
        .get(format!("{}{href}", h.sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 302);
    let callback = location(&confirmed);
    assert!(
        callback.starts_with(&h.url("/_proxy/oauth/callback?")),
        "{callback}"
    );
    callback
}

/// The acceptance test: in headless chromium, from the start URL through the simulator's
/// consent page back to the callback; the new seller then serves getOrders without a restart.
#[tokio::test]
async fn a_seller_onboarded_in_a_browser_serves_requests_at_once() {
    use fantoccini::Locator;
    let (_driver, webdriver) = match crate::observe::chromedriver().await {
        Ok(d) => d,
        Err(why) => {
            crate::support::skip("the onboarding browser test", &why);
            return;
        }
    };
    let (h, sellers_file) = onboarding_harness("browser", false).await;
    let browser = crate::observe::headless_chromium(&webdriver).await;
    browser
        .goto(&h.url("/_proxy/oauth/start?seller=newco&region=na"))
        .await
        .unwrap();
    assert_eq!(browser.title().await.unwrap(), "Authorize application");
    browser
        .find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let landed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(t) = browser.title().await {
                if t == "Seller authorized" {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let page = browser.source().await.unwrap_or_default();
    browser.close().await.unwrap();
    assert!(landed.is_ok(), "the callback page: {page}");

    // Serves at once, with the refresh token Amazon gave for it.
    let resp = h
        .get_with(
            "/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER",
            "x-spapi-seller",
            "newco",
        )
        .await;
    assert_eq!(resp.status(), 200);
    let sent = h.sim.requests().last().cloned().unwrap();
    assert!(
        sent.seller
            .as_deref()
            .unwrap_or("")
            .starts_with("Atzr|sim-onboarded-"),
        "{:?}",
        sent.seller
    );
    // Stored, 0600, with its merchant id; listed on the status page with a revoke button.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sellers_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    let stored = stored::load(&sellers_file).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].name, "newco");
    assert_eq!(
        stored[0].selling_partner_id.as_deref(),
        Some(SIM_SELLING_PARTNER_ID)
    );
    let status_page = h.get("/_proxy/").await.text().await.unwrap();
    assert!(
        status_page.contains(SIM_SELLING_PARTNER_ID),
        "{status_page}"
    );
    assert!(status_page.contains("/_proxy/sellers/revoke?seller=newco"));
}

#[tokio::test]
async fn a_state_works_once_for_its_own_seller_only() {
    let (h, sellers_file) = onboarding_harness("state", true).await;
    // The callback needs no key; the state is what lets it in.
    let callback = consent(&h, "acme", Some(FULL_KEY)).await;
    let first = client().get(&callback).send().await.unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    // Replayed: refused, and nothing changes.
    let replay = client().get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("works once"));

    // A state for `beta` presented as `gamma`'s: refused, and nothing is stored for either.
    let callback = consent(&h, "beta", Some(FULL_KEY)).await;
    let (before, after) = callback.split_once(".beta").unwrap();
    let forged = format!("{before}.gamma{after}");
    let refused = client().get(&forged).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("does not match the seller"));
    let names: Vec<String> = stored::load(&sellers_file)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["acme"]);
    // Garbage states are refused too.
    for bad in ["", "x", "not-a-state.acme"] {
        let r = client()
            .get(h.url(&format!(
                "/_proxy/oauth/callback?state={bad}&selling_partner_id=A1&spapi_oauth_code=c"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn an_expired_code_gives_a_clear_page_and_stores_nothing() {
    let (h, sellers_file) = onboarding_harness("expired", false).await;
    h.sim.set_oauth_code_lifetime(Duration::ZERO);
    let callback = consent(&h, "late", None).await;
    let resp = client().get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let page = resp.text().await.unwrap();
    assert!(page.contains("invalid_grant"), "{page}");
    assert!(page.contains("five minutes"), "{page}");
    // The code itself is in no answer.
    let code = callback.split("spapi_oauth_code=").nth(1).unwrap();
    assert!(!page.contains(code));
    assert!(stored::load(&sellers_file).unwrap().is_empty());
}

#[tokio::test]
async fn only_an_unrestricted_key_starts_onboarding_or_revokes() {
    let (h, sellers_file) = onboarding_harness("keys", true).await;
    let start = h.url("/_proxy/oauth/start?seller=acme&region=eu");
    let none = client().get(&start).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let limited = client()
        .get(&start)
        .header("x-spapi-proxy-key", LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 403);
    assert_eq!(
        limited.headers()["x-spapi-proxy-error"],
        "seller_not_allowed"
    );
    // JSON for scripts (the `sellers add` command).
    let full = client()
        .get(&start)
        .header("x-spapi-proxy-key", FULL_KEY)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 200);
    let body = json(full).await;
    assert!(body["url"].as_str().unwrap().contains("state="));

    // Onboard one, then revoke it: it stops serving and leaves the file.
    let callback = consent(&h, "acme", Some(FULL_KEY)).await;
    assert_eq!(client().get(&callback).send().await.unwrap().status(), 200);
    let revoke = h.url("/_proxy/sellers/revoke?seller=acme");
    let limited = client()
        .post(&revoke)
        .header("x-spapi-proxy-key", LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 403);
    let revoked = client()
        .post(&revoke)
        .header("x-spapi-proxy-key", FULL_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert!(stored::load(&sellers_file).unwrap().is_empty());
    let gone = client()
        .get(h.url("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER"))
        .header("x-spapi-proxy-key", FULL_KEY)
        .header("x-spapi-seller", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 400);
}

/// The store is written whole or not at all: a process writing it over and over is killed at
/// random moments, and every time the file parses as one complete version or the other.
#[test]
fn a_writer_killed_mid_write_never_leaves_half_a_file() {
    const CHILD: &str = "SPAPI_TEST_STORE_WRITER";
    let sellers = |n: usize, tag: &str| -> Vec<stored::StoredSeller> {
        (0..n)
            .map(|i| stored::StoredSeller {
                name: format!("seller-{i:04}"),
                refresh_token: spapi_proxy::secret::Secret::new(format!(
                    "Atzr|{tag}-{i}-{}",
                    "x".repeat(300)
                )),
                region: spapi_proxy::config::Region::Eu,
                selling_partner_id: Some(format!("A{i:013}")),
                authorized_at: "2026-12-07T02:50:00.000Z".into(),
            })
            .collect()
    };
    if let Ok(path) = std::env::var(CHILD) {
        // The child: write the two versions in turn until killed.
        let (a, b) = (sellers(400, "a"), sellers(400, "b"));
        loop {
            stored::save(std::path::Path::new(&path), &a).unwrap();
            stored::save(std::path::Path::new(&path), &b).unwrap();
        }
    }
    let dir = scratch("killed");
    let path = dir.join("sellers.toml");
    let (a, b) = (sellers(400, "a"), sellers(400, "b"));
    stored::save(&path, &a).unwrap();
    let (mut saw_a, mut saw_b) = (0, 0);
    for i in 0..30u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "onboarding::a_writer_killed_mid_write_never_leaves_half_a_file",
                "--nocapture",
            ])
            .env(CHILD, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + (i * 7919) % 60));
        child.kill().unwrap();
        child.wait().unwrap();
        let loaded = stored::load(&path).unwrap();
        assert!(
            loaded == a || loaded == b,
            "kill {i}: a partial file ({} sellers)",
            loaded.len()
        );
        if loaded == a {
            saw_a += 1;
        } else {
            saw_b += 1;
        }
    }
    // The child really was writing when killed: both versions were left at some kill.
    eprintln!("killed writer: version a left {saw_a} times, b {saw_b} times");
    assert!(saw_a > 0 && saw_b > 0, "a {saw_a}, b {saw_b}");
    std::fs::remove_dir_all(&dir).unwrap();
}
