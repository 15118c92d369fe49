//! Test fixtures: the simulator and a real proxy in front of it, both on 127.0.0.1:0.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spapi_proxy::config::Config;
use spapi_proxy::proxy::Proxy;
use spapi_proxy::server;
use spapi_proxy::sim::{self, Simulator};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A simulator, a proxy pointed at it, and a client for the proxy.
pub struct Harness {
    pub sim: Simulator,
    pub url: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A second (third, ...) proxy in front of a harness's simulator.
pub struct Replica {
    pub url: String,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
}

/// The environment that points a config at `sim` with the simulator's credentials.
pub fn sim_env(sim: &Simulator) -> HashMap<String, String> {
    [
        ("SPAPI_ENDPOINT", sim.url()),
        ("SPAPI_TOKEN_URL", sim.token_url()),
        ("SPAPI_CLIENT_ID", sim::SIM_CLIENT_ID.to_string()),
        ("SPAPI_CLIENT_SECRET", sim::SIM_CLIENT_SECRET.to_string()),
        ("SPAPI_REFRESH_TOKEN", sim::SIM_REFRESH_TOKEN.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn config_for(sim: &Simulator, toml: &str) -> Config {
    let env = sim_env(sim);
    Config::from_toml_str(toml, "test.toml", &|k| env.get(k).cloned()).expect("valid test config")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Harness {
    /// Simulator plus proxy with default settings, except that local rate limiting is off:
    /// these tests are about tokens and forwarding, and send far more than the usage plans allow.
    pub async fn start() -> Harness {
        Harness::with_config("").await
    }

    /// Simulator plus proxy configured by `toml` (endpoints and credentials come from the env);
    /// local rate limiting is off unless `toml` sets `rate_limit`.
    pub async fn with_config(toml: &str) -> Harness {
        if toml.contains("rate_limit") {
            Harness::limited(toml).await
        } else {
            Harness::limited(&format!("rate_limit = false\n{toml}")).await
        }
    }

    /// Simulator plus proxy configured by `toml`, rate limiting on by default.
    pub async fn limited(toml: &str) -> Harness {
        let sim = Simulator::start().await.unwrap();
        let config = config_for(&sim, toml);
        Harness::with(sim, config).await
    }

    /// A proxy with this exact config in front of `sim`.
    pub async fn with(sim: Simulator, config: Config) -> Harness {
        let proxy = Proxy::new(&config).unwrap();
        Harness::with_proxy(sim, proxy, &config).await
    }

    /// `proxy` (built from `config`) in front of `sim`.
    pub async fn with_proxy(sim: Simulator, proxy: Proxy, config: &Config) -> Harness {
        Harness::with_proxy_on(sim, proxy, config, "127.0.0.1:0").await
    }

    /// `proxy` (built from `config`) in front of `sim`, listening on `addr`.
    pub async fn with_proxy_on(
        sim: Simulator,
        proxy: Proxy,
        config: &Config,
        addr: &str,
    ) -> Harness {
        let proxy = Arc::new(proxy);
        let listener = TcpListener::bind(addr).await.unwrap();
        let bound = listener.local_addr().unwrap();
        proxy.set_bound(bound);
        let url = if bound.ip().is_unspecified() {
            format!("http://127.0.0.1:{}", bound.port())
        } else {
            format!("http://{bound}")
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let mut settings = server::ServerSettings::from_config(config);
        settings.grace = Duration::from_secs(5);
        let task = tokio::spawn(server::serve(
            listener,
            proxy,
            async {
                let _ = stopped.await;
            },
            settings,
        ));
        Harness {
            sim,
            url,
            client: client(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.url)
    }

    /// Another proxy, built from `config`, serving in front of the same simulator (a replica);
    /// it stops when the returned value is dropped.
    pub async fn replica(&self, config: &Config) -> Replica {
        let proxy = Arc::new(Proxy::new(config).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bound = listener.local_addr().unwrap();
        proxy.set_bound(bound);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            proxy,
            async {
                let _ = stopped.await;
            },
            server::ServerSettings::from_config(config),
        ));
        Replica {
            url: format!("http://{bound}"),
            _stop: stop,
            _task: task,
        }
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(self.url(path_and_query))
            .send()
            .await
            .unwrap()
    }

    /// A GET with one extra request header (usually one of the proxy's `x-spapi-*`).
    pub async fn get_with(
        &self,
        path_and_query: &str,
        name: &str,
        value: &str,
    ) -> reqwest::Response {
        self.client
            .get(self.url(path_and_query))
            .header(name, value)
            .send()
            .await
            .unwrap()
    }

    /// Starts graceful shutdown and waits for the server to finish.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// `x-spapi-proxy-queued-ms`: how long the proxy held the request for quota.
pub fn queued_ms(resp: &reqwest::Response) -> u64 {
    resp.headers()["x-spapi-proxy-queued-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The JSON body of a response.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Sends raw bytes to `base` (`http://host:port`) and returns what came back until the server
/// closed the connection, 5 s passed, or nothing more came for 500 ms after an answer began:
/// for requests no HTTP client library would send.
pub async fn raw(base: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may close before it has read everything (a refused huge header).
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let wait = if out.is_empty() {
            Duration::from_secs(5).saturating_sub(started.elapsed())
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Set (to anything but `0`) in `.ci/run`: a test that cannot run its real component (a
/// browser, a client library, a system tool) fails instead of skipping.
pub const REQUIRE_ALL: &str = "SPAPI_TESTS_REQUIRE_ALL";

/// What was skipped in this test binary, listed in one line when it exits.
static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A test that cannot run its real component calls this and returns: under
/// `SPAPI_TESTS_REQUIRE_ALL` (CI) it fails the test; otherwise it says SKIPPED now and the
/// binary lists every skip in one line at the end ([`skipped_summary`]).
pub fn skip(test: &str, why: &str) {
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} cannot run ({why}), and {REQUIRE_ALL} is set: a skip is a failure here");
    }
    eprintln!("SKIPPED {test}: {why}");
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        // libtest ends the process with `exit`, after its own summary: the list comes last.
        #[allow(
            unsafe_code,
            reason = "libc's atexit: the one way to print after libtest"
        )]
        // SAFETY: `print_skipped` is a plain `extern "C" fn` that only reads a static mutex.
        unsafe {
            libc::atexit(print_skipped);
        }
    });
    SKIPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(test.to_string());
}

/// The one line listing what was skipped, or `None` when nothing was.
pub fn skipped_summary() -> Option<String> {
    let skipped = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    (!skipped.is_empty()).then(|| {
        format!(
            "SKIPPED {} test(s), which passed without running their real component: {} \
             (set {REQUIRE_ALL}=1 to make a skip fail)",
            skipped.len(),
            skipped.join(", ")
        )
    })
}

/// Where util-linux's `prlimit` is, if it is installed.
pub fn prlimit() -> Option<&'static str> {
    ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

extern "C" fn print_skipped() {
    if let Some(line) = skipped_summary() {
        eprintln!("{line}");
    }
}

/// The status code of a raw HTTP/1.1 answer (0 if there was none).
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
