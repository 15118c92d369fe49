//! Restricted Data Tokens: minting through the Tokens API, one cache entry per restricted resource,
//! and what the proxy has learnt about which report documents are restricted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::Url;
use serde::Deserialize;
use serde_json::json;

use super::cache::{FreshToken, Token, TokenCache};
use super::store::{self, Shared, TokenStore};
use crate::error::TokenError;
use crate::forward::{self, PROXY_USER_AGENT};
use crate::key::Key;
use crate::limiter::{self, Limiter};
use crate::secret::Secret;

/// The Tokens API operation that mints RDTs.
pub const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";

/// What an RDT is for: one entry of `restrictedResources`. Also the cache key, so two requests
/// share an RDT exactly when Amazon would give them the same one.
#[derive(Debug, Clone)]
pub struct RdtResource {
    /// GET, PUT, POST or DELETE.
    pub method: String,
    /// The generic template or the specific path.
    pub path: String,
    /// Sorted, deduplicated.
    pub data_elements: Vec<String>,
    /// The fields' hash, worked out once: a request whose plan names this resource looks its
    /// RDT up by it without hashing the strings again (250 instructions per lookup).
    hash: u64,
}

impl RdtResource {
    /// The resource `method path` for `data_elements` (sorted, deduplicated).
    pub fn new(method: String, path: String, data_elements: Vec<String>) -> RdtResource {
        /// Keyed at random once per process, as the map's own hasher was: a client choosing
        /// paths cannot choose their hashes.
        static KEYS: std::sync::LazyLock<foldhash::quality::RandomState> =
            std::sync::LazyLock::new(Default::default);
        let hash = std::hash::BuildHasher::hash_one(&*KEYS, (&method, &path, &data_elements));
        RdtResource {
            method,
            path,
            data_elements,
            hash,
        }
    }
}

impl PartialEq for RdtResource {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.method == other.method
            && self.path == other.path
            && self.data_elements == other.data_elements
    }
}

impl Eq for RdtResource {}

impl std::hash::Hash for RdtResource {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Calls the Tokens API with the seller's LWA token.
pub struct Minter {
    http: reqwest::Client,
    url: Url,
    seller: TokenCache,
    target_application: Option<String>,
    timeout: Duration,
    quota: MintQuota,
}

/// The Tokens API allows 1 request/s, burst 10, per app and seller: mints wait in the seller's
/// createRestrictedDataToken bucket, which clients calling that operation directly share.
#[derive(Debug)]
pub struct MintQuota {
    /// The limiter holding the bucket.
    pub limiter: Arc<Limiter>,
    /// Whose bucket.
    pub key: Key,
    /// Longest a mint waits for quota.
    pub max_wait: Duration,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RdtResponse {
    #[serde(rename = "restrictedDataToken")]
    token: String,
    #[serde(rename = "expiresIn")]
    expires_in: Option<u64>,
}

/// The model says the answer is bare; the 2021 guide wraps it in `payload`. Accept both.
#[derive(Deserialize)]
#[serde(untagged)]
enum RdtAnswer {
    Bare(RdtResponse),
    Wrapped { payload: RdtResponse },
}

impl Minter {
    /// A minter posting to `base` + [`RDT_PATH`], waiting for quota as `quota` says.
    pub fn new(
        http: reqwest::Client,
        base: &Url,
        seller: TokenCache,
        target_application: Option<String>,
        timeout: Duration,
        quota: MintQuota,
    ) -> Minter {
        Minter {
            http,
            url: Url::parse(&format!(
                "{}{RDT_PATH}",
                base.as_str().trim_end_matches('/')
            ))
            .expect("a valid base URL plus a fixed path"),
            seller,
            target_application,
            timeout,
            quota,
        }
    }

