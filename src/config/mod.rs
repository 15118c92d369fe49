//! `proxy.toml` and the environment, parsed and then validated into a `Config` that cannot hold
//! bad values.
//!
//! - [`file`]: the file as written (serde, unknown keys rejected).
//! - [`env`]: the environment overlay, every variable read in one place.
//! - [`operations`]: `[operations.<name>]`, checked against the catalog.
//! - [`sellers`]: `[sellers.NAME]` and `[endpoints]`.
//!
//! Validation happens here; presentation (`check`) lives with the commands.

mod env;
mod file;
mod operations;
mod sellers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use reqwest::Url;

use crate::operations::Operation;
use crate::secret::Secret;

pub use env::Env;
pub use sellers::{valid_name as valid_seller_name, SellerConfig, DEFAULT_SELLER};
pub mod stored;

/// The LWA token endpoint Amazon documents for every region.
pub const DEFAULT_TOKEN_URL: &str = "https://api.amazon.com/auth/o2/token";
/// Report types whose documents hold personal data and need an RDT (Tokens API use-case
/// guide, 2021); `restricted_report_types` replaces the list.
pub const RESTRICTED_REPORT_TYPES: [&str; 16] = [
    "GET_AMAZON_FULFILLED_SHIPMENTS_DATA_INVOICING",
    "GET_AMAZON_FULFILLED_SHIPMENTS_DATA_TAX",
    "GET_FLAT_FILE_ACTIONABLE_ORDER_DATA_SHIPPING",
    "GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING",
    "GET_FLAT_FILE_ORDER_REPORT_DATA_INVOICING",
    "GET_FLAT_FILE_ORDER_REPORT_DATA_TAX",
    "GET_FLAT_FILE_ORDERS_RECONCILIATION_DATA_TAX",
    "GET_FLAT_FILE_ORDERS_RECONCILIATION_DATA_INVOICING",
    "GET_FLAT_FILE_ORDERS_RECONCILIATION_DATA_SHIPPING",
    "GET_ORDER_REPORT_DATA_INVOICING",
    "GET_ORDER_REPORT_DATA_TAX",
    "GET_ORDER_REPORT_DATA_SHIPPING",
    "GET_EASYSHIP_DOCUMENTS",
    "GET_GST_MTR_B2B_CUSTOM",
    "GET_VAT_TRANSACTION_DATA",
    "SC_VAT_TAX_REPORT",
];

/// The listen address when nothing else is said.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A configuration problem, naming the key (file key or environment variable) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{file}, line {line}: `{key}`: {message}")]
    Parse {
        /// The file that was read.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// The dotted key at that line (`timeouts.connect`), or the table for a header error.
        key: String,
        /// The parser's message.
        message: String,
    },
    /// A key has a value the proxy cannot use.
    #[error("invalid `{key}`: {problem}")]
    Invalid {
        /// The key in `proxy.toml`, or the environment variable.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },
    /// A required value is missing.
    #[error("missing `{key}`: {hint}")]
    Missing {
        /// The key in `proxy.toml`.
        key: String,
        /// Where it can be set.
        hint: String,
    },
    /// The file could not be read.
    #[error("cannot read {file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        message: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// SP-API region; each has a production and a sandbox host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Region {
    /// North America (CA, US, MX, BR).
    Na,
    /// Europe, Middle East, India, South Africa.
    Eu,
    /// Far East (SG, AU, JP).
    Fe,
}

impl Region {
    /// Every region, in [`Region::index`] order.
    pub const ALL: [Region; 3] = [Region::Na, Region::Eu, Region::Fe];

    /// Parses `na`, `eu` or `fe` (any case); `key` names the setting in the error.
    pub fn parse(key: &str, s: &str) -> Result<Region, ConfigError> {
        Region::from_name(s).ok_or_else(|| {
            invalid(
                key,
                format!("`{}` is not a region; use na, eu or fe", s.trim()),
            )
        })
    }

    /// `na`, `eu` or `fe`, in any case.
    pub fn from_name(s: &str) -> Option<Region> {
        let s = s.trim();
        Region::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
    }

    /// Position in [`Region::ALL`], for per-region arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The regional SP-API base URL.
    pub fn endpoint(self, sandbox: bool) -> &'static str {
        match (self, sandbox) {
            (Region::Na, false) => "https://sellingpartnerapi-na.amazon.com",
            (Region::Eu, false) => "https://sellingpartnerapi-eu.amazon.com",
            (Region::Fe, false) => "https://sellingpartnerapi-fe.amazon.com",
            (Region::Na, true) => "https://sandbox.sellingpartnerapi-na.amazon.com",
            (Region::Eu, true) => "https://sandbox.sellingpartnerapi-eu.amazon.com",
            (Region::Fe, true) => "https://sandbox.sellingpartnerapi-fe.amazon.com",
        }
    }

    /// The lowercase name used in config.
    pub fn name(self) -> &'static str {
        match self {
            Region::Na => "na",
            Region::Eu => "eu",
            Region::Fe => "fe",
        }
    }
}

/// The app's LWA credentials, as far as they are configured.
///
/// They are optional here so that `explain` and `operations` work without any; `serve` and
/// `check` call [`Config::require_credentials`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The application's id (`amzn1.sp.solution...` / `amzn1.sellerapps.app...`), for the
    /// consent URL of onboarding.
    pub application_id: Option<String>,
    /// LWA client id (not a secret: it appears in Seller Central URLs).
    pub client_id: Option<String>,
    /// LWA client secret.
    pub client_secret: Option<Secret>,
    /// The secret generated to replace it (Amazon keeps the old one valid for 7 days): tried
    /// when LWA answers `invalid_client` for the current one.
    pub next_client_secret: Option<Secret>,
}

/// An inbound key, and the sellers it may act for (`None`: all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundKey {
    /// The key.
    pub key: Secret,
    /// Seller names, when the key is limited to them.
    pub sellers: Option<Vec<String>>,
}

/// Whether operations whose personal data is optional (Orders v0 getOrders, getOrder,
/// getOrderItems; getReportDocument) get an RDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestrictedData {
    /// Ask for an RDT; if Amazon says the application has no role for the dataElements,
    /// remember it and send the LWA token (the answer comes without personal data).
    #[default]
    Auto,
    /// Always an RDT; a refused mint is an error.
    Always,
    /// Never an RDT: the LWA token, and no personal data.
    Never,
}

impl RestrictedData {
    pub(crate) fn parse(key: &str, s: &str) -> Result<RestrictedData, ConfigError> {
        match s.trim() {
            "auto" => Ok(RestrictedData::Auto),
            "always" => Ok(RestrictedData::Always),
            "never" => Ok(RestrictedData::Never),
            other => Err(invalid(
                key,
                format!("`{other}` is not one of \"auto\", \"always\", \"never\""),
            )),
        }
    }

