//! What the README shows a new user is what the tests run: each recipe block is its file word for
//! word, and the `explain` sample is what the binary prints.

use std::path::Path;

use crate::cli::{command, scratch_dir};

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// The fenced block right after `marker` (the text between the opening fence and the closing one).
fn block_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let after = &text[start..];
    let open = after.find("```")?;
    let body_start = open + after[open..].find('\n')? + 1;
    let body_len = after[body_start..].find("\n```")? + 1;
    Some(&after[body_start..body_start + body_len])
}

#[test]
fn each_recipe_block_is_the_file_the_tests_run() {
    let readme = readme();
    let files = [
        "tests/recipes/python_requests.py",
        "tests/recipes/python_sp_api.py",
        "tests/recipes/npm_sp_api.cjs",
    ];
    for file in files {
        let marker = format!("<!-- {file}: this block is that file");
        let block = block_after(&readme, &marker)
            .unwrap_or_else(|| panic!("README has no block marked as {file}"));
        let on_disk =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        assert_eq!(
            block, on_disk,
            "README's block for {file} differs from the file"
        );
    }
}

#[test]
fn the_npm_recipe_is_commonjs_under_a_name_node_runs_as_commonjs() {
    // `require` in a file Node reads as an ES module fails: "require is not defined in ES module
    // scope". A `.cjs` file is CommonJS whatever the package around it says.
    let readme = readme();
    let block = block_after(&readme, "<!-- tests/recipes/npm_sp_api.cjs").unwrap();
    assert!(block.contains("require('amazon-sp-api')"));
    assert!(
        !block.lines().any(|l| l.starts_with("await ")),
        "no top-level await in CommonJS"
    );
    assert!(
        !readme.contains("npm_sp_api.js`"),
        "the README names the .cjs file"
    );
}

#[test]
fn the_explain_sample_is_what_explain_prints() {
    let readme = readme();
    let at = readme
        .find("$ spapi-proxy explain GET ")
        .expect("README has an explain sample");
    let rest = &readme[at..];
    let block = &rest[..rest.find("\n```").unwrap() + 1];
    let mut lines = block.lines();
    let args: Vec<&str> = lines
        .next()
        .unwrap()
        .trim_start_matches("$ spapi-proxy ")
        .split(' ')
        .collect();
    let want: String = lines.map(|l| format!("{l}\n")).collect();
    let out = command(&scratch_dir("readme-explain"))
        .args(&args)
        .env("SPAPI_CLIENT_ID", "amzn1.application-oa2-client.example")
        .env("SPAPI_CLIENT_SECRET", "x")
        .env("SPAPI_REFRESH_TOKEN", "Atzr|x")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}
