#!/usr/bin/env bash
# Installs the client libraries the recipe tests run (tests/it/recipes.rs) under target/recipes/:
# python-amazon-sp-api and requests from PyPI in a throwaway virtualenv, amazon-sp-api from npm in a folder.
# Where Python or Node is missing it says so; the tests then skip, or, with
# SPAPI_TESTS_REQUIRE_ALL set (as .ci/run does), this script and those tests fail.
set -uo pipefail
cd "$(dirname "$0")/../.."
dir="${SPAPI_RECIPES_DIR:-target/recipes}"
mkdir -p "$dir"

# The versions the recipes were written against.
PY_PACKAGES=(python-amazon-sp-api==2.1.35 requests==2.34.2)
NPM_PACKAGE="amazon-sp-api@1.2.1"

if python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    if ! "$dir/venv/bin/python" -c "import sp_api, requests" 2>/dev/null; then
        rm -rf "$dir/venv"
        python3 -m venv "$dir/venv" && "$dir/venv/bin/pip" install -q "${PY_PACKAGES[@]}" \
            || echo "recipes: could not install ${PY_PACKAGES[*]}; their tests will be skipped" >&2
    fi
else
    echo "recipes: no python3 with venv; the python-amazon-sp-api test will be skipped" >&2
fi

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    if [ ! -d "$dir/npm/node_modules/amazon-sp-api" ]; then
        mkdir -p "$dir/npm"
        npm install --silent --no-audit --no-fund --prefix "$dir/npm" "$NPM_PACKAGE" >/dev/null \
            || echo "recipes: could not install $NPM_PACKAGE; its test will be skipped" >&2
    fi
else
    echo "recipes: no node and npm; the amazon-sp-api test will be skipped" >&2
fi
if [ -n "${SPAPI_TESTS_REQUIRE_ALL:-}" ] && [ "${SPAPI_TESTS_REQUIRE_ALL}" != 0 ]; then
    "$dir/venv/bin/python" -c "import sp_api, requests" && [ -d "$dir/npm/node_modules/amazon-sp-api" ] \
        || { echo "recipes: the client libraries are not installed, and SPAPI_TESTS_REQUIRE_ALL is set" >&2; exit 1; }
fi
exit 0
