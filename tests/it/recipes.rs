//! The README's recipes for Python `requests`, python-amazon-sp-api (PyPI) and amazon-sp-api
//! (npm), run with the real libraries through the proxy against the simulator.
//! `tests/recipes/install.sh` (which `.ci/run` calls) installs them under `target/recipes/`;
//! where Python or Node or the libraries are absent, the tests say they were skipped.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use spapi_proxy::sim::SIM_REFRESH_TOKEN;

use crate::support::Harness;

/// The dummy credential every recipe hands its library: the proxy replaces it.
const DUMMY: &str = "via-spapi-proxy";

fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recipes")
}

/// Where `install.sh` put the libraries (`SPAPI_RECIPES_DIR` overrides).
fn installed() -> PathBuf {
    std::env::var_os("SPAPI_RECIPES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/recipes"))
}

fn works(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs one recipe script against a fresh proxy and checks both what the library got and what
/// reached the simulator.
async fn run_recipe(program: &Path, script: &str, env: &[(&str, &Path)]) {
    let h = Harness::limited("").await;
    let out = tokio::process::Command::new(program)
        .arg(recipes_dir().join(script))
        .envs(env.iter().copied())
        .env("SPAPI_PROXY_URL", h.url(""))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    let got: Value = serde_json::from_str(stdout.trim()).expect("the recipe prints JSON");
    // What the simulator answers (src/sim/spapi.rs), as each library hands it back.
    assert_eq!(got["marketplaces"], json!(["ATVPDKIKX0DER"]), "{got}");
    assert_eq!(
        got["orders"],
        json!([
            "902-3159896-1390916",
            "113-7645321-0042219",
            "701-2299001-8872305"
        ])
    );
    assert_eq!(
        got["address"]["Name"], "Sam Rivera",
        "the RDT path gave the address"
    );
    assert_eq!(got["address"]["PostalCode"], "98101");

    // Upstream: the seller's own tokens, never the library's dummy.
    let seen = h.sim.requests();
    let ops: Vec<&str> = seen.iter().filter_map(|r| r.operation.as_deref()).collect();
    for op in [
        "sellers.getMarketplaceParticipations",
        "ordersV0.getOrders",
        "tokens_2021-03-01.createRestrictedDataToken",
        "ordersV0.getOrderAddress",
    ] {
        assert!(ops.contains(&op), "{op} not in {ops:?}");
    }
    for r in &seen {
        assert_eq!(
            r.seller.as_deref(),
            Some(SIM_REFRESH_TOKEN),
            "{} carried the seller's token",
            r.path_and_query
        );
        assert!(
            r.headers.iter().all(|(_, v)| !v.contains(DUMMY)),
            "the dummy credential reached upstream: {:?}",
            r.headers
        );
        let host = r.header_values("host");
        assert_eq!(
            host,
            [h.sim.url().trim_start_matches("http://")],
            "{host:?}"
        );
    }
    // The address came with an RDT the proxy minted.
    let address = seen
        .iter()
        .find(|r| r.operation.as_deref() == Some("ordersV0.getOrderAddress"))
        .unwrap();
    let token = address.header_values("x-amz-access-token");
    assert!(
        token.len() == 1 && token[0].starts_with("Atz.sprdt|"),
        "{token:?}"
    );
}

#[tokio::test]
async fn python_amazon_sp_api_through_the_proxy() {
    let python = installed().join("venv/bin/python");
    if !works(&python, &["-c", "import sp_api"], &[]) {
        crate::support::skip(
            "the python-amazon-sp-api recipe",
            &format!(
                "no {} with sp_api (tests/recipes/install.sh installs it; it needs python3 \
                 with venv)",
                python.display()
            ),
        );
        return;
    }
    run_recipe(&python, "python_sp_api.py", &[]).await;
}

#[tokio::test]
async fn python_requests_through_the_proxy() {
    let python = installed().join("venv/bin/python");
    if !works(&python, &["-c", "import requests"], &[]) {
        crate::support::skip(
            "the Python requests recipe",
            &format!(
                "no {} with requests (tests/recipes/install.sh installs it; it needs python3 \
                 with venv)",
                python.display()
            ),
        );
        return;
    }
    run_recipe(&python, "python_requests.py", &[]).await;
}

#[tokio::test]
async fn amazon_sp_api_npm_through_the_proxy() {
    let modules = installed().join("npm/node_modules");
    let node = Path::new("node");
    let env = [("NODE_PATH", modules.as_path())];
    if !works(node, &["-e", "require('amazon-sp-api')"], &env) {
        crate::support::skip(
            "the amazon-sp-api (npm) recipe",
            &format!(
                "no node, or no amazon-sp-api in {} (tests/recipes/install.sh installs it; it \
                 needs node and npm)",
                modules.display()
            ),
        );
        return;
    }
    run_recipe(node, "npm_sp_api.cjs", &env).await;
}
