//! What the `operations`, `explain` and `check` commands print: the catalog, the proxy's
//! decisions and the effective config, for people.

use http::Method;
use serde_json::{json, Value};

use crate::auth::{self, OnRefusal, TokenPlan};
use crate::config::{seller_names, Config, QuotaSource, Region, RestrictedData, UnknownOperations};
use crate::limiter::Settings;
use crate::operations::{AuthKind, Catalog};
use crate::region;

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

/// What the proxy would do with `METHOD target` under `config`, for `seller` (or the
/// default), one fact per line.
pub fn explain(
    config: &Config,
    method: &str,
    target: &str,
    seller: Option<&str>,
) -> Result<String, String> {
    let method: Method = method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    if !target.starts_with('/') {
        return Err(format!("`{target}` must be a path starting with /"));
    }
    let path = target.split('?').next().unwrap_or(target);
    let op = Catalog::builtin().find(&method, path);
    let chosen = match seller {
        Some(name) => Some(config.seller(name).ok_or_else(|| {
            format!(
                "no seller is called `{name}`; the configured sellers are: {}",
                seller_names(&config.sellers)
            )
        })?),
        None => config
            .default_seller
            .as_deref()
            .and_then(|n| config.seller(n)),
    };
    let query = target.split_once('?').map(|(_, q)| q);
    let from_query = region::from_query(query).map_err(|e| e.to_string())?;
    let (region, why) = match (from_query, chosen) {
        (Some(r), _) => (r, "from the marketplaces in the query"),
        (None, Some(s)) => (s.region, "the seller's region"),
        (None, None) => (config.region, "the configured region"),
    };
    let upstream = format!(
        "{}{target}",
        config.endpoint(region).as_str().trim_end_matches('/')
    );
    let mut out = format!("request      {method} {target}\n");
    out.push_str(&match chosen {
        Some(s) => format!(
            "seller       {}{}\n",
            s.name,
            if config.default_seller.as_deref() == Some(s.name.as_str()) {
                " (the default)"
            } else {
                ""
            }
        ),
        None => format!(
            "seller       none named and no default (configured: {}); name one with \
             x-spapi-seller or /_seller/NAME/\n",
            seller_names(&config.sellers)
        ),
    });
    out.push_str(&format!("region       {} ({why})\n", region.name()));
    out.push_str(&format!(
        "endpoint     {}\n",
        config.endpoint(region).as_str().trim_end_matches('/')
    ));
    let (quota, source) = Settings::from_config(config).quota(op);
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
            config.rdt_endpoint(region).as_str().trim_end_matches('/'),
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

/// The effective settings, one per line, with every secret masked (for `spapi-proxy check`).
pub fn describe(config: &Config) -> String {
    let c = config;
    let t = &c.timeouts;
    let regions: String = Region::ALL
        .iter()
        .map(|&r| {
            format!(
                "endpoint {}          {} (rdt {})\n",
                r.name(),
                c.endpoint(r).as_str().trim_end_matches('/'),
                c.rdt_endpoint(r).as_str().trim_end_matches('/'),
            )
        })
        .collect();
    let sellers: String = if c.sellers.is_empty() {
        "sellers             none: only grantless operations can be served\n".into()
    } else {
        c.sellers
            .iter()
            .map(|s| {
                format!(
                    "seller              {}: region {}, endpoint {}, refresh_token ***{}{}\n",
                    s.name,
                    s.region.name(),
                    c.endpoint(s.region).as_str().trim_end_matches('/'),
                    s.selling_partner_id
                        .as_deref()
                        .map_or_else(String::new, |id| format!(", selling_partner_id {id}")),
                    if c.default_seller.as_deref() == Some(s.name.as_str()) {
                        " (default)"
                    } else {
                        ""
                    },
                )
            })
            .collect()
    };
    let limited = c
        .inbound_keys
        .iter()
        .filter(|k| k.sellers.is_some())
        .count();
    format!(
        "listen              {}\n\
         region              {}{}\n\
         {regions}\
         target_application  {}\n\
         token_url           {}\n\
         client_id           {}\n\
         client_secret       {}\n\
         next_client_secret  {}\n\
         {sellers}\
         timeouts            connect {:?}, response {:?}, idle {:?}, token {:?}, shutdown_grace {:?}\n\
         token_retries       {}\n\
         replay_buffer_bytes {}\n\
         unknown_operations  {}\n\
         restricted_data     {} (retry refused dataElements after {:?})\n\
         default limit       {} req/s, burst {}\n\
         rate_limit          {} (max_wait {:?}, max_queue {}, throttle_retries {}, retry_put_patch {})\n\
         inbound_keys        {}\n\
         allowed_hosts       {}\n\
         allowed_origins     {}\n\
         connections         max {}, header_read {:?}, client_idle {:?}, {}\n",
        c.listen,
        c.region.name(),
        if c.sandbox { " (sandbox)" } else { "" },
        c.target_application.as_deref().unwrap_or("(none)"),
        c.token_url,
        c.credentials.client_id.as_deref().unwrap_or("(not set)"),
        if c.credentials.client_secret.is_some() { "***" } else { "(not set)" },
        if c.credentials.next_client_secret.is_some() { "***" } else { "(not set)" },
        t.connect,
        t.response,
        t.idle,
        t.token,
        t.shutdown_grace,
        c.token_retries,
        c.replay_buffer_bytes,
        match c.unknown_operations {
            UnknownOperations::Forward => "forward",
            UnknownOperations::Reject => "reject",
        },
        c.restricted_data.name(),
        c.restricted_data_retry,
        c.default_quota.rate,
        c.default_quota.burst,
        if c.rate_limit { "on" } else { "off" },
        c.max_wait,
        c.max_queue,
        c.throttle_retries,
        c.retry_put_patch,
        match (c.inbound_keys.len(), limited) {
            (0, _) => "none (loopback only)".to_string(),
            (n, 0) => format!("{n} key(s), ***"),
            (n, l) => format!("{n} key(s), {l} limited to sellers, ***"),
        },
        list_or_none(&c.allowed_hosts),
        list_or_none(&c.allowed_origins),
        c.max_connections
            .map_or_else(|| "from the file-descriptor limit".to_string(), |n| n.to_string()),
        t.header_read,
        t.client_idle,
        if c.h2c { "HTTP/1.1 and h2c" } else { "HTTP/1.1 only" },
    ) + &describe_operations(c)
}

fn describe_operations(config: &Config) -> String {
    let catalog = Catalog::builtin();
    let settings = Settings::from_config(config);
    let mut lines: Vec<String> = config
        .operations
        .keys()
        .map(|&i| {
            let op = &catalog.operations()[i];
            let (q, _) = settings.quota(Some(op));
            format!(
                "operation           {}: {} req/s, burst {}\n",
                op.qualified(),
                q.rate,
                q.burst
            )
        })
        .collect();
    lines.sort();
    lines.concat()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

/// `spapi-proxy status`: what `/_proxy/status` says, as tables for a terminal.
pub fn status_tables(status: &Value) -> String {
    use crate::status_page::{bucket_seller, text, throttled};
    let token = |t: &Value| match (t["age_secs"].as_u64(), t["refresh_in_secs"].as_u64()) {
        (Some(a), Some(r)) => format!("age {a}s, refresh in {r}s"),
        _ => "none cached".into(),
    };
    let mut out = format!(
        "spapi-proxy {}: rate limiting {}, client secret in use: {}\n\n",
        text(&status["version"]),
        if status["rate_limit"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        },
        text(&status["client_secret"])
    );
    out.push_str(&format!(
        "{:<20} {:<6} {:<10} {}\n",
        "SELLER", "REGION", "STATE", "ACCESS TOKEN"
    ));
    for (name, s) in status["sellers"].as_object().into_iter().flatten() {
        let regions = s["regions"].as_object().filter(|r| !r.is_empty());
        match regions {
            None => out.push_str(&format!(
                "{:<20} {:<6} {:<10} {}\n",
                name,
                text(&s["region"]),
                "unused",
                "none cached"
            )),
            Some(r) => {
                for (region, r) in r {
                    let state = if r["healthy"] == Value::Bool(false) {
                        "UNHEALTHY"
                    } else {
                        "healthy"
                    };
                    out.push_str(&format!(
                        "{:<20} {:<6} {:<10} {}\n",
                        name,
                        region,
                        state,
                        token(&r["token"])
                    ));
                }
            }
        }
    }
    out.push_str(&format!(
        "\n{:<20} {:<6} {:<48} {:>12} {:>9} {:<9} {:>7} {:>20} {:>20}\n",
        "SELLER",
        "REGION",
        "OPERATION",
        "TOKENS",
        "RATE",
        "SOURCE",
        "WAITING",
        "LOCAL 429",
        "AMAZON 429"
    ));
    for b in status["buckets"].as_array().into_iter().flatten() {
        let seller = bucket_seller(b);
        out.push_str(&format!(
            "{:<20} {:<6} {:<48} {:>12} {:>9} {:<9} {:>7} {:>20} {:>20}\n",
            seller,
            text(&b["region"]),
            text(&b["operation"]),
            format!("{}/{}", text(&b["tokens_available"]), text(&b["burst"])),
            text(&b["rate"]),
            text(&b["rate_source"]),
            text(&b["waiting"]),
            throttled(&b["local_429"], &b["local_429_last_secs_ago"]),
            throttled(&b["amazon_429"], &b["amazon_429_last_secs_ago"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_masks_secrets() {
        let text = "[credentials]\nclient_id = \"amzn1.application-oa2-client.test\"\n\
                    client_secret = \"file-secret\"\nnext_client_secret = \"next-secret\"\n\
                    refresh_token = \"Atzr|file-refresh\"\n\
                    [sellers.eu-shop]\nrefresh_token = \"Atzr|eu-refresh\"\nregion = \"eu\"\n";
        let c = Config::from_toml_str(text, "t", &|_| None).unwrap();
        let out = format!("{} {:?}", describe(&c), c);
        for secret in ["file-secret", "next-secret", "file-refresh", "eu-refresh"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("client_secret       ***"), "{out}");
        assert!(
            out.contains("seller              eu-shop: region eu, endpoint https://sellingpartnerapi-eu.amazon.com, refresh_token ***"),
            "{out}"
        );
        assert!(
            out.contains("seller              default: region na"),
            "{out}"
        );
        assert!(out.contains("(default)"), "{out}");
    }

    #[test]
    fn describe_without_sellers_says_grantless_only() {
        let c = Config::from_toml_str(
            "[credentials]\nclient_id = \"a\"\nclient_secret = \"b\"",
            "t",
            &|_| None,
        )
        .unwrap();
        assert!(describe(&c).contains("only grantless"));
    }

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
            let out = explain(&config, "GET", path, None).unwrap();
            assert!(out.contains(want), "{toml} {path}: {out}");
        }
    }

    #[test]
    fn explain_a_restricted_call() {
        let out = explain(
            &config(),
            "GET",
            "/orders/v0/orders/902-3159896-1390916/address",
            None,
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
        let out = explain(&config(), "get", "/nothing/here?x=1", None).unwrap();
        assert!(out.contains("unknown"), "{out}");
        assert!(
            out.contains("forwarded with the seller's LWA token"),
            "{out}"
        );
        assert!(out.contains("1 req/s, burst 5"), "{out}");
        let reject =
            Config::from_toml_str("unknown_operations = \"reject\"", "t", &|_| None).unwrap();
        let out = explain(&reject, "GET", "/nothing/here", None).unwrap();
        assert!(out.contains("rejected with 404"), "{out}");
    }

    #[test]
    fn explain_grantless_and_overrides() {
        let out = explain(&config(), "GET", "/notifications/v1/destinations", None).unwrap();
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
        let out = explain(&c, "GET", "/orders/v0/orders?MarketplaceIds=X", None).unwrap();
        assert!(
            out.contains("0.5 req/s, burst 30 (from [operations]"),
            "{out}"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(explain(&config(), "GE T", "/x", None).is_err());
        assert!(explain(&config(), "GET", "orders", None).is_err());
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
