"""The README's Python `requests` recipe, run against a proxy at $SPAPI_PROXY_URL.

Plain HTTP to the proxy, no token and no signing: the proxy adds them. The answers are
Amazon's, untouched; the proxy's own refusals carry an `x-spapi-proxy-error` header.
It prints what it got as one JSON object, for the test to check.
"""

import json
import os

import requests

PROXY = os.environ.get("SPAPI_PROXY_URL", "http://127.0.0.1:8080")
session = requests.Session()


def call(path, **params):
    resp = session.get(PROXY + path, params=params, timeout=60)
    if resp.headers.get("x-spapi-proxy-error"):
        raise SystemExit(f"the proxy refused {path}: {resp.text}")
    resp.raise_for_status()
    return resp.json()["payload"]


participations = call("/sellers/v1/marketplaceParticipations")
orders = call("/orders/v0/orders", MarketplaceIds="ATVPDKIKX0DER", CreatedAfter="2026-11-01T00:00:00Z")
first = orders["Orders"][0]["AmazonOrderId"]
address = call(f"/orders/v0/orders/{first}/address")

print(
    json.dumps(
        {
            "marketplaces": [p["marketplace"]["id"] for p in participations],
            "orders": [o["AmazonOrderId"] for o in orders["Orders"]],
            "address": address["ShippingAddress"],
        }
    )
)