    /// The name used in config.
    pub fn name(self) -> &'static str {
        match self {
            RestrictedData::Auto => "auto",
            RestrictedData::Always => "always",
            RestrictedData::Never => "never",
        }
    }
}

/// What the proxy does with a request that matches no operation in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownOperations {
    /// Forward it with the seller's LWA token under the shared default limit.
    Forward,
    /// Answer 404 `unknown_operation` without calling Amazon.
    Reject,
}

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Requests per second, > 0.
    pub rate: f64,
    /// Bucket size, >= 1.
    pub burst: u32,
}

/// Where a quota came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaSource {
    /// The usage plan published in Amazon's model.
    Catalog,
    /// `[operations.<name>]` in the config.
    Config,
    /// `default_rate`/`default_burst`: no published plan, or an unknown operation.
    Default,
    /// The sandbox's one limit shared by every operation.
    Sandbox,
}

impl QuotaSource {
    /// Lowercase name for display and JSON.
    pub fn name(self) -> &'static str {
        match self {
            QuotaSource::Catalog => "catalog",
            QuotaSource::Config => "config",
            QuotaSource::Default => "default",
            QuotaSource::Sandbox => "sandbox",
        }
    }
}

/// Validated `[operations.<name>]` settings for one operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationSettings {
    /// Overrides the published rate.
    pub rate: Option<f64>,
    /// Overrides the published burst.
    pub burst: Option<u32>,
    /// dataElements asked for when a request names none (restricted operations only).
    pub data_elements: Option<Vec<String>>,
    /// Overrides `restricted_data` (operations whose personal data is optional only).
    pub restricted_data: Option<RestrictedData>,
}

/// Timeouts for everything the proxy waits on.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// TCP + TLS connect to the upstream or the token service.
    pub connect: Duration,
    /// From sending the request until the upstream's response headers arrive.
    pub response: Duration,
    /// Longest pause between two reads of a streamed body.
    pub idle: Duration,
    /// One call to the token service.
    pub token: Duration,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// How long a client may take to send a request's headers, counted from its first byte
    /// (or, on a new connection, from the connection).
    pub header_read: Duration,
    /// How long a client connection may sit idle between requests.
    pub client_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            token: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            header_read: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
        }
    }
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// The region of the single-seller form, and of sellers that name none.
    pub region: Region,
    /// Whether the regional sandbox hosts are used.
    pub sandbox: bool,
    /// The SP-API base URL of each region, by [`Region::index`].
    pub endpoints: [Url; 3],
    /// The LWA token URL (one for every region).
    pub token_url: Url,
    /// LWA credentials.
    pub credentials: Credentials,
    /// The sellers, sorted by name.
    pub sellers: Vec<SellerConfig>,
    /// The seller a request that names none acts for.
    pub default_seller: Option<String>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// How many times a transient token-service failure is retried.
    pub token_retries: u32,
    /// Request bodies up to this size are kept so the request can be replayed once.
    pub replay_buffer_bytes: u64,
    /// What to do with requests for no known operation.
    pub unknown_operations: UnknownOperations,
    /// Where Restricted Data Tokens are minted, by region: the region's endpoint, except in
    /// the sandbox, whose restricted calls need an RDT minted in production.
    pub rdt_endpoints: [Url; 3],
    /// `targetApplication` for RDTs minted on behalf of another app (delegation).
    pub target_application: Option<String>,
    /// Report types whose documents need an RDT.
    pub restricted_report_types: Vec<String>,
    /// Whether operations whose personal data is optional get an RDT.
    pub restricted_data: RestrictedData,
    /// How long a dataElements set Amazon refused for lack of a role is not asked for again.
    pub restricted_data_retry: Duration,
    /// The quota of operations without a published plan, and of all unknown requests together.
    pub default_quota: Quota,
    /// Per-operation settings, by catalog index.
    pub operations: HashMap<usize, OperationSettings>,
    /// Whether the proxy limits rates locally (`rate_limit`, env `SPAPI_RATE_LIMIT`).
    pub rate_limit: bool,
    /// Longest a request waits for quota; `x-spapi-max-wait` can only shorten it.
    pub max_wait: Duration,
    /// Most requests waiting per bucket; more are refused at once.
    pub max_queue: usize,
    /// How often a request Amazon answered 429 is retried (safe methods only).
    pub throttle_retries: u32,
    /// Whether PUT and PATCH count as safe to retry after a 429.
    pub retry_put_patch: bool,
    /// Keys a client must present (`x-spapi-proxy-key` or `Authorization: Bearer`); none: no
    /// key needed, which is allowed only on a loopback address.
    pub inbound_keys: Vec<InboundKey>,
    /// Host names, besides loopback names, IP literals and SP-API's hosts, that `Host` may name.
    pub allowed_hosts: Vec<String>,
    /// Web page origins allowed to call the proxy (CORS); none by default.
    pub allowed_origins: Vec<String>,
    /// Most client connections at once; `None`: derived from the file-descriptor limit.
    pub max_connections: Option<usize>,
    /// Whether HTTP/2 with prior knowledge (h2c) is served besides HTTP/1.1.
    pub h2c: bool,
    /// Redis holding the buckets and tokens that several replicas share (`shared_state`).
    pub shared_state: Option<SharedState>,
    /// How many replicas share the quota (`replicas`): while Redis cannot be reached, each
    /// limits itself to this share of every bucket.
    pub replicas: u32,
    /// Where onboarding keeps the sellers it adds (`sellers_file`; default `sellers.toml` next
    /// to the config file). Read at start and on reload.
    pub sellers_file: Option<std::path::PathBuf>,
    /// Onboarding (`[oauth]`).
    pub oauth: OAuth,
}

/// `[oauth]`: Amazon's website authorization workflow, run by the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuth {
    /// The callback registered for the application (`.../_proxy/oauth/callback`): https, or
    /// http on a loopback host.
    pub redirect_uri: Option<Url>,
    /// The application is in draft: consent URLs carry `version=beta`.
    pub draft: bool,
    /// Replaces the Seller and Vendor Central hosts in consent URLs (a test or a simulator).
    pub authorize_url: Option<Url>,
}

/// `oauth.redirect_uri`: https, except on a loopback host.
fn parse_redirect_uri(key: &str, s: &str) -> Result<Url, ConfigError> {
    let url = parse_url(key, s)?;
    let host = url.host_str().unwrap_or("");
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() != "https" && !loopback {
        return Err(invalid(
            key,
            format!("`{s}` must be https (plain http only on a loopback host such as 127.0.0.1)"),
        ));
    }
    Ok(url)
}

