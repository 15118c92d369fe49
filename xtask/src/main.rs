//! Project tasks; `catalog` generates `src/catalog/operations.tsv` from Amazon's SP-API models.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

const USAGE: &str = "usage: cargo run -p xtask -- catalog [--models DIR] [--check]

  --models DIR  the folder of SP-API model JSON files (default: ../shared/spapi-models)
  --check       do not write; fail if src/catalog/operations.tsv differs from what the models give";

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut models = root.join("../shared/spapi-models");
    let mut check = false;
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("catalog") => {}
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--check" => check = true,
            "--models" => match it.next() {
                Some(d) => models = PathBuf::from(d),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let overlay_path = root.join("src/catalog/overlay.tsv");
    let out_path = root.join("src/catalog/operations.tsv");
    match generate(&models, &overlay_path) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Ok(text) if check => {
            let current = std::fs::read_to_string(&out_path).unwrap_or_default();
            if current == text {
                println!(
                    "catalog is up to date ({} operations)",
                    text.lines().count() - 1
                );
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: src/catalog/operations.tsv is stale; run `cargo run -p xtask -- catalog`"
                );
                ExitCode::FAILURE
            }
        }
        Ok(text) => match std::fs::write(&out_path, &text) {
            Ok(()) => {
                println!(
                    "wrote {} operations to src/catalog/operations.tsv",
                    text.lines().count() - 1
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", out_path.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// One operation as the models describe it.
struct Op {
    api: String,
    version: String,
    id: String,
    method: String,
    path: String,
    rate: Option<String>,
    burst: Option<String>,
    notes: Vec<String>,
}

fn generate(models: &Path, overlay_path: &Path) -> Result<String, String> {
    let mut files = Vec::new();
    collect_json(models, &mut files)
        .map_err(|e| format!("cannot read models folder {}: {e}", models.display()))?;
    files.sort();
    if files.is_empty() {
        return Err(format!("no model files under {}", models.display()));
    }
    let mut ops = Vec::new();
    for file in &files {
        read_model(file, &mut ops)?;
    }
    let overlay = read_overlay(overlay_path)?;
    let mut used = BTreeSet::new();
    let mut out = String::from(
        "api\tversion\toperationId\tmethod\tpath\trate\tburst\tauth\tauth_detail\tnotes\n",
    );
    ops.sort_by(|a, b| (&a.api, &a.path, &a.method).cmp(&(&b.api, &b.path, &b.method)));
    for op in &ops {
        let key = (op.api.clone(), op.id.clone());
        let (auth, detail) = match overlay.get(&key) {
            Some(v) => {
                used.insert(key);
                v.clone()
            }
            None => ("lwa".to_string(), String::new()),
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            op.api,
            op.version,
            op.id,
            op.method,
            op.path,
            op.rate.as_deref().unwrap_or(""),
            op.burst.as_deref().unwrap_or(""),
            auth,
            detail,
            op.notes.join("; ")
        );
    }
    let missing: Vec<String> = overlay
        .keys()
        .filter(|k| !used.contains(*k))
        .map(|(api, id)| format!("{api} {id}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the overlay names operations the models do not have: {}",
            missing.join(", ")
        ));
    }
    Ok(out)
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

fn read_model(file: &Path, ops: &mut Vec<Op>) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let model: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let api = file
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: odd file name", file.display()))?
        .to_string();
    let version = model["info"]["version"].as_str().unwrap_or("").to_string();
    let paths = model["paths"]
        .as_object()
        .ok_or_else(|| format!("{}: no paths", file.display()))?;
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let id = op["operationId"]
                .as_str()
                .ok_or_else(|| format!("{}: {method} {path} has no operationId", file.display()))?;
            let description = op["description"].as_str().unwrap_or("");
            let mut notes = Vec::new();
            let (rate, burst) = match usage_plan(description) {
                Plan::Published { rate, burst } => (Some(rate), Some(burst)),
                Plan::TypeTable { rate, burst } => {
                    notes.push(format!(
                        "plan-type table: default {rate}/{burst}, selling-partner specific plans vary"
                    ));
                    (Some(rate), Some(burst))
                }
                Plan::Placeholder => {
                    notes.push("usage plan is a placeholder (n/n) in the model".into());
                    (None, None)
                }
                Plan::Missing => {
                    notes.push("no usage plan in the model".into());
                    (None, None)
                }
            };
            if op["deprecated"].as_bool() == Some(true) {
                notes.push("deprecated".into());
            }
            ops.push(Op {
                api: api.clone(),
                version: version.clone(),
                id: id.to_string(),
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                rate,
                burst,
                notes,
            });
        }
    }
    Ok(())
}

enum Plan {
    Published { rate: String, burst: String },
    TypeTable { rate: String, burst: String },
    Placeholder,
    Missing,
}

/// Reads the usage-plan table in an operation's description. Some descriptions carry literal
/// `\n` sequences instead of newlines; rates may be written `.5` or `2.0`.
fn usage_plan(description: &str) -> Plan {
    let text = description.replace("\\n", "\n");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let Some(header_at) = lines
        .iter()
        .position(|l| l.starts_with('|') && l.contains("Rate") && l.contains("Burst"))
    else {
        return Plan::Missing;
    };
    let cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let header = cells(lines[header_at]);
    let rate_col = header.iter().position(|c| c.starts_with("Rate"));
    let burst_col = header.iter().position(|c| c.starts_with("Burst"));
    let (Some(rate_col), Some(burst_col)) = (rate_col, burst_col) else {
        return Plan::Missing;
    };
    let plan_type = header.first().is_some_and(|c| c.starts_with("Plan type"));
    for line in lines[header_at + 1..]
        .iter()
        .take_while(|l| l.starts_with('|'))
    {
        let row = cells(line);
        if row
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        let (Some(r), Some(b)) = (row.get(rate_col), row.get(burst_col)) else {
            continue;
        };
        match (r.parse::<f64>(), b.parse::<f64>()) {
            (Ok(rate), Ok(burst)) if rate > 0.0 && burst >= 1.0 => {
                let (rate, burst) = (format!("{rate}"), format!("{}", burst.round() as u64));
                return if plan_type {
                    Plan::TypeTable { rate, burst }
                } else {
                    Plan::Published { rate, burst }
                };
            }
            _ if r == "n" && b == "n" => return Plan::Placeholder,
            _ => {}
        }
    }
    Plan::Missing
}

