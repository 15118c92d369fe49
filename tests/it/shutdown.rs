//! Graceful shutdown: in-flight requests finish, new connections are refused.

use std::time::Duration;

use crate::support::Harness;

#[tokio::test]
async fn in_flight_requests_finish_after_shutdown_starts() {
    let mut h = Harness::start().await;
    assert_eq!(h.get("/_proxy/health").await.status(), 200);
    h.sim.set_upstream_latency(Duration::from_millis(500));
    let client = crate::support::client();
    let url = h.url("/sellers/v1/marketplaceParticipations");
    let in_flight = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    while h.sim.lwa_calls() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.shutdown().await;
    let resp = in_flight.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        crate::support::client()
            .get(h.url("/_proxy/health"))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
}