/// Where replicas share their state.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedState {
    /// `redis://HOST:PORT/DB` or `rediss://` (TLS); may hold a password.
    pub url: Secret,
    /// Encrypts the tokens kept in Redis (`shared_state_key`).
    pub key: Secret,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("url", &redacted_url(self.url.expose()))
            .finish_non_exhaustive()
    }
}

/// `url` without its user and password, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// `shared_state`: a redis:// or rediss:// URL with a host.
fn parse_shared_state(key: &str, s: &str) -> Result<Secret, ConfigError> {
    let url = Url::parse(s.trim()).map_err(|_| {
        invalid(
            key,
            format!(
                "`{}` is not a URL like redis://127.0.0.1:6379/0",
                redacted_url(s)
            ),
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") || url.host_str().is_none() {
        return Err(invalid(
            key,
            format!(
                "`{}` must be redis://HOST:PORT/DB (or rediss:// for TLS)",
                redacted_url(s)
            ),
        ));
    }
    Ok(Secret::new(s.trim()))
}

/// `shared_state_key`: at least 32 printable characters.
fn parse_shared_key(key: &str, s: &str) -> Result<Secret, ConfigError> {
    let v = s.trim();
    if v.len() < 32 || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            "the key that encrypts tokens in Redis must be at least 32 printable characters \
             (e.g. from `openssl rand -hex 32`)",
        ));
    }
    Ok(Secret::new(v))
}

fn parse_replicas(key: &str, s: &str) -> Result<u32, ConfigError> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(invalid(
            key,
            format!("`{s}` is not a number of replicas from 1 to 1000"),
        )),
    }
}

fn parse_url(key: &str, s: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(s.trim()).map_err(|e| invalid(key, format!("`{s}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key,
            format!("`{s}` must be an absolute http:// or https:// URL"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format!("`{s}` must not have a query or fragment"),
        ));
    }
    Ok(url)
}

fn parse_bool(key: &str, s: &str) -> Result<bool, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, format!("`{s}` is not true or false"))),
    }
}

fn seconds(key: &str, value: Option<f64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && v > 0.0 && v < 1.0e9 => Ok(Duration::from_secs_f64(v)),
        Some(v) => Err(invalid(
            key,
            format!("{v} is not a positive number of seconds"),
        )),
    }
}

fn positive_rate(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 100_000.0 {
        Ok(v)
    } else {
        Err(invalid(
            key,
            format!("{v} is not a rate in requests per second (> 0)"),
        ))
    }
}

fn positive_burst(key: &str, v: u32) -> Result<u32, ConfigError> {
    if (1..=100_000).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, format!("{v} is not a burst (at least 1)")))
    }
}

/// An inbound key: at least 16 printable characters, without spaces or commas.
fn inbound_key(key: &str, value: &str) -> Result<Option<Secret>, ConfigError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() < 16 || !v.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(invalid(
            key,
            "each key must be at least 16 printable characters, without spaces or commas \
             (e.g. from `openssl rand -hex 24`)",
        ));
    }
    Ok(Some(Secret::new(v)))
}

fn parse_listen(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim()
        .parse()
        .map_err(|_| invalid(key, format!("`{s}` is not an address like 127.0.0.1:8080")))
}

/// A value from the environment if set, else the file's; errors name where it came from.
fn layered<T>(
    from_env: &Option<env::FromEnv>,
    key: &str,
    file: Option<&str>,
    parse: impl Fn(&str, &str) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    match (from_env, file) {
        (Some(e), _) => parse(e.var, &e.value).map(Some),
        (None, Some(v)) => parse(key, v).map(Some),
        (None, None) => Ok(None),
    }
}