/// (api, operationId) -> (auth, detail).
type Overlay = BTreeMap<(String, String), (String, String)>;

/// Reads the hand-maintained overlay.
fn read_overlay(path: &Path) -> Result<Overlay, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (fields, source) = line.split_once("\t#").ok_or_else(|| {
            format!("overlay line {line_no}: every row must cite its source after `\t#`")
        })?;
        if source.trim().is_empty() {
            return Err(format!(
                "overlay line {line_no}: the source comment is empty"
            ));
        }
        let cols: Vec<&str> = fields.split('\t').collect();
        let [api, id, auth, detail] = cols.as_slice() else {
            return Err(format!(
                "overlay line {line_no}: expected 4 columns, found {}",
                cols.len()
            ));
        };
        let valid = match *auth {
            "rdt" => detail.starts_with("elements=") && detail.contains(";path="),
            "rdt-conditional" => *detail == "path=specific",
            "grantless" => detail.starts_with("scope=sellingpartnerapi::"),
            _ => false,
        };
        if !valid {
            return Err(format!(
                "overlay line {line_no}: bad auth `{auth}` or detail `{detail}`"
            ));
        }
        let key = (api.to_string(), id.to_string());
        if out
            .insert(key, (auth.to_string(), detail.to_string()))
            .is_some()
        {
            return Err(format!(
                "overlay line {line_no}: {api} {id} is listed twice"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(d: &str) -> String {
        match usage_plan(d) {
            Plan::Published { rate, burst } => format!("{rate}/{burst}"),
            Plan::TypeTable { rate, burst } => format!("type {rate}/{burst}"),
            Plan::Placeholder => "placeholder".into(),
            Plan::Missing => "missing".into(),
        }
    }

    #[test]
    fn usage_plan_table() {
        let cases = [
            ("plain", "x\n\n**Usage Plan:**\n\n| Rate (requests per second) | Burst |\n| ---- | ---- |\n| 0.0167 | 20 |\n\nmore", "0.0167/20"),
            ("escaped newlines", "**Usage Plan:**\\n\\n| Rate (requests per second) | Burst |\\n| ---- | ---- |\\n| 2 | 30 |", "2/30"),
            ("leading dot", "| Rate (requests per second) | Burst |\n| ---- | ---- |\n| .5 | 30 |", "0.5/30"),
            ("trailing zero", "| Rate (requests per second) | Burst |\n| ---- | ---- |\n| 2.0 | 2 |", "2/2"),
            ("placeholder", "| Rate (requests per second) | Burst |\n| ---- | ---- |\n| n | n |", "placeholder"),
            ("plan type", "| Plan type | Rate (requests per second) | Burst |\n| ---- | ---- | ---- |\n|Default| 5 | 10 |\n|Selling partner specific| Variable | Variable |", "type 5/10"),
            ("none", "Returns things.", "missing"),
        ];
        for (name, d, want) in cases {
            assert_eq!(plan(d), want, "{name}");
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(dir.join("models/x")).unwrap();
        std::fs::write(
            dir.join("models/x/sellers.json"),
            r#"{"info":{"version":"v1"},"paths":{"/sellers/v1/marketplaceParticipations":{"get":{"operationId":"getMarketplaceParticipations","description":"| Rate (requests per second) | Burst |\n| ---- | ---- |\n| 0.016 | 15 |"}}}}"#,
        )
        .unwrap();
        dir
    }

    #[test]
    fn generates_rows_and_applies_the_overlay() {
        let dir = scratch("ok");
        let overlay = dir.join("overlay.tsv");
        std::fs::write(
            &overlay,
            "sellers\tgetMarketplaceParticipations\tgrantless\tscope=sellingpartnerapi::x\t# test\n",
        )
        .unwrap();
        let out = generate(&dir.join("models"), &overlay).unwrap();
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "sellers\tv1\tgetMarketplaceParticipations\tGET\t/sellers/v1/marketplaceParticipations\t0.016\t15\tgrantless\tscope=sellingpartnerapi::x\t"
        );
    }

    #[test]
    fn overlay_naming_a_missing_operation_fails() {
        let dir = scratch("missing");
        let overlay = dir.join("overlay.tsv");
        std::fs::write(
            &overlay,
            "sellers\tgetNothing\trdt-conditional\tpath=specific\t# test\n",
        )
        .unwrap();
        let err = generate(&dir.join("models"), &overlay).unwrap_err();
        assert!(err.contains("sellers getNothing"), "{err}");
    }

    #[test]
    fn overlay_rows_must_cite_a_source() {
        let dir = scratch("nosource");
        let overlay = dir.join("overlay.tsv");
        std::fs::write(
            &overlay,
            "sellers\tgetMarketplaceParticipations\trdt-conditional\tpath=specific\n",
        )
        .unwrap();
        let err = generate(&dir.join("models"), &overlay).unwrap_err();
        assert!(err.contains("cite its source"), "{err}");
    }
}
