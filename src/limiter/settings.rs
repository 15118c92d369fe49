//! The limiter's own settings and its quota policy: the published plan, the config's overrides,
//! the default for everything else, and the sandbox's one shared limit.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{Config, Quota, QuotaSource};
use crate::operations::Operation;

/// In the sandbox every operation shares one limit ("Selling Partner API Sandbox" docs).
pub const SANDBOX_QUOTA: Quota = Quota {
    rate: 5.0,
    burst: 15,
};

/// What the limiter needs from the config, taken once per (re)load.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The application whose quota this is: a fingerprint of the LWA client id, the first
    /// part of every bucket's name.
    pub application: Arc<str>,
    /// Whether local limiting is on (`rate_limit`).
    pub enabled: bool,
    /// Whether every operation shares the sandbox's one limit.
    pub sandbox: bool,
    /// Most requests waiting per bucket.
    pub max_queue: usize,
    /// Operations without a published plan, and unknown requests.
    pub default_quota: Quota,
    /// `[operations.*]` rate and burst overrides, by catalog index.
    pub overrides: HashMap<usize, (Option<f64>, Option<u32>)>,
}

impl Settings {
    /// The limiter's part of `config`.
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            application: application(config.credentials.client_id.as_deref().unwrap_or("")),
            enabled: config.rate_limit,
            sandbox: config.sandbox,
            max_queue: config.max_queue,
            default_quota: config.default_quota,
            overrides: config
                .operations
                .iter()
                .filter(|(_, s)| s.rate.is_some() || s.burst.is_some())
                .map(|(&i, s)| (i, (s.rate, s.burst)))
                .collect(),
        }
    }

    /// The rate `[operations.*]` sets for `op`: a ceiling Amazon's header cannot lift.
    pub fn rate_override(&self, op: &Operation) -> Option<f64> {
        self.overrides.get(&op.index).and_then(|(rate, _)| *rate)
    }

    /// The bucket shape for `op` (or for unknown requests), and where it came from.
    pub fn quota(&self, op: Option<&Operation>) -> (Quota, QuotaSource) {
        if self.sandbox {
            return (SANDBOX_QUOTA, QuotaSource::Sandbox);
        }
        let Some(op) = op else {
            return (self.default_quota, QuotaSource::Default);
        };
        let (over_rate, over_burst) = self.overrides.get(&op.index).copied().unwrap_or_default();
        let quota = Quota {
            rate: over_rate.or(op.rate).unwrap_or(self.default_quota.rate),
            burst: over_burst.or(op.burst).unwrap_or(self.default_quota.burst),
        };
        let source = if over_rate.is_some() || over_burst.is_some() {
            QuotaSource::Config
        } else if op.rate.is_some() {
            QuotaSource::Catalog
        } else {
            QuotaSource::Default
        };
        (quota, source)
    }
}

/// The first 12 hex digits of the client id's SHA-256: short, stable, and the same in every
/// replica that holds the same credentials.
pub fn application(client_id: &str) -> Arc<str> {
    let digest = Sha256::digest(client_id.as_bytes());
    let mut out = String::with_capacity(12);
    for b in &digest[..6] {
        out.push_str(&format!("{b:02x}"));
    }
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::Catalog;

    fn settings(toml: &str) -> Settings {
        Settings::from_config(&Config::from_toml_str(toml, "t", &|_| None).unwrap())
    }

    #[test]
    fn quota_resolution_table() {
        let c = settings(
            "default_rate = 0.5\ndefault_burst = 3\n\
             [operations.getOrders]\nrate = 0.5\nburst = 30\n\
             [operations.ordersV0.getOrder]\nburst = 10\n\
             [operations.getOrder]\nrate = 0.1\n",
        );
        let cat = Catalog::builtin();
        let op = |api: &str, id: &str| cat.by_qualified(api, id);
        let cases = [
            (
                "override both",
                op("ordersV0", "getOrders"),
                0.5,
                30,
                QuotaSource::Config,
            ),
            (
                "bare name hits every API",
                op("vendorDirectFulfillmentOrdersV1", "getOrders"),
                0.5,
                30,
                QuotaSource::Config,
            ),
            (
                "qualified fields win over bare",
                op("ordersV0", "getOrder"),
                0.1,
                10,
                QuotaSource::Config,
            ),
            (
                "published",
                op("catalogItems_2022-04-01", "getCatalogItem"),
                2.0,
                2,
                QuotaSource::Catalog,
            ),
            (
                "no published plan",
                op("sellerWallet_2024-03-01", "listAccounts"),
                0.5,
                3,
                QuotaSource::Default,
            ),
            ("unknown request", None, 0.5, 3, QuotaSource::Default),
        ];
        for (name, op, rate, burst, source) in cases {
            let (q, s) = c.quota(op);
            assert_eq!((q.rate, q.burst, s), (rate, burst, source), "{name}");
        }
    }

    #[test]
    fn the_sandbox_shares_one_limit() {
        let c = settings("sandbox = true");
        let cat = Catalog::builtin();
        for op in [cat.by_qualified("ordersV0", "getOrders"), None] {
            assert_eq!(c.quota(op), (SANDBOX_QUOTA, QuotaSource::Sandbox));
        }
    }
}
