//! `[sellers.NAME]` and `[endpoints]`: whom the proxy acts for, and where each region is.

use serde::Deserialize;

use super::env::Env;
use super::file::RawEndpoints;
use super::{invalid, parse_url, ConfigError, Region};
use crate::secret::Secret;
use reqwest::Url;

/// The name of the seller configured by the single-seller form (`credentials.refresh_token`,
/// `SPAPI_REFRESH_TOKEN`).
pub const DEFAULT_SELLER: &str = "default";

/// One seller the proxy acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SellerConfig {
    /// The name requests use (`x-spapi-seller`, `/_seller/NAME/`).
    pub name: String,
    /// The seller's refresh token.
    pub refresh_token: Secret,
    /// The region used when the request's marketplaces do not say.
    pub region: Region,
    /// The seller's merchant id, for the operator's reference.
    pub selling_partner_id: Option<String>,
    /// For a seller added by onboarding (kept in `sellers_file`): when it was authorized.
    pub authorized_at: Option<String>,
}

/// `[sellers.NAME]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeller {
    refresh_token: Option<String>,
    refresh_token_env: Option<String>,
    region: Option<String>,
    selling_partner_id: Option<String>,
    default: Option<bool>,
}

/// A seller name: what fits in a header and a path segment unchanged.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validates `[sellers.*]` plus the single-seller form `single` (the refresh token, and the key
/// or variable it came from). Returns the sellers sorted by name, and the default seller's name.
pub(super) fn sellers(
    table: Option<toml::Table>,
    single: Option<(String, String)>,
    region: Region,
    env: Env<'_>,
) -> Result<(Vec<SellerConfig>, Option<String>), ConfigError> {
    let mut out = Vec::new();
    let mut default = None;
    for (name, value) in table.unwrap_or_default() {
        let key = format!("sellers.{name}");
        if !valid_name(&name) {
            return Err(invalid(
                &key,
                "a seller name is 1 to 64 letters, digits, `-`, `_` or `.`",
            ));
        }
        let raw: RawSeller = value
            .try_into()
            .map_err(|e: toml::de::Error| invalid(&key, e.message().to_string()))?;
        let refresh_token = match (raw.refresh_token, raw.refresh_token_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    &format!("{key}.refresh_token_env"),
                    "set refresh_token or refresh_token_env, not both",
                ))
            }
            (Some(t), None) if !t.trim().is_empty() => t.trim().to_string(),
            (Some(_), None) => {
                return Err(invalid(&format!("{key}.refresh_token"), "is empty"));
            }
            (None, Some(var)) => env(&var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    invalid(
                        &format!("{key}.refresh_token_env"),
                        format!("the environment variable `{var}` is not set"),
                    )
                })?,
            (None, None) => {
                return Err(ConfigError::Missing {
                    key: format!("{key}.refresh_token"),
                    hint: "each seller needs refresh_token, or refresh_token_env naming the \
                           environment variable that holds it"
                        .into(),
                })
            }
        };
        let region = match raw.region {
            Some(r) => Region::parse(&format!("{key}.region"), &r)?,
            None => region,
        };
        let selling_partner_id = raw.selling_partner_id.map(|s| s.trim().to_string());
        if selling_partner_id
            .as_deref()
            .is_some_and(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(invalid(
                &format!("{key}.selling_partner_id"),
                "a merchant id is letters and digits, like A2EUQ1WTGCTBG2",
            ));
        }
        if raw.default == Some(true) {
            if let Some(other) = default.replace(name.clone()) {
                return Err(invalid(
                    &format!("{key}.default"),
                    format!("only one seller can be the default, and `{other}` already is"),
                ));
            }
        }
        out.push(SellerConfig {
            name,
            refresh_token: Secret::new(refresh_token),
            region,
            selling_partner_id,
            authorized_at: None,
        });
    }
    if let Some((key, token)) = single {
        if out.iter().any(|s| s.name == DEFAULT_SELLER) {
            return Err(invalid(
                &key,
                format!(
                    "the single-seller refresh token is the seller `{DEFAULT_SELLER}`, which \
                     [sellers.{DEFAULT_SELLER}] defines too; keep one of them"
                ),
            ));
        }
        out.push(SellerConfig {
            name: DEFAULT_SELLER.into(),
            refresh_token: Secret::new(token),
            region,
            selling_partner_id: None,
            authorized_at: None,
        });
        // The single-seller form is the default unless a table says otherwise.
        default.get_or_insert_with(|| DEFAULT_SELLER.to_string());
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, default))
}

/// The base URL of each region, indexed by [`Region::index`]: `SPAPI_ENDPOINT` (every region),
/// else `[endpoints]`, else `endpoint` (every region), else Amazon's regional host.
pub(super) fn endpoints(
    from_env: Option<(&str, &str)>,
    table: Option<RawEndpoints>,
    endpoint: Option<&str>,
    sandbox: bool,
) -> Result<[Url; 3], ConfigError> {
    let table = table.unwrap_or_default();
    let one = |region: Region, own: &Option<String>| match (from_env, own, endpoint) {
        (Some((var, url)), _, _) => parse_url(var, url),
        (None, Some(url), _) => parse_url(&format!("endpoints.{}", region.name()), url),
        (None, None, Some(url)) => parse_url("endpoint", url),
        (None, None, None) => parse_url("endpoint", region.endpoint(sandbox)),
    };
    Ok([
        one(Region::Na, &table.na)?,
        one(Region::Eu, &table.eu)?,
        one(Region::Fe, &table.fe)?,
    ])
}
