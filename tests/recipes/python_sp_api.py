"""The README's python-amazon-sp-api recipe, run against a proxy at $SPAPI_PROXY_URL.

python-amazon-sp-api has no setting for the SP-API or LWA URL, so the recipe
  - gives it a token client that hands out a dummy token instead of calling LWA
    (the proxy replaces whatever token a request carries with the seller's own), and
  - points the client's `endpoint` at the proxy after building it. The library sends
    `Host: endpoint[8:]` (it assumes `https://`), so with `http://127.0.0.1:8080` it sends
    `Host: 27.0.0.1:8080`: an IP literal, which the proxy accepts.
It prints what it got as one JSON object, for the test to check.
"""

import json
import os

from sp_api.api import OrdersV0, Sellers
from sp_api.auth import AccessTokenResponse
from sp_api.base import Marketplaces

PROXY = os.environ.get("SPAPI_PROXY_URL", "http://127.0.0.1:8080")

# Dummy credentials: the proxy holds the real ones.
CREDENTIALS = {"lwa_app_id": "via-spapi-proxy", "lwa_client_secret": "via-spapi-proxy"}


class ProxyToken:
    """Stands in for the library's LWA client: the proxy supplies the real token."""

    def __init__(self, **_):
        pass

    def get_auth(self):
        return AccessTokenResponse(access_token="via-spapi-proxy", expires_in=3600)

    def get_grantless_auth(self, scope=None):
        return self.get_auth()


def via_proxy(api, marketplace=Marketplaces.US):
    client = api(
        marketplace,
        refresh_token="via-spapi-proxy",
        credentials=CREDENTIALS,
        auth_token_client_class=ProxyToken,
    )
    client.endpoint = PROXY
    return client


participations = via_proxy(Sellers).get_marketplace_participation().payload
orders = via_proxy(OrdersV0).get_orders(CreatedAfter="2026-11-01T00:00:00Z").payload
first = orders["Orders"][0]["AmazonOrderId"]
address = via_proxy(OrdersV0).get_order_address(first).payload

print(
    json.dumps(
        {
            "marketplaces": [p["marketplace"]["id"] for p in participations],
            "orders": [o["AmazonOrderId"] for o in orders["Orders"]],
            "address": address["ShippingAddress"],
        }
    )
)
