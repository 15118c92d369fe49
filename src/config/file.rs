//! `proxy.toml` as written: every key optional, unknown keys rejected, nothing validated yet.

use std::fmt;

use serde::Deserialize;

use super::ConfigError;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub listen: Option<String>,
    pub region: Option<String>,
    pub sandbox: Option<bool>,
    pub endpoint: Option<String>,
    pub endpoints: Option<RawEndpoints>,
    pub token_url: Option<String>,
    #[serde(default)]
    pub credentials: RawCredentials,
    pub sellers: Option<toml::Table>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub token_retries: Option<u32>,
    pub replay_buffer_bytes: Option<u64>,
    pub unknown_operations: Option<String>,
    pub rdt_endpoint: Option<String>,
    pub target_application: Option<String>,
    pub restricted_report_types: Option<Vec<String>>,
    pub restricted_data: Option<String>,
    pub restricted_data_retry: Option<f64>,
    pub default_rate: Option<f64>,
    pub default_burst: Option<u32>,
    pub operations: Option<toml::Table>,
    pub rate_limit: Option<bool>,
    pub max_wait: Option<f64>,
    pub max_queue: Option<usize>,
    pub throttle_retries: Option<u32>,
    pub retry_put_patch: Option<bool>,
    pub inbound_keys: Option<Vec<RawKey>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    pub h2c: Option<bool>,
    pub shared_state: Option<String>,
    pub shared_state_key: Option<String>,
    pub replicas: Option<u32>,
    pub sellers_file: Option<String>,
    pub oauth: Option<RawOAuth>,
}

/// `[oauth]`: onboarding sellers through Amazon's website authorization workflow.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth {
    pub redirect_uri: Option<String>,
    pub draft: Option<bool>,
    pub authorize_url: Option<String>,
}

/// `[endpoints]`: a base URL per region.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoints {
    pub na: Option<String>,
    pub eu: Option<String>,
    pub fe: Option<String>,
}

/// One entry of `inbound_keys`: a key for every seller, or `{ key = "...", sellers = [...] }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawKey {
    Any(String),
    Limited { key: String, sellers: Vec<String> },
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawKey::Any(_) => f.write_str("RawKey(***)"),
            RawKey::Limited { sellers, .. } => write!(f, "RawKey(***, sellers {sellers:?})"),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    pub application_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub next_client_secret: Option<String>,
    pub refresh_token: Option<String>,
}

impl fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("RawCredentials")
            .field("application_id", &self.application_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &masked(&self.client_secret))
            .field("next_client_secret", &masked(&self.next_client_secret))
            .field("refresh_token", &masked(&self.refresh_token))
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub connect: Option<f64>,
    pub response: Option<f64>,
    pub idle: Option<f64>,
    pub token: Option<f64>,
    pub shutdown_grace: Option<f64>,
    pub header_read: Option<f64>,
    pub client_idle: Option<f64>,
}

/// Parses the text of `file`; a syntax or type error names its line and dotted key.
pub(super) fn parse(text: &str, file: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, key) = key_at(text, e.span().map_or(0, |s| s.start));
        ConfigError::Parse {
            file: file.to_string(),
            line,
            key,
            message: suggest_field(e.message()),
        }
    })
}

/// serde's "unknown field `lisen`, expected one of `listen`, ..." becomes "unknown field
/// `lisen`; did you mean `listen`?" when one expected name is close, as operation names do.
fn suggest_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, expected)) = rest.split_once("`, expected ") else {
        return message.to_string();
    };
    let nearest = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|name| {
            let d = crate::operations::edit_distance(
                &name.to_ascii_lowercase(),
                &field.to_ascii_lowercase(),
            );
            (d, name)
        })
        .min();
    match nearest {
        Some((d, name)) if d <= (field.len() / 3).max(2) => {
            format!("unknown field `{field}`; did you mean `{name}`?")
        }
        _ => message.to_string(),
    }
}

/// The line number and dotted key at byte `offset` of a TOML text, so that a parse error
/// names the key even when the parser's own message (e.g. "invalid type") does not.
fn key_at(text: &str, offset: usize) -> (usize, String) {
    let mut table = String::new();
    let mut start = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let end = start + line.len();
        let trimmed = line.trim();
        let header = trimmed
            .strip_prefix('[')
            .and_then(|t| t.split(']').next())
            .map(|t| t.trim_matches(['[', ' ']).to_string());
        if offset < end || end == text.len() {
            let key = match (&header, trimmed.split_once('=')) {
                (Some(h), _) => h.clone(),
                (None, Some((k, _))) if table.is_empty() => k.trim().to_string(),
                (None, Some((k, _))) => format!("{table}.{}", k.trim()),
                (None, None) => table.clone(),
            };
            return (i + 1, key);
        }
        if let Some(h) = header {
            table = h;
        }
        start = end;
    }
    (1, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_a_did_you_mean() {
        let cases = [
            ("lisen = \"127.0.0.1:1\"\n", "did you mean `listen`?"),
            ("inbound_key = []\n", "did you mean `inbound_keys`?"),
            ("[timeouts]\nconect = 1\n", "did you mean `connect`?"),
            ("ratelimit = true\n", "did you mean `rate_limit`?"),
            ("completely_else = 1\n", "expected one of"),
        ];
        for (text, want) in cases {
            let err = parse(text, "t.toml").err().unwrap().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
