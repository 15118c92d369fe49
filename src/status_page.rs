//! `GET /_proxy/`: the live status page. One self-contained HTML document rendered on the
//! server from the same data as `/_proxy/status`: no script, no external asset (it works
//! offline and under a `default-src 'none'` policy), and it reloads itself every few seconds.

use std::fmt::Write as _;

use serde_json::Value;

/// Seconds between reloads.
pub const REFRESH_SECS: u32 = 3;

/// Text made safe for HTML.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A status value as text: strings bare, `null` as `-`. Shared with `spapi-proxy status`.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A bucket's seller; grantless buckets belong to the application.
pub fn bucket_seller(b: &Value) -> String {
    match &b["seller"] {
        Value::Null => "(application)".to_string(),
        v => text(v),
    }
}

/// `1h 02m`, `3m 20s`, `12s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// A cached token's age and next refresh, never the token.
fn token_cell(token: &Value) -> String {
    match (
        token["age_secs"].as_u64(),
        token["refresh_in_secs"].as_u64(),
    ) {
        (Some(age), Some(next)) => {
            format!("age {}, refresh in {}", duration(age), duration(next))
        }
        _ => "none cached".into(),
    }
}

/// A 429 count and, if there were any, how long ago the last one was: `3, last 12s ago`.
pub fn throttled(count: &Value, last: &Value) -> String {
    match last.as_u64() {
        Some(ago) => format!("{}, last {} ago", esc(&text(count)), duration(ago)),
        None => esc(&text(count)),
    }
}

/// A line on the shared state, if there is one: which Redis, and whether limits are shared or
/// this replica's local share.
fn shared_state(shared: &Value) -> String {
    if shared.is_null() {
        return String::new();
    }
    let up = shared["up"] == Value::Bool(true);
    format!(
        "<p id=\"shared\">Shared state {}: <span class=\"{}\">{}</span>, {} replicas.</p>",
        esc(&text(&shared["url"])),
        if up { "ok" } else { "bad" },
        if up {
            "up, buckets and tokens shared".to_string()
        } else {
            format!(
                "unreachable, each bucket limited to 1/{} locally",
                esc(&text(&shared["replicas"]))
            )
        },
        esc(&text(&shared["replicas"])),
    )
}

/// The page for `status` (what `/_proxy/status` answers).
pub fn render(status: &Value) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>spapi-proxy status</title><style>\
         body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\
         th{{background:#f3f3f3}}.bad{{color:#b00;font-weight:600}}.ok{{color:#070}}\
         .bar{{display:inline-block;width:8em;height:.7em;background:#eee;vertical-align:middle}}\
         .fill{{display:block;height:100%;background:#4a8}}</style></head><body>\
         <h1>spapi-proxy {}</h1>\
         <p id=\"summary\">Rate limiting {}; client secret in use: <b>{}</b>. This page reloads \
         every {REFRESH_SECS} s.</p>{}",
        esc(&text(&status["version"])),
        if status["rate_limit"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        },
        esc(&text(&status["client_secret"])),
        shared_state(&status["shared_state"]),
    );

    h.push_str("<h2>Sellers</h2><table id=\"sellers\"><tr><th>seller</th><th>region</th><th>state</th><th>access token</th><th>dataElements refused</th><th>merchant id</th><th>authorized</th><th></th></tr>");
    if let Some(sellers) = status["sellers"].as_object() {
        for (name, s) in sellers {
            let regions = s["regions"].as_object();
            let rows: Vec<(String, &Value)> = match regions {
                Some(r) if !r.is_empty() => r.iter().map(|(k, v)| (k.clone(), v)).collect(),
                _ => vec![(text(&s["region"]), &Value::Null)],
            };
            for (region, r) in rows {
                let state = match r["healthy"].as_bool() {
                    Some(false) => {
                        "<span class=\"bad\">unhealthy: LWA refused the refresh token</span>"
                            .to_string()
                    }
                    Some(true) => "<span class=\"ok\">healthy</span>".to_string(),
                    None => "not used yet".to_string(),
                };
                let refused = match r["refused_data_elements"].as_object() {
                    Some(o) if !o.is_empty() => esc(&Value::Object(o.clone()).to_string()),
                    _ => "none".into(),
                };
                // A seller onboarding stored can be revoked from here (a plain form: no script).
                let revoke = if s["stored"] == Value::Bool(true) {
                    let q: String = form_urlencoded::Serializer::new(String::new())
                        .append_pair("seller", name)
                        .finish();
                    format!(
                        "<form method=\"post\" action=\"/_proxy/sellers/revoke?{}\">\
                         <button type=\"submit\">revoke</button></form>",
                        esc(&q)
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    h,
                    "<tr class=\"seller\"><td>{}{}</td><td>{}</td><td>{state}</td><td>{}</td><td>{refused}</td><td>{}</td><td>{}</td><td>{revoke}</td></tr>",
                    esc(name),
                    if s["default"] == Value::Bool(true) { " (default)" } else { "" },
                    esc(&region),
                    token_cell(&r["token"]),
                    esc(&text(&s["selling_partner_id"])),
                    esc(&text(&s["authorized_at"])),
                );
            }
        }
    }
    h.push_str("</table>");

    h.push_str(
        "<h2>Grantless tokens</h2><table id=\"grantless\"><tr><th>scope</th><th>token</th></tr>",
    );
    for g in status["grantless"].as_array().into_iter().flatten() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&text(&g["scope"])),
            token_cell(&g["token"])
        );
    }
    h.push_str("</table>");

    h.push_str("<h2>Rate-limit buckets</h2><table id=\"buckets\"><tr><th>seller</th><th>region</th><th>operation</th><th>tokens / burst</th><th>rate (req/s)</th><th>source</th><th>waiting</th><th>local 429s</th><th>Amazon 429s</th></tr>");
    for b in status["buckets"].as_array().into_iter().flatten() {
        let tokens = b["tokens_available"].as_f64().unwrap_or(0.0);
        let burst = b["burst"].as_f64().unwrap_or(1.0).max(1.0);
        let pct = (tokens / burst * 100.0).clamp(0.0, 100.0);
        let seller = bucket_seller(b);
        let _ = write!(
            h,
            "<tr class=\"bucket\"><td>{}</td><td>{}</td><td>{}</td>\
             <td><span class=\"bar\"><span class=\"fill\" style=\"width:{pct:.0}%\"></span></span> \
             {tokens:.1} / {burst}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&seller),
            esc(&text(&b["region"])),
            esc(&text(&b["operation"])),
            esc(&text(&b["rate"])),
            esc(&text(&b["rate_source"])),
            esc(&text(&b["waiting"])),
            throttled(&b["local_429"], &b["local_429_last_secs_ago"]),
            throttled(&b["amazon_429"], &b["amazon_429_last_secs_ago"]),
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn throttle_cells() {
        for (count, last, want) in [
            (json!(0), Value::Null, "0"),
            (json!(3), json!(12), "3, last 12s ago"),
            (json!(1), json!(3720), "1, last 1h 02m ago"),
        ] {
            assert_eq!(throttled(&count, &last), want);
        }
    }

    #[test]
    fn durations() {
        for (secs, want) in [(5, "5s"), (200, "3m 20s"), (3720, "1h 02m")] {
            assert_eq!(duration(secs), want);
        }
    }
}
