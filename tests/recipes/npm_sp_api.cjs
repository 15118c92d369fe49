// The README's amazon-sp-api (npm) recipe, run against a proxy at $SPAPI_PROXY_URL.
//
// amazon-sp-api has no setting for the SP-API or LWA URL: it always builds
// https://sellingpartnerapi-REGION.amazon.com/... and keeps that name in Host. Its one
// seam is `options.https_proxy_agent`, the agent its https.request uses, so the recipe
//   - passes an agent whose connections go, in plain HTTP, to the proxy (the proxy accepts
//     SP-API's own host names in Host and forwards over HTTPS itself), and
//   - gives it a dummy access token with auto_request_tokens off, so it never calls LWA
//     (the proxy replaces whatever token a request carries with the seller's own).
// It prints what it got as one JSON object, for the test to check.
'use strict';
const https = require('https');
const net = require('net');
const SellingPartner = require('amazon-sp-api');

const proxy = new URL(process.env.SPAPI_PROXY_URL || 'http://127.0.0.1:8080');

class ToProxy extends https.Agent {
  createConnection(_options, callback) {
    const socket = net.connect({host: proxy.hostname, port: Number(proxy.port || 80)});
    socket.once('connect', () => callback(null, socket));
    socket.once('error', (e) => callback(e));
  }
}

const sp = new SellingPartner({
  region: 'na',
  refresh_token: 'via-spapi-proxy',
  access_token: 'via-spapi-proxy',
  credentials: {
    SELLING_PARTNER_APP_CLIENT_ID: 'via-spapi-proxy',
    SELLING_PARTNER_APP_CLIENT_SECRET: 'via-spapi-proxy'
  },
  options: {auto_request_tokens: false, https_proxy_agent: new ToProxy({keepAlive: true})}
});

(async () => {
  const participations = await sp.callAPI({operation: 'getMarketplaceParticipations', endpoint: 'sellers'});
  const orders = await sp.callAPI({
    operation: 'getOrders',
    endpoint: 'orders',
    query: {MarketplaceIds: ['ATVPDKIKX0DER'], CreatedAfter: '2026-11-01T00:00:00Z'}
  });
  const first = orders.Orders[0].AmazonOrderId;
  const address = await sp.callAPI({operation: 'getOrderAddress', endpoint: 'orders', path: {orderId: first}});
  console.log(
    JSON.stringify({
      marketplaces: participations.map((p) => p.marketplace.id),
      orders: orders.Orders.map((o) => o.AmazonOrderId),
      address: address.ShippingAddress
    })
  );
  process.exit(0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