impl Config {
    /// Reads `path`, applies the environment and validates the result.
    pub fn load(path: Option<&Path>, env: Env<'_>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError::Io {
                file: p.display().to_string(),
                message: e.to_string(),
            })?,
            None => String::new(),
        };
        let file = path.map_or_else(|| "(no file)".into(), |p| p.display().to_string());
        let raw = file::parse(&text, &file)?;
        let mut config = Config::validate(raw, &env::Overlay::read(env), env)?;
        if config.sellers_file.is_none() {
            if let Some(p) = path {
                let dir = p.parent().unwrap_or(Path::new("."));
                config.sellers_file = Some(dir.join("sellers.toml"));
            }
        }
        config.with_stored_sellers()
    }

    /// Parses TOML text, applies the environment and validates the result.
    pub fn from_toml_str(text: &str, file: &str, env: Env<'_>) -> Result<Config, ConfigError> {
        let raw = file::parse(text, file)?;
        Config::validate(raw, &env::Overlay::read(env), env)?.with_stored_sellers()
    }

    fn validate(
        raw: file::RawConfig,
        over: &env::Overlay,
        env: Env<'_>,
    ) -> Result<Config, ConfigError> {
        let (shared_state, replicas) = Config::shared_state(over, &raw)?;
        let oauth = match &raw.oauth {
            None => OAuth::default(),
            Some(o) => OAuth {
                redirect_uri: o
                    .redirect_uri
                    .as_deref()
                    .map(|u| parse_redirect_uri("oauth.redirect_uri", u))
                    .transpose()?,
                draft: o.draft.unwrap_or(false),
                authorize_url: o
                    .authorize_url
                    .as_deref()
                    .map(|u| parse_url("oauth.authorize_url", u))
                    .transpose()?,
            },
        };
        let listen = layered(&over.listen, "listen", raw.listen.as_deref(), parse_listen)?
            .map_or_else(|| parse_listen("listen", DEFAULT_LISTEN), Ok)?;
        let region = layered(&over.region, "region", raw.region.as_deref(), Region::parse)?
            .unwrap_or(Region::Na);
        let sandbox = match &over.sandbox {
            Some(e) => parse_bool(e.var, &e.value)?,
            None => raw.sandbox.unwrap_or(false),
        };
        let endpoints = sellers::endpoints(
            over.endpoint.as_ref().map(|e| (e.var, e.value.as_str())),
            raw.endpoints,
            raw.endpoint.as_deref(),
            sandbox,
        )?;
        let token_url = layered(
            &over.token_url,
            "token_url",
            raw.token_url.as_deref(),
            parse_url,
        )?
        .map_or_else(|| parse_url("token_url", DEFAULT_TOKEN_URL), Ok)?;

        let c = raw.credentials;
        let pick = |from_env: &Option<env::FromEnv>, file: Option<String>| {
            from_env
                .as_ref()
                .map(|e| e.value.clone())
                .or(file)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let credentials = Credentials {
            application_id: c.application_id.map(|a| a.trim().to_string()),
            client_id: pick(&over.client_id, c.client_id),
            client_secret: pick(&over.client_secret, c.client_secret).map(Secret::new),
            next_client_secret: pick(&over.next_client_secret, c.next_client_secret)
                .map(Secret::new),
        };
        let single = pick(&over.refresh_token, c.refresh_token).map(|t| {
            let key = over
                .refresh_token
                .as_ref()
                .map_or("credentials.refresh_token", |e| e.var);
            (key.to_string(), t)
        });
        let (sellers, default_seller) = sellers::sellers(raw.sellers, single, region, env)?;

        let t = raw.timeouts;
        let d = Timeouts::default();
        let timeouts = Timeouts {
            connect: seconds("timeouts.connect", t.connect, d.connect)?,
            response: seconds("timeouts.response", t.response, d.response)?,
            idle: seconds("timeouts.idle", t.idle, d.idle)?,
            token: seconds("timeouts.token", t.token, d.token)?,
            shutdown_grace: seconds(
                "timeouts.shutdown_grace",
                t.shutdown_grace,
                d.shutdown_grace,
            )?,
            header_read: seconds("timeouts.header_read", t.header_read, d.header_read)?,
            client_idle: seconds("timeouts.client_idle", t.client_idle, d.client_idle)?,
        };
        let token_retries = raw.token_retries.unwrap_or(3);
        if token_retries > 10 {
            return Err(invalid("token_retries", "at most 10 retries are allowed"));
        }
        let replay_buffer_bytes = raw.replay_buffer_bytes.unwrap_or(64 * 1024);
        if replay_buffer_bytes > 16 * 1024 * 1024 {
            return Err(invalid("replay_buffer_bytes", "at most 16 MiB (16777216)"));
        }

        let unknown_operations = match raw.unknown_operations.as_deref() {
            None | Some("forward") => UnknownOperations::Forward,
            Some("reject") => UnknownOperations::Reject,
            Some(other) => {
                return Err(invalid(
                    "unknown_operations",
                    format!("`{other}` is neither \"forward\" nor \"reject\""),
                ))
            }
        };
        let rdt_override = layered(
            &over.rdt_endpoint,
            "rdt_endpoint",
            raw.rdt_endpoint.as_deref(),
            parse_url,
        )?;
        let rdt_endpoints = match rdt_override {
            Some(url) => [url.clone(), url.clone(), url],
            // The sandbox answers restricted calls only with an RDT minted in production.
            None if sandbox => [
                parse_url("rdt_endpoint", Region::Na.endpoint(false))?,
                parse_url("rdt_endpoint", Region::Eu.endpoint(false))?,
                parse_url("rdt_endpoint", Region::Fe.endpoint(false))?,
            ],
            None => endpoints.clone(),
        };
        let target_application = raw
            .target_application
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let restricted_report_types = match raw.restricted_report_types {
            None => RESTRICTED_REPORT_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(types) => {
                if let Some(bad) = types.iter().find(|t| {
                    t.is_empty()
                        || !t
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                }) {
                    return Err(invalid(
                        "restricted_report_types",
                        format!("`{bad}` is not a report type like GET_FLAT_FILE_ORDER_REPORT_DATA_SHIPPING"),
                    ));
                }
                types
            }
        };
        let restricted_data = raw
            .restricted_data
            .map(|r| RestrictedData::parse("restricted_data", &r))
            .transpose()?
            .unwrap_or_default();
        let restricted_data_retry = seconds(
            "restricted_data_retry",
            raw.restricted_data_retry,
            Duration::from_secs(3600),
        )?;
        let default_quota = Quota {
            rate: positive_rate("default_rate", raw.default_rate.unwrap_or(1.0))?,
            burst: positive_burst("default_burst", raw.default_burst.unwrap_or(5))?,
        };
        let operations = operations::operation_settings(raw.operations.unwrap_or_default())?;
        let rate_limit = match &over.rate_limit {
            Some(e) => parse_bool(e.var, &e.value)?,
            None => raw.rate_limit.unwrap_or(true),
        };
        let max_wait = match raw.max_wait {
            None => Duration::from_secs(60),
            Some(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Duration::from_secs_f64(v),
            Some(v) => {
                return Err(invalid(
                    "max_wait",
                    format!("{v} is not a number of seconds from 0 to 3600"),
                ))
            }
        };
        let max_queue = raw.max_queue.unwrap_or(1000);
        if !(1..=1_000_000).contains(&max_queue) {
            return Err(invalid(
                "max_queue",
                format!("{max_queue} is not between 1 and 1000000"),
            ));
        }
        let throttle_retries = raw.throttle_retries.unwrap_or(2);
        if throttle_retries > 10 {
            return Err(invalid(
                "throttle_retries",
                "at most 10 retries are allowed",
            ));
        }

        let inbound_keys = Config::inbound_keys(over, raw.inbound_keys, &sellers)?;
        let allowed_hosts = raw.allowed_hosts.unwrap_or_default();
        if let Some(bad) = allowed_hosts.iter().find(|h| {
            h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        }) {
            return Err(invalid(
                "allowed_hosts",
                format!("`{bad}` is not a host name like proxy.internal (no port, no scheme)"),
            ));
        }
        let allowed_origins = raw.allowed_origins.unwrap_or_default();
        if let Some(bad) = allowed_origins.iter().find(|o| {
            !(o.starts_with("http://") || o.starts_with("https://"))
                || o.trim_end_matches('/') != o.as_str()
                || o.matches('/').count() != 2
        }) {
            return Err(invalid(
                "allowed_origins",
                format!(
                    "`{bad}` is not an origin like https://tool.example (scheme and host, no path)"
                ),
            ));
        }
        if raw.max_connections == Some(0) {
            return Err(invalid("max_connections", "at least 1"));
        }

        Ok(Config {
            listen,
            region,
            sandbox,
            endpoints,
            token_url,
            credentials,
            sellers,
            default_seller,
            timeouts,
            token_retries,
            replay_buffer_bytes,
            unknown_operations,
            rdt_endpoints,
            target_application,
            restricted_report_types,
            restricted_data,
            restricted_data_retry,
            default_quota,
            operations,
            rate_limit,
            max_wait,
            max_queue,
            throttle_retries,
            retry_put_patch: raw.retry_put_patch.unwrap_or(false),
            inbound_keys,
            allowed_hosts,
            allowed_origins,
            max_connections: raw.max_connections,
            h2c: raw.h2c.unwrap_or(false),
            shared_state,
            replicas,
            sellers_file: raw.sellers_file.map(std::path::PathBuf::from),
            oauth,
        })
    }

    /// Adds the sellers kept in `sellers_file`; one stored under a name `proxy.toml` also uses
    /// replaces it (onboarding is the later word on that seller's token).
    ///
    /// Only the file: with `shared_state` the stored sellers are in Redis, which the proxy
    /// reads when it builds its state from this config (parsing a config does no network I/O).
    fn with_stored_sellers(mut self) -> Result<Config, ConfigError> {
        if self.shared_state.is_some() {
            return Ok(self);
        }
        if let Some(path) = &self.sellers_file {
            let found = stored::load(path)?;
            self.add_stored(found);
        }
        Ok(self)
    }

    /// Adds stored sellers, each replacing a seller of the same name.
    pub fn add_stored(&mut self, found: Vec<stored::StoredSeller>) {
        for s in found {
            self.sellers.retain(|c| c.name != s.name);
            self.sellers.push(SellerConfig {
                name: s.name,
                refresh_token: s.refresh_token,
                region: s.region,
                selling_partner_id: s.selling_partner_id,
                authorized_at: Some(s.authorized_at),
            });
        }
        self.sellers.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// `shared_state`, `shared_state_key` and `replicas`; the key is required with Redis.
    fn shared_state(
        over: &env::Overlay,
        raw: &file::RawConfig,
    ) -> Result<(Option<SharedState>, u32), ConfigError> {
        let url = layered(
            &over.shared_state,
            "shared_state",
            raw.shared_state.as_deref(),
            parse_shared_state,
        )?;
        let key = layered(
            &over.shared_state_key,
            "shared_state_key",
            raw.shared_state_key.as_deref(),
            parse_shared_key,
        )?;
        let replicas = match (&over.replicas, raw.replicas) {
            (Some(e), _) => parse_replicas(e.var, &e.value)?,
            (None, Some(n)) => parse_replicas("replicas", &n.to_string())?,
            (None, None) => 1,
        };
        let shared = match (url, key) {
            (Some(url), Some(key)) => Some(SharedState { url, key }),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    key: "shared_state_key".into(),
                    hint: "tokens kept in Redis are encrypted with it; set \
                           SPAPI_SHARED_STATE_KEY (e.g. `openssl rand -hex 32`)"
                        .into(),
                })
            }
            (None, _) => None,
        };
        Ok((shared, replicas))
    }

    /// `SPAPI_PROXY_KEYS` (comma-separated, every seller) or `inbound_keys`; a key limited to
    /// sellers must name configured ones.
    fn inbound_keys(
        over: &env::Overlay,
        raw: Option<Vec<file::RawKey>>,
        sellers: &[SellerConfig],
    ) -> Result<Vec<InboundKey>, ConfigError> {
        if let Some(e) = &over.proxy_keys {
            let mut out = Vec::new();
            for k in e.value.split(',') {
                if let Some(key) = inbound_key(e.var, k)? {
                    out.push(InboundKey { key, sellers: None });
                }
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        for (i, k) in raw.unwrap_or_default().into_iter().enumerate() {
            let (value, limited) = match k {
                file::RawKey::Any(v) => (v, None),
                file::RawKey::Limited { key, sellers } => (key, Some(sellers)),
            };
            let Some(key) = inbound_key("inbound_keys", &value)? else {
                continue;
            };
            if let Some(names) = &limited {
                if let Some(bad) = names
                    .iter()
                    .find(|n| !sellers.iter().any(|s| &s.name == *n))
                {
                    return Err(invalid(
                        &format!("inbound_keys[{i}].sellers"),
                        format!(
                            "no seller is called `{bad}` (configured: {})",
                            seller_names(sellers)
                        ),
                    ));
                }
            }
            out.push(InboundKey {
                key,
                sellers: limited,
            });
        }
        Ok(out)
    }

    /// Refuses to serve a non-loopback address without inbound keys: whoever can reach the
    /// port could act for the sellers.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.inbound_keys.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Missing {
                key: "inbound_keys".into(),
                hint: format!(
                    "listening on {} (not a loopback address) needs at least one key that \
                     clients must present; set SPAPI_PROXY_KEYS=KEY1,KEY2 or inbound_keys = \
                     [\"...\"] in proxy.toml, or listen on 127.0.0.1",
                    self.listen
                ),
            });
        }
        Ok(())
    }

    /// Fails unless the app's client id and secret are configured. Sellers are optional:
    /// without one, only grantless operations can be served.
    pub fn require_credentials(&self) -> Result<(), ConfigError> {
        let hint = |var: &str, alt: &str| {
            format!(
                "set it in proxy.toml [credentials] or with {var} (or {alt}); \
                 to try the proxy without credentials run `spapi-proxy demo`"
            )
        };
        let c = &self.credentials;
        if c.client_id.is_none() {
            return Err(ConfigError::Missing {
                key: "credentials.client_id".into(),
                hint: hint("SPAPI_CLIENT_ID", "LWA_APP_ID"),
            });
        }
        if c.client_secret.is_none() {
            return Err(ConfigError::Missing {
                key: "credentials.client_secret".into(),
                hint: hint("SPAPI_CLIENT_SECRET", "LWA_CLIENT_SECRET"),
            });
        }
        Ok(())
    }

    /// The `restricted_data` policy for `op`: its own setting, or the global one.
    pub fn restricted_data_for(&self, op: &Operation) -> RestrictedData {
        self.operations
            .get(&op.index)
            .and_then(|s| s.restricted_data)
            .unwrap_or(self.restricted_data)
    }

    /// The SP-API base URL of `region`.
    pub fn endpoint(&self, region: Region) -> &Url {
        &self.endpoints[region.index()]
    }

    /// Where RDTs for `region` are minted.
    pub fn rdt_endpoint(&self, region: Region) -> &Url {
        &self.rdt_endpoints[region.index()]
    }

    /// The seller called `name`.
    pub fn seller(&self, name: &str) -> Option<&SellerConfig> {
        self.sellers.iter().find(|s| s.name == name)
    }
}

