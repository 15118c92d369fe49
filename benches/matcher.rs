//! Matcher benchmark: ns per (method, path) -> operation over a realistic mix of paths.
//!
//! Run with `cargo bench --bench matcher`.

use std::hint::black_box;
use std::time::Instant;

use http::Method;
use spapi_proxy::operations::Catalog;

fn main() {
    let catalog = Catalog::builtin();
    // What a seller's tools call most: orders, items, catalog, reports, feeds, listings, plus misses.
    let mix: Vec<(Method, &str)> = vec![
        (Method::GET, "/orders/v0/orders"),
        (Method::GET, "/orders/v0/orders/902-3159896-1390916"),
        (
            Method::GET,
            "/orders/v0/orders/902-3159896-1390916/orderItems",
        ),
        (Method::GET, "/orders/v0/orders/902-3159896-1390916/address"),
        (Method::GET, "/catalog/2022-04-01/items/B0C1EXAMPL"),
        (Method::GET, "/reports/2021-06-30/reports/50001"),
        (
            Method::GET,
            "/reports/2021-06-30/documents/amzn1.spdoc.1.4.na.abc",
        ),
        (Method::POST, "/feeds/2021-06-30/feeds"),
        (
            Method::PUT,
            "/listings/2021-08-01/items/A1SELLER/MUG-BLUE%2F12OZ",
        ),
        (Method::GET, "/fba/inventory/v1/summaries"),
        (Method::GET, "/products/pricing/v0/price"),
        (Method::POST, "/tokens/2021-03-01/restrictedDataToken"),
        (Method::GET, "/sellers/v1/marketplaceParticipations"),
        (
            Method::GET,
            "/fba/outbound/2020-07-01/fulfillmentOrders/preview",
        ),
        (Method::GET, "/no/such/path"),
        (Method::DELETE, "/orders/v0/orders"),
    ];
    for (m, p) in &mix {
        let _ = catalog.find(m, p);
    }
    let rounds = 200_000;
    let started = Instant::now();
    let mut hits = 0usize;
    for _ in 0..rounds {
        for (m, p) in &mix {
            if black_box(catalog.find(black_box(m), black_box(p))).is_some() {
                hits += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let matches = rounds * mix.len();
    println!(
        "matcher: {matches} matches in {elapsed:?}: {:.1} ns per match ({} of {} paths in the mix match)",
        elapsed.as_nanos() as f64 / matches as f64,
        hits / rounds,
        mix.len()
    );
}