    /// Mints one RDT. If Amazon says the LWA token expired, the LWA token is refreshed and the
    /// mint tried once more.
    pub async fn mint(&self, resource: &RdtResource) -> Result<FreshToken, TokenError> {
        let mut lwa = self.seller.get().await?;
        for attempt in 0..2 {
            let q = &self.quota;
            q.limiter
                .acquire(&q.key, limiter::mint_operation(), q.max_wait)
                .await
                .map_err(|e| TokenError::Unavailable(format!("Tokens API: {e}")))?;
            match self.mint_once(resource, &lwa).await {
                Err(MintError::LwaRejected) if attempt == 0 => {
                    self.seller.invalidate(&lwa);
                    lwa = self.seller.get().await?;
                }
                Err(MintError::LwaRejected) => {
                    return Err(TokenError::Unavailable(
                        "the Tokens API rejected a fresh LWA access token".into(),
                    ))
                }
                Err(MintError::Token(e)) => return Err(e),
                Ok(t) => {
                    tracing::info!(method = %resource.method, path = %resource.path, data_elements = ?resource.data_elements, "minted a restricted data token");
                    return Ok(t);
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn mint_once(
        &self,
        resource: &RdtResource,
        lwa: &Token,
    ) -> Result<FreshToken, MintError> {
        let mut entry = json!({"method": resource.method, "path": resource.path});
        if !resource.data_elements.is_empty() {
            entry["dataElements"] = json!(resource.data_elements);
        }
        let mut body = json!({"restrictedResources": [entry]});
        if let Some(app) = &self.target_application {
            body["targetApplication"] = json!(app);
        }
        let request = self
            .http
            .post(self.url.clone())
            .header("x-amz-access-token", lwa.header().clone())
            .header("x-amz-date", forward::amz_date(SystemTime::now()))
            .header(http::header::USER_AGENT, PROXY_USER_AGENT)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, headers, bytes) =
            super::call_token_service(request, self.timeout, "Tokens API")
                .await
                .map_err(MintError::Token)?;
        if let Some(rate) = limiter::rate_header(&headers) {
            let q = &self.quota;
            q.limiter
                .observe_rate(&q.key, limiter::mint_operation(), rate)
                .await;
        }
        if status.is_success() {
            let answer: RdtAnswer = serde_json::from_slice(&bytes).map_err(|e| {
                MintError::Token(TokenError::Unavailable(format!(
                    "the Tokens API answered {status} with a body we cannot read: {e}"
                )))
            })?;
            let (RdtAnswer::Bare(r) | RdtAnswer::Wrapped { payload: r }) = answer;
            crate::metrics::metrics().rdt_mints.inc();
            return Ok(FreshToken {
                token: Secret::new(r.token),
                lifetime: Duration::from_secs(r.expires_in.unwrap_or(3600)),
            });
        }
        if status == 403 && super::says_token_rejected(&headers, &bytes) {
            return Err(MintError::LwaRejected);
        }
        let (code, message) = first_error(&bytes).unwrap_or_else(|| {
            (
                format!("HTTP{}", status.as_u16()),
                format!("the Tokens API answered {status}"),
            )
        });
        let m = crate::metrics::metrics();
        if status.is_server_error() || status == 429 {
            m.token_failures
                .get_or_create(&crate::metrics::FailureLabels {
                    service: "rdt",
                    reason: "unavailable",
                })
                .inc();
            return Err(MintError::Token(TokenError::Unavailable(format!(
                "the Tokens API answered {status}: {code}: {message}"
            ))));
        }
        m.rdt_refusals.inc();
        Err(MintError::Token(TokenError::Refused {
            service: "rdt",
            code,
            description: message,
        }))
    }
}

enum MintError {
    /// The LWA token used to mint was expired or unknown.
    LwaRejected,
    Token(TokenError),
}

/// `code` and `message` (+ `details`) of the first entry of SP-API's `errors`.
fn first_error(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let code = e.get("code")?.as_str()?.to_string();
    let mut message = e
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_string();
    if let Some(d) = e
        .get("details")
        .and_then(|d| d.as_str())
        .filter(|d| !d.is_empty())
    {
        message = format!("{message} ({d})");
    }
    Some((code, message))
}

/// Cached RDTs, one [`TokenCache`] (single-flight, refreshed before expiry) per resource.
#[derive(Debug)]
pub struct RdtCache {
    minter: Arc<Minter>,
    /// Where replicas share RDTs, and the seller's part of their names.
    shared: Option<SharedRdts>,
    entries: Mutex<Entries>,
}

/// The caches by resource, and the last one a request found.
#[derive(Debug, Default)]
struct Entries {
    /// Looked up on every restricted request: foldhash (seeded per process) instead of SipHash,
    /// which cost about 700 instructions per lookup.
    map: HashMap<RdtResource, TokenCache, foldhash::quality::RandomState>,
    /// The resource of the last lookup, by identity: an operation whose resource does not
    /// depend on the path (getOrders) shares one resource between its requests, so they are
    /// answered by a pointer comparison instead of a hash lookup comparing the strings (200
    /// instructions per request). Held here, the resource cannot be freed and its address
    /// reused; the cache it names is the map's own (cleared whenever the map drops entries).
    last: Option<(Arc<RdtResource>, TokenCache)>,
}

/// Past this many cached resources (specific paths accumulate), expired entries are dropped.
const PRUNE_ABOVE: usize = 1_000;

/// A store for one seller's RDTs.
#[derive(Debug)]
pub struct SharedRdts {
    /// The store.
    pub store: Arc<dyn TokenStore>,
    /// A fingerprint of the application, the seller's refresh token, the Tokens API endpoint
    /// and the target application: each resource's name adds to it.
    pub prefix: String,
    /// How long a mint may hold the lock (it may wait for quota first).
    pub lock_ttl: Duration,
}

impl RdtCache {
    /// An empty cache, sharing its RDTs through `shared` if given.
    pub fn new(minter: Minter, shared: Option<SharedRdts>) -> RdtCache {
        RdtCache {
            minter: Arc::new(minter),
            shared,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, resource: &RdtResource) -> TokenCache {
        let mut entries = self.lock();
        if let Some(c) = entries.map.get(resource) {
            return c.clone();
        }
        if entries.map.len() >= PRUNE_ABOVE {
            entries.map.retain(|_, c| c.has_token());
            entries.last = None;
        }
        let minter = Arc::clone(&self.minter);
        let key = Arc::new(resource.clone());
        let shared = self.shared.as_ref().map(|s| Shared {
            store: Arc::clone(&s.store),
            name: store::name(
                "rdt",
                &[
                    &s.prefix,
                    &resource.method,
                    &resource.path,
                    &resource.data_elements.join(","),
                ],
            ),
            lock_ttl: s.lock_ttl,
        });
        let cache = TokenCache::with_store(
            format!("rdt {} {}", resource.method, resource.path),
            Arc::new(move || {
                let minter = Arc::clone(&minter);
                let key = Arc::clone(&key);
                Box::pin(async move { minter.mint(&key).await })
            }),
            shared,
        );
        entries.map.insert(resource.clone(), cache.clone());
        cache
    }

    /// An RDT for `resource`, minted only if none is cached.
    pub async fn get(&self, resource: &RdtResource) -> Result<Token, TokenError> {
        self.entry(resource).get().await
    }

    /// The cached RDT for `resource`, if one is usable now (see [`TokenCache::cached`]).
    pub fn cached(&self, resource: &Arc<RdtResource>) -> Option<Token> {
        let mut entries = self.lock();
        if let Some((last, cache)) = &entries.last {
            if Arc::ptr_eq(last, resource) {
                return cache.cached();
            }
        }
        let cache = entries.map.get(&**resource)?.clone();
        let token = cache.cached();
        entries.last = Some((Arc::clone(resource), cache));
        token
    }

    /// Amazon rejected `used` for `resource`: forget it.
    pub fn invalidate(&self, resource: &RdtResource, used: &Token) {
        self.entry(resource).invalidate(used);
    }
}

/// Which report documents belong to restricted report types, learnt from getReport/getReports
/// answers that passed through the proxy (the path of getReportDocument does not say).
#[derive(Debug)]
pub struct ReportTypes {
    restricted: HashSet<String>,
    documents: Mutex<HashMap<String, bool>>,
}

/// Bound on remembered documents; the map is cleared when full (documents are short-lived).
const DOCUMENTS_REMEMBERED: usize = 100_000;

impl ReportTypes {
    /// Knows nothing yet; `restricted` is the list of restricted report types.
    pub fn new(restricted: &[String]) -> ReportTypes {
        ReportTypes {
            restricted: restricted.iter().cloned().collect(),
            documents: Mutex::new(HashMap::new()),
        }
    }

    /// Records every (reportDocumentId, reportType) in a getReport or getReports answer.
    pub fn learn(&self, body: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let reports: Vec<&serde_json::Value> = match v.get("reports").and_then(|r| r.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![&v],
        };
        let mut docs = self.documents.lock().unwrap_or_else(|p| p.into_inner());
        for r in reports {
            let (Some(doc), Some(kind)) = (
                r.get("reportDocumentId").and_then(|d| d.as_str()),
                r.get("reportType").and_then(|t| t.as_str()),
            ) else {
                continue;
            };
            if docs.len() >= DOCUMENTS_REMEMBERED {
                docs.clear();
            }
            docs.insert(doc.to_string(), self.restricted.contains(kind));
        }
    }

    /// Whether the document is restricted; `None` if the proxy has not seen it.
    pub fn is_restricted(&self, document_id: &str) -> Option<bool> {
        let docs = self.documents.lock().unwrap_or_else(|p| p.into_inner());
        docs.get(document_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_from_get_report_and_get_reports() {
        let types = ReportTypes::new(&["GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING".to_string()]);
        types.learn(br#"{"reportId":"1","reportType":"GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING","reportDocumentId":"D1"}"#);
        types.learn(br#"{"reports":[{"reportType":"GET_MERCHANT_LISTINGS_ALL_DATA","reportDocumentId":"D2"},{"reportType":"X","processingStatus":"IN_QUEUE"}]}"#);
        types.learn(b"not json");
        let cases = [("D1", Some(true)), ("D2", Some(false)), ("D3", None)];
        for (doc, want) in cases {
            assert_eq!(types.is_restricted(doc), want, "{doc}");
        }
    }

    #[test]
    fn first_error_reads_spapi_errors() {
        let body = br#"{"errors":[{"code":"Unauthorized","message":"Access denied","details":"missing role"}]}"#;
        assert_eq!(
            first_error(body),
            Some(("Unauthorized".into(), "Access denied (missing role)".into()))
        );
        assert_eq!(first_error(b"{}"), None);
    }

    #[test]
    fn both_answer_shapes_parse() {
        for body in [
            r#"{"restrictedDataToken":"Atz.sprdt|x","expiresIn":3600}"#,
            r#"{"payload":{"restrictedDataToken":"Atz.sprdt|x","expiresIn":3600}}"#,
        ] {
            let a: RdtAnswer = serde_json::from_str(body).unwrap();
            let (RdtAnswer::Bare(r) | RdtAnswer::Wrapped { payload: r }) = a;
            assert_eq!(r.token, "Atz.sprdt|x");
        }
    }
}