/// The configured sellers' names, for messages.
pub fn seller_names(sellers: &[SellerConfig]) -> String {
    if sellers.is_empty() {
        return "none".into();
    }
    sellers
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::Catalog;
    use std::collections::HashMap;

    const CREDS: &str = r#"
[credentials]
client_id = "amzn1.application-oa2-client.test"
client_secret = "file-secret"
refresh_token = "Atzr|file-refresh"
"#;

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_with(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env_of(pairs);
        Config::from_toml_str(text, "proxy.toml", &|k| env.get(k).cloned())
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_with(text, &[])
    }

    fn err_key(r: Result<Config, ConfigError>) -> String {
        match r.unwrap_err() {
            ConfigError::Invalid { key, .. } | ConfigError::Missing { key, .. } => key,
            ConfigError::Parse { key, .. } => key,
            ConfigError::Io { message, .. } => message,
        }
    }

    #[test]
    fn defaults_are_amazons_real_endpoints() {
        let c = parse(CREDS).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.region, Region::Na);
        assert_eq!(
            c.endpoint(c.region).as_str(),
            "https://sellingpartnerapi-na.amazon.com/"
        );
        assert_eq!(c.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn rules_each_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("unknown top-level key", "lissten = \"x\"", "lissten"),
            (
                "unknown credentials key",
                "[credentials]\nclient = \"x\"",
                "client",
            ),
            ("bad listen", "listen = \"localhost\"", "listen"),
            ("bad region", "region = \"us\"", "region"),
            (
                "endpoint not a url",
                "endpoint = \"sellingpartnerapi\"",
                "endpoint",
            ),
            ("endpoint ftp", "endpoint = \"ftp://x\"", "endpoint"),
            (
                "endpoint with query",
                "endpoint = \"https://x/?a=1\"",
                "endpoint",
            ),
            ("token url", "token_url = \"nope\"", "token_url"),
            (
                "zero timeout",
                "[timeouts]\nconnect = 0",
                "timeouts.connect",
            ),
            (
                "negative timeout",
                "[timeouts]\nresponse = -1.0",
                "timeouts.response",
            ),
            ("wrong type", "sandbox = \"maybe\"", "sandbox"),
            ("too many retries", "token_retries = 99", "token_retries"),
            (
                "huge replay buffer",
                "replay_buffer_bytes = 1000000000",
                "replay_buffer_bytes",
            ),
        ];
        let env_creds = [
            ("SPAPI_CLIENT_ID", "a"),
            ("SPAPI_CLIENT_SECRET", "b"),
            ("SPAPI_REFRESH_TOKEN", "c"),
        ];
        for (name, text, key) in cases {
            let got = err_key(parse_with(text, &env_creds));
            assert!(
                got.contains(key),
                "{name}: error {got:?} does not name {key}"
            );
        }
    }

    #[test]
    fn missing_credentials_name_the_key_and_suggest_demo() {
        let err = parse("").unwrap().require_credentials().unwrap_err();
        assert!(matches!(&err, ConfigError::Missing { key, .. } if key == "credentials.client_id"));
        assert!(err.to_string().contains("spapi-proxy demo"), "{err}");
        let err = parse("[credentials]\nclient_id = \"a\"")
            .unwrap()
            .require_credentials()
            .unwrap_err();
        assert!(
            err.to_string().contains("credentials.client_secret"),
            "{err}"
        );
        // Without a refresh token the proxy serves grantless operations only.
        let c = parse("[credentials]\nclient_id = \"a\"\nclient_secret = \"b\"").unwrap();
        assert!(c.require_credentials().is_ok());
        assert!(c.sellers.is_empty());
    }

    #[test]
    fn environment_wins_over_the_file() {
        let c = parse_with(
            &format!("region = \"na\"\nlisten = \"127.0.0.1:1\"\n{CREDS}"),
            &[
                ("SPAPI_REGION", "eu"),
                ("SPAPI_SANDBOX", "true"),
                ("SPAPI_LISTEN", "0.0.0.0:9999"),
                ("SPAPI_CLIENT_SECRET", "env-secret"),
                ("SPAPI_TOKEN_URL", "http://127.0.0.1:9/auth/o2/token"),
            ],
        )
        .unwrap();
        assert_eq!(c.region, Region::Eu);
        assert_eq!(
            c.endpoint(c.region).as_str(),
            "https://sandbox.sellingpartnerapi-eu.amazon.com/"
        );
        assert_eq!(c.listen.to_string(), "0.0.0.0:9999");
        assert_eq!(c.credentials.client_secret.unwrap().expose(), "env-secret");
        assert_eq!(c.sellers[0].refresh_token.expose(), "Atzr|file-refresh");
        assert_eq!(c.token_url.as_str(), "http://127.0.0.1:9/auth/o2/token");
    }

    #[test]
    fn unknown_operation_names_get_a_suggestion() {
        let err = parse("[operations.getOrdres]\nrate = 1.0").unwrap_err();
        assert!(
            err.to_string().contains("did you mean `getOrders`"),
            "{err}"
        );
    }

    #[test]
    fn rate_limit_switch() {
        assert!(parse(CREDS).unwrap().rate_limit);
        assert!(
            !parse(&format!("rate_limit = false\n{CREDS}"))
                .unwrap()
                .rate_limit
        );
        for off in ["off", "false", "0"] {
            assert!(
                !parse_with(CREDS, &[("SPAPI_RATE_LIMIT", off)])
                    .unwrap()
                    .rate_limit
            );
        }
        let on = parse_with(
            &format!("rate_limit = false\n{CREDS}"),
            &[("SPAPI_RATE_LIMIT", "on")],
        );
        assert!(on.unwrap().rate_limit, "the environment wins");
    }

    #[test]
    fn python_sp_api_variable_names_are_accepted() {
        let c = parse_with(
            "",
            &[
                ("LWA_APP_ID", "app"),
                ("LWA_CLIENT_SECRET", "sec"),
                ("SP_API_REFRESH_TOKEN", "Atzr|r"),
            ],
        )
        .unwrap();
        assert_eq!(c.credentials.client_id.as_deref(), Some("app"));
        assert_eq!(c.credentials.client_secret.unwrap().expose(), "sec");
        // SPAPI_* wins when both are set.
        let c = parse_with(
            "",
            &[
                ("LWA_APP_ID", "app"),
                ("SPAPI_CLIENT_ID", "spapi-app"),
                ("LWA_CLIENT_SECRET", "sec"),
                ("SP_API_REFRESH_TOKEN", "Atzr|r"),
            ],
        )
        .unwrap();
        assert_eq!(c.credentials.client_id.as_deref(), Some("spapi-app"));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("SPAPI_REGION", "mars"),
            ("SPAPI_SANDBOX", "perhaps"),
            ("SPAPI_ENDPOINT", "not a url"),
            ("SPAPI_TOKEN_URL", "ftp://x"),
            ("SPAPI_LISTEN", "8080"),
            ("SPAPI_RATE_LIMIT", "sometimes"),
        ];
        for (var, value) in cases {
            let got = err_key(parse_with(CREDS, &[(var, value)]));
            assert_eq!(&got, var);
        }
    }

    #[test]
    fn rdt_endpoint_table() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "production",
                &[],
                "https://sellingpartnerapi-na.amazon.com/",
            ),
            (
                "sandbox mints in production",
                &[("SPAPI_SANDBOX", "true"), ("SPAPI_REGION", "fe")],
                "https://sellingpartnerapi-fe.amazon.com/",
            ),
            (
                "endpoint override",
                &[("SPAPI_ENDPOINT", "http://127.0.0.1:9000")],
                "http://127.0.0.1:9000/",
            ),
            (
                "explicit",
                &[("SPAPI_RDT_ENDPOINT", "http://127.0.0.1:9001")],
                "http://127.0.0.1:9001/",
            ),
        ];
        for (name, env, want) in cases {
            let c = parse_with(CREDS, env).unwrap();
            assert_eq!(c.rdt_endpoint(c.region).as_str(), *want, "{name}");
        }
    }

    #[test]
    fn endpoint_override_replaces_the_regional_host() {
        let c = parse_with(CREDS, &[("SPAPI_ENDPOINT", "http://127.0.0.1:9000")]).unwrap();
        assert_eq!(c.endpoint(c.region).as_str(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn regional_hosts() {
        let cases = [
            ("na", false, "https://sellingpartnerapi-na.amazon.com/"),
            ("eu", false, "https://sellingpartnerapi-eu.amazon.com/"),
            ("fe", false, "https://sellingpartnerapi-fe.amazon.com/"),
            (
                "na",
                true,
                "https://sandbox.sellingpartnerapi-na.amazon.com/",
            ),
            (
                "eu",
                true,
                "https://sandbox.sellingpartnerapi-eu.amazon.com/",
            ),
            (
                "fe",
                true,
                "https://sandbox.sellingpartnerapi-fe.amazon.com/",
            ),
        ];
        for (region, sandbox, want) in cases {
            let c = parse(&format!(
                "region = \"{region}\"\nsandbox = {sandbox}\n{CREDS}"
            ))
            .unwrap();
            assert_eq!(c.endpoint(c.region).as_str(), want);
        }
    }

    #[test]
    fn restricted_data_rules() {
        let c = parse("").unwrap();
        assert_eq!(c.restricted_data, RestrictedData::Auto);
        assert_eq!(c.restricted_data_retry, Duration::from_secs(3600));
        let c = parse(
            "restricted_data = \"never\"\nrestricted_data_retry = 60\n\
             [operations.ordersV0.getOrder]\nrestricted_data = \"always\"",
        )
        .unwrap();
        let catalog = Catalog::builtin();
        let get_order = catalog.by_qualified("ordersV0", "getOrder").unwrap();
        let get_orders = catalog.by_qualified("ordersV0", "getOrders").unwrap();
        assert_eq!(c.restricted_data_for(get_order), RestrictedData::Always);
        assert_eq!(c.restricted_data_for(get_orders), RestrictedData::Never);
        assert_eq!(c.restricted_data_retry, Duration::from_secs(60));
        let cases = [
            ("restricted_data = \"sometimes\"", "restricted_data"),
            ("restricted_data_retry = -1", "restricted_data_retry"),
            (
                "[operations.getOrderAddress]\nrestricted_data = \"never\"",
                "operations.getOrderAddress.restricted_data",
            ),
            (
                "[operations.getOrders]\nrestricted_data = \"maybe\"",
                "operations.getOrders.restricted_data",
            ),
        ];
        // A bare name shared with Direct Fulfillment's getOrders applies where it can.
        let c = parse("[operations.getOrders]\nrestricted_data = \"never\"").unwrap();
        assert_eq!(c.restricted_data_for(get_orders), RestrictedData::Never);
        for (text, key) in cases {
            assert_eq!(err_key(parse(text)), key, "{text}");
        }
    }

    #[test]
    fn oauth_redirect_uri_table() {
        let cases = [
            ("https://proxy.example/_proxy/oauth/callback", true),
            ("http://127.0.0.1:8080/_proxy/oauth/callback", true),
            ("http://localhost:8080/_proxy/oauth/callback", true),
            ("http://[::1]:8080/_proxy/oauth/callback", true),
            ("http://proxy.example/_proxy/oauth/callback", false),
            ("http://10.0.0.5/_proxy/oauth/callback", false),
            ("ftp://proxy.example/cb", false),
        ];
        for (uri, ok) in cases {
            let got = parse(&format!("[oauth]\nredirect_uri = \"{uri}\"\ndraft = true"));
            match ok {
                true => {
                    let c = got.unwrap();
                    assert_eq!(c.oauth.redirect_uri.unwrap().as_str(), uri, "{uri}");
                    assert!(c.oauth.draft);
                }
                false => assert_eq!(err_key(got), "oauth.redirect_uri", "{uri}"),
            }
        }
    }

    #[test]
    fn shared_state_table() {
        let key = "shared_state_key = \"0123456789abcdef0123456789abcdef\"\n";
        let c = parse(&format!(
            "shared_state = \"redis://:pw@10.0.0.5:6379/2\"\n{key}replicas = 3"
        ))
        .unwrap();
        let shared = c.shared_state.as_ref().unwrap();
        assert_eq!(shared.url.expose(), "redis://:pw@10.0.0.5:6379/2");
        assert_eq!(c.replicas, 3);
        // The password never shows.
        assert!(!format!("{c:?}").contains("pw"), "{c:?}");
        assert!(parse(&format!(
            "shared_state = \"rediss://cache.internal:6380\"\n{key}"
        ))
        .is_ok());
        let c = parse("").unwrap();
        assert!(c.shared_state.is_none());
        assert_eq!(c.replicas, 1);
        let cases = [
            ("shared_state = \"http://10.0.0.5:6379\"", "shared_state"),
            ("shared_state = \"redis://\"", "shared_state"),
            ("shared_state = \"redis://10.0.0.5\"", "shared_state_key"),
            (
                "shared_state = \"redis://10.0.0.5\"\nshared_state_key = \"short\"",
                "shared_state_key",
            ),
            ("replicas = 0", "replicas"),
        ];
        for (text, key) in cases {
            assert_eq!(err_key(parse(text)), key, "{text}");
        }
        let env = [
            ("SPAPI_CLIENT_ID", "a"),
            ("SPAPI_CLIENT_SECRET", "b"),
            ("SPAPI_REFRESH_TOKEN", "c"),
            ("SPAPI_SHARED_STATE", "redis://127.0.0.1:6379/0"),
            ("SPAPI_SHARED_STATE_KEY", "0123456789abcdef0123456789abcdef"),
            ("SPAPI_REPLICAS", "2"),
        ];
        let c = parse_with("", &env).unwrap();
        assert!(c.shared_state.is_some());
        assert_eq!(c.replicas, 2);
        let env = [
            ("SPAPI_CLIENT_ID", "a"),
            ("SPAPI_CLIENT_SECRET", "b"),
            ("SPAPI_REFRESH_TOKEN", "c"),
            ("SPAPI_SHARED_STATE", "redis://127.0.0.1:6379/0"),
        ];
        assert_eq!(err_key(parse_with("", &env)), "shared_state_key");
    }

    #[test]
    fn example_file_is_valid_and_gives_the_defaults() {
        let text = include_str!("../../proxy.toml");
        let env = [
            ("SPAPI_CLIENT_ID", "a"),
            ("SPAPI_CLIENT_SECRET", "b"),
            ("SPAPI_REFRESH_TOKEN", "c"),
        ];
        let from_file = parse_with(text, &env).unwrap();
        let defaults = parse_with("", &env).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn example_file_with_every_commented_key_enabled_is_valid() {
        let key_line = regex_lite_commented_key;
        let text: String = include_str!("../../proxy.toml")
            .lines()
            .map(|l| key_line(l).unwrap_or(l).to_string() + "\n")
            .collect();
        let c = parse(&text).unwrap();
        assert_eq!(
            c.credentials.client_id.as_deref(),
            Some("amzn1.application-oa2-client.0123456789abcdef")
        );
        assert!(text.contains("endpoint = "));
        let op = crate::operations::Catalog::builtin()
            .by_qualified("ordersV0", "getOrder")
            .unwrap();
        assert_eq!(
            c.operations[&op.index].data_elements.as_deref(),
            Some(&["buyerInfo".to_string(), "shippingAddress".to_string()][..])
        );
    }

    /// `# key = value` -> `key = value`, `# [table]` -> `[table]`; prose comments stay.
    fn regex_lite_commented_key(line: &str) -> Option<&str> {
        let rest = line.strip_prefix("# ")?;
        if rest.starts_with("[") && rest.trim_end().ends_with(']') {
            return Some(rest);
        }
        let (key, _) = rest.split_once(" = ")?;
        key.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.')
            .then_some(rest)
    }

    const APP: &str = "[credentials]\nclient_id = \"a\"\nclient_secret = \"b\"\n";

    #[test]
    fn seller_rules_each_name_their_key() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                "[sellers.a]\nrefresh_token = \"x\"\ndefault = true\n[sellers.b]\nrefresh_token = \"y\"\ndefault = true\n",
                "sellers.b.default",
                &[],
            ),
            (
                "[sellers.a]\nrefresh_token = \"x\"\nrefresh_token_env = \"A_RT\"\n",
                "sellers.a.refresh_token_env",
                &[],
            ),
            ("[sellers.a]\nrefresh_token_env = \"A_RT\"\n", "sellers.a.refresh_token_env", &[]),
            ("[sellers.a]\nregion = \"eu\"\n", "sellers.a.refresh_token", &[]),
            ("[sellers.a]\nrefresh_token = \"x\"\nregion = \"mars\"\n", "sellers.a.region", &[]),
            ("[sellers.a]\nrefresh_token = \"x\"\nshop = 1\n", "sellers.a", &[]),
            ("[sellers.\"a b\"]\nrefresh_token = \"x\"\n", "sellers.a b", &[]),
            (
                "[sellers.a]\nrefresh_token = \"x\"\nselling_partner_id = \"A-1\"\n",
                "sellers.a.selling_partner_id",
                &[],
            ),
            (
                "[sellers.default]\nrefresh_token = \"x\"\n",
                "SPAPI_REFRESH_TOKEN",
                &[("SPAPI_REFRESH_TOKEN", "Atzr|env")],
            ),
            (
                "inbound_keys = [{ key = \"0123456789abcdef0\", sellers = [\"zeta\"] }]\n[sellers.a]\nrefresh_token = \"x\"\n",
                "inbound_keys[0].sellers",
                &[],
            ),
            ("[endpoints]\neu = \"ftp://x\"\n", "endpoints.eu", &[]),
            ("[endpoints]\nus = \"http://x\"\n", "endpoints.us", &[]),
        ];
        for (text, key, env) in cases {
            assert_eq!(err_key(parse_with(text, env)), *key, "{text}");
        }
    }

    #[test]
    fn sellers_from_tables_the_environment_and_the_single_form() {
        let text = format!(
            "region = \"fe\"\n{APP}refresh_token = \"Atzr|single\"\n\
             [sellers.acme]\nrefresh_token_env = \"ACME_RT\"\nregion = \"eu\"\n\
             [sellers.beta]\nrefresh_token = \"Atzr|beta\"\n"
        );
        let c = parse_with(&text, &[("ACME_RT", "Atzr|acme")]).unwrap();
        let got: Vec<(&str, &str, Region)> = c
            .sellers
            .iter()
            .map(|s| (s.name.as_str(), s.refresh_token.expose(), s.region))
            .collect();
        assert_eq!(
            got,
            [
                ("acme", "Atzr|acme", Region::Eu),
                ("beta", "Atzr|beta", Region::Fe),
                ("default", "Atzr|single", Region::Fe),
            ]
        );
        assert_eq!(c.default_seller.as_deref(), Some("default"));
        let c = parse(&format!(
            "{APP}refresh_token = \"Atzr|single\"\n[sellers.acme]\nrefresh_token = \"x\"\ndefault = true\n"
        ))
        .unwrap();
        assert_eq!(c.default_seller.as_deref(), Some("acme"), "a table wins");
        let c = parse("[sellers.acme]\nrefresh_token = \"x\"\n").unwrap();
        assert_eq!(c.default_seller, None, "no default unless one is marked");
    }

    #[test]
    fn endpoint_precedence_table() {
        let na = |c: &Config| c.endpoint(Region::Na).to_string();
        let eu = |c: &Config| c.endpoint(Region::Eu).to_string();
        let table = "[endpoints]\neu = \"http://127.0.0.1:9002\"\n";
        type Case<'a> = (&'a str, String, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                "defaults",
                String::new(),
                &[],
                "https://sellingpartnerapi-na.amazon.com/",
                "https://sellingpartnerapi-eu.amazon.com/",
            ),
            (
                "table for one region",
                table.into(),
                &[],
                "https://sellingpartnerapi-na.amazon.com/",
                "http://127.0.0.1:9002/",
            ),
            (
                "endpoint for the rest",
                format!("endpoint = \"http://127.0.0.1:9001\"\n{table}"),
                &[],
                "http://127.0.0.1:9001/",
                "http://127.0.0.1:9002/",
            ),
            (
                "SPAPI_ENDPOINT for every region",
                table.into(),
                &[("SPAPI_ENDPOINT", "http://127.0.0.1:9000")],
                "http://127.0.0.1:9000/",
                "http://127.0.0.1:9000/",
            ),
        ];
        for (name, text, env, want_na, want_eu) in cases {
            let c = parse_with(text, env).unwrap();
            assert_eq!(
                (na(&c).as_str(), eu(&c).as_str()),
                (*want_na, *want_eu),
                "{name}"
            );
            assert_eq!(c.rdt_endpoint(Region::Eu), c.endpoint(Region::Eu), "{name}");
        }
    }
}
