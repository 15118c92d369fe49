//! The `operations` and `explain` commands: the catalog and the proxy's decisions, for people.

use http::Method;
use serde_json::{json, Value};

use crate::auth::{self, OnRefusal, TokenPlan};
use crate::config::{Config, QuotaSource, RestrictedData, UnknownOperations};
use crate::operations::{AuthKind, Catalog};

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), |r| format!("{r}"))
}

/// One line per operation, aligned, with a header.
pub fn operations_table(catalog: &Catalog) -> String {
    let header = [
        "operationId",
        "api",
        "version",
        "method",
        "path",
        "rate",
        "burst",
        "auth",
        "scope/dataElements",
    ];
    let rows: Vec<[String; 9]> = catalog
        .operations()
        .iter()
        .map(|o| {
            [
                o.id.clone(),
                o.api.clone(),
                o.version.clone(),
                o.method.to_string(),
                o.template.clone(),
                rate_text(o.rate),
                o.burst.map_or_else(|| "-".into(), |b| b.to_string()),
                o.auth.name().to_string(),
                o.auth.detail(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

/// The catalog as a JSON array.
pub fn operations_json(catalog: &Catalog) -> Value {
    Value::Array(
        catalog
            .operations()
            .iter()
            .map(|o| {
                let mut v = json!({
                    "operationId": o.id,
                    "api": o.api,
                    "version": o.version,
                    "method": o.method.as_str(),
                    "path": o.template,
                    "rate": o.rate,
                    "burst": o.burst,
                    "auth": o.auth.name(),
                    "notes": o.notes,
                });
                match &o.auth {
                    AuthKind::Rdt(spec) => {
                        v["dataElements"] = json!(spec.elements);
                        v["defaultDataElements"] = json!(spec.default_elements);
                        v["genericPath"] = json!(spec.generic);
                    }
                    AuthKind::Grantless { scope } => v["scope"] = json!(scope),
                    AuthKind::RdtConditional => v["genericPath"] = json!(false),
                    AuthKind::Lwa => {}
                }
                v
            })
            .collect(),
    )
}

/// What the proxy would do with `METHOD target` under `config`, one fact per line.
pub fn explain(config: &Config, method: &str, target: &str) -> Result<String, String> {
    let method: Method = method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    if !target.starts_with('/') {
        return Err(format!("`{target}` must be a path starting with /"));
    }
    let path = target.split('?').next().unwrap_or(target);
    let op = Catalog::builtin().find(&method, path);
    let upstream = format!("{}{target}", config.endpoint.as_str().trim_end_matches('/'));
    let mut out = format!("request      {method} {target}\n");
    let (quota, source) = config.quota(op);
    match op {
        Some(o) => {
            out.push_str(&format!(
                "operation    {} ({} {}, model {})\n",
                o.id,
                o.api,
                o.version,
                o.qualified()
            ));
            out.push_str(&format!("template     {} {}\n", o.method, o.template));
            if !o.notes.is_empty() {
                out.push_str(&format!("notes        {}\n", o.notes));
            }
        }
        None => {
            out.push_str(&format!(
                "operation    unknown: no SP-API operation in the catalog matches {method} {path}\n"
            ));
            if config.unknown_operations == UnknownOperations::Reject {
                out.push_str(
                    "action       rejected with 404 unknown_operation (unknown_operations = \"reject\"); Amazon is not called\n",
                );
                return Ok(out);
            }
            out.push_str(
                "action       forwarded with the seller's LWA token (unknown_operations = \"forward\"), logged once per path\n",
            );
        }
    }
    let source_text = match (source, op) {
        (QuotaSource::Catalog, _) => "published in Amazon's model",
        (QuotaSource::Config, _) => "from [operations] in the config",
        (QuotaSource::Default, Some(_)) => "no published plan: default_rate/default_burst",
        (QuotaSource::Sandbox, _) => "the sandbox: one limit shared by every operation",
        (QuotaSource::Default, None) => {
            "one bucket shared by all unknown requests: default_rate/default_burst"
        }
    };
    out.push_str(&format!(
        "rate limit   {} req/s, burst {} ({source_text})\n",
        quota.rate, quota.burst
    ));
    let configured = op
        .and_then(|o| config.operations.get(&o.index))
        .and_then(|s| s.data_elements.as_deref());
    let policy = op.map_or(config.restricted_data, |o| config.restricted_data_for(o));
    let plan = auth::plan(op, path, None, configured, policy).map_err(|e| e.to_string())?;
    let token = match &plan {
        TokenPlan::Lwa => "the seller's LWA access token".to_string(),
        TokenPlan::LwaNoPii => format!(
            "the seller's LWA access token, answered without personal data \
             (restricted_data = \"{}\"; x-spapi-proxy-pii: omitted)",
            policy.name()
        ),
        TokenPlan::Rdt {
            resource,
            on_refusal,
        } => format!(
            "a Restricted Data Token for {} {} ({}), dataElements: {}; \
             override per request with x-spapi-data-elements\n\
             if refused   {}",
            resource.method,
            resource.path,
            if resource.path == path {
                "specific path: one RDT per id"
            } else {
                "generic path: one RDT serves every id for an hour"
            },
            if resource.data_elements.is_empty() {
                "none".to_string()
            } else {
                resource.data_elements.join(",")
            },
            refusal_text(*on_refusal, policy),
        ),
        TokenPlan::RdtIfRestrictedReport { path, policy } => format!(
            "a Restricted Data Token for GET {path} (specific path) if the document belongs to a \
             restricted report type, otherwise the seller's LWA access token; force with \
             x-spapi-restricted: true|false (restricted_data = \"{}\")",
            policy.name()
        ),
        TokenPlan::Grantless { scope } => format!(
            "a grantless token (client_credentials, scope {scope}); no refresh token needed"
        ),
    };
    out.push_str(&format!("token        {token}\n"));
    if matches!(
        plan,
        TokenPlan::Rdt { .. } | TokenPlan::RdtIfRestrictedReport { .. }
    ) {
        out.push_str(&format!(
            "rdt minted   POST {}{}{}\n",
            config.rdt_endpoint.as_str().trim_end_matches('/'),
            auth::rdt::RDT_PATH,
            if config.sandbox {
                " (production: the sandbox accepts only RDTs minted there)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!("upstream     {method} {upstream}\n"));
    Ok(out)
}

/// What happens when Amazon refuses the mint for lack of a role, for people.
fn refusal_text(on_refusal: OnRefusal, policy: RestrictedData) -> String {
    match on_refusal {
        OnRefusal::Fail if policy == RestrictedData::Always => {
            "502 rdt_refused with Amazon's reason (restricted_data = \"always\")".into()
        }
        OnRefusal::Fail => {
            "502 rdt_refused with Amazon's reason (this operation has no answer without an RDT)"
                .into()
        }
        OnRefusal::FallBack => format!(
            "the LWA token, answered without personal data, remembered for restricted_data_retry \
             (restricted_data = \"{}\"; x-spapi-proxy-pii: omitted)",
            policy.name()
        ),
        OnRefusal::NotPermitted => "403 pii_not_permitted with Amazon's reason".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml_str("", "test", &|_| None).unwrap()
    }

    #[test]
    fn explain_says_what_a_role_refusal_leads_to() {
        let cases = [
            (
                "",
                "/orders/v0/orders/1",
                "the LWA token, answered without personal data",
            ),
            (
                "restricted_data = \"always\"",
                "/orders/v0/orders/1",
                "502 rdt_refused",
            ),
            (
                "restricted_data = \"never\"",
                "/orders/v0/orders/1",
                "answered without personal data (restricted_data = \"never\"",
            ),
            (
                "restricted_data = \"never\"",
                "/orders/v0/orders/1/address",
                "this operation has no answer without an RDT",
            ),
        ];
        for (toml, path, want) in cases {
            let config = Config::from_toml_str(toml, "test", &|_| None).unwrap();
            let out = explain(&config, "GET", path).unwrap();
            assert!(out.contains(want), "{toml} {path}: {out}");
        }
    }

    #[test]
    fn explain_a_restricted_call() {
        let out = explain(
            &config(),
            "GET",
            "/orders/v0/orders/902-3159896-1390916/address",
        )
        .unwrap();
        assert!(out.contains("operation    getOrderAddress"), "{out}");
        assert!(out.contains("0.5 req/s, burst 30"), "{out}");
        assert!(
            out.contains("Restricted Data Token for GET /orders/v0/orders/{orderId}/address"),
            "{out}"
        );
        assert!(out.contains(
            "upstream     GET https://sellingpartnerapi-na.amazon.com/orders/v0/orders/902-3159896-1390916/address"
        ));
        assert!(out.contains(
            "rdt minted   POST https://sellingpartnerapi-na.amazon.com/tokens/2021-03-01/restrictedDataToken"
        ));
    }

    #[test]
    fn explain_an_unknown_path() {
        let out = explain(&config(), "get", "/nothing/here?x=1").unwrap();
        assert!(out.contains("unknown"), "{out}");
        assert!(
            out.contains("forwarded with the seller's LWA token"),
            "{out}"
        );
        assert!(out.contains("1 req/s, burst 5"), "{out}");
        let reject =
            Config::from_toml_str("unknown_operations = \"reject\"", "t", &|_| None).unwrap();
        let out = explain(&reject, "GET", "/nothing/here").unwrap();
        assert!(out.contains("rejected with 404"), "{out}");
    }

    #[test]
    fn explain_grantless_and_overrides() {
        let out = explain(&config(), "GET", "/notifications/v1/destinations").unwrap();
        assert!(
            out.contains("scope sellingpartnerapi::notifications"),
            "{out}"
        );
        let c = Config::from_toml_str(
            "[operations.getOrders]\nrate = 0.5\nburst = 30",
            "t",
            &|_| None,
        )
        .unwrap();
        let out = explain(&c, "GET", "/orders/v0/orders?MarketplaceIds=X").unwrap();
        assert!(
            out.contains("0.5 req/s, burst 30 (from [operations]"),
            "{out}"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(explain(&config(), "GE T", "/x").is_err());
        assert!(explain(&config(), "GET", "orders").is_err());
    }

    #[test]
    fn table_and_json_cover_the_catalog() {
        let cat = Catalog::builtin();
        assert_eq!(operations_table(cat).lines().count(), 371);
        let json = operations_json(cat);
        assert_eq!(json.as_array().unwrap().len(), 370);
        let dest = json
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["operationId"] == "getDestinations")
            .unwrap();
        assert_eq!(dest["scope"], "sellingpartnerapi::notifications");
    }
}
