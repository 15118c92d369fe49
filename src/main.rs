//! The `spapi-proxy` binary: arguments and environment in, a running proxy out, failures as exit codes.

#![deny(unsafe_code)]

mod allocator;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use spapi_proxy::config::{Config, ConfigError};
use spapi_proxy::proxy::ConfigSource;
use spapi_proxy::proxy::Proxy;
use spapi_proxy::{commands, server, sim};
use tokio::net::TcpListener;

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EX_USAGE: u8 = 64;

/// A signing reverse proxy for the Amazon Selling Partner API.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve(ServeArgs),
    /// Run the proxy against a built-in SP-API simulator; needs no credentials.
    Demo {
        /// Address to listen on (loopback only: the demo has no inbound keys).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the simulator listens (default: a free loopback port), so that a config of
        /// your own can point at it.
        #[arg(long)]
        sim_listen: Option<SocketAddr>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate the configuration and environment and print the effective settings.
    Check {
        /// Configuration file (default: ./proxy.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the SP-API operation catalog (operationId, api, version, method, path, rate, burst, auth).
    Operations {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if a running proxy answers /_proxy/health (for container health checks).
    Health {
        /// The proxy's base URL (default: the `listen` that `serve` would use: SPAPI_LISTEN,
        /// else the config file's, else http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
        /// Configuration file whose `listen` to check (default: ./proxy.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a running proxy's status (sellers, tokens, buckets) as tables.
    Status {
        /// The proxy's base URL (default: from SPAPI_LISTEN, else http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
    },
    /// Act on a running proxy's tokens.
    Tokens {
        /// Drop the cached access tokens and fetch new ones now.
        #[arg(long, required = true)]
        refresh: bool,
        /// Only this seller's (default: every seller's).
        #[arg(long)]
        seller: Option<String>,
        /// The proxy's base URL (default: from SPAPI_LISTEN, else http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
    },
    /// Onboard sellers through Amazon's website authorization workflow.
    Sellers {
        #[command(subcommand)]
        action: SellersAction,
    },
    /// Print what the proxy would do with a request: operation, rate limit, token, upstream URL.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// Path and optional query, e.g. /orders/v0/orders/902-3159896-1390916/address.
        path: String,
        /// Configuration file (default: ./proxy.toml if present); credentials are not needed.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The seller the request acts for (as `x-spapi-seller` would name it).
        #[arg(long)]
        seller: Option<String>,
    },
}

#[derive(Subcommand)]
enum SellersAction {
    /// Print the URL that authorizes the application for seller NAME, and wait until the
    /// seller has authorized it (the proxy's callback stores the refresh token).
    Add {
        /// The seller's name in the proxy (`x-spapi-seller`).
        name: String,
        /// Its region: na, eu or fe.
        #[arg(long)]
        region: String,
        /// A vendor (Vendor Central) rather than a seller.
        #[arg(long)]
        vendor: bool,
        /// The proxy's base URL (default: from SPAPI_LISTEN, else http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Configuration file (default: ./proxy.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen` and SPAPI_LISTEN).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Args, Clone)]
struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, env = "SPAPI_LOG_FORMAT", default_value = "text")]
    log_format: spapi_proxy::logging::Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        None => cli.serve.log.log_format,
        Some(Command::Serve(args)) => args.log.log_format,
        Some(Command::Demo { log, .. }) => log.log_format,
        Some(_) => spapi_proxy::logging::Format::Text,
    };
    spapi_proxy::logging::init(log_format);
    let runtime = match workers().map(runtime) {
        Ok(Ok(rt)) => rt,
        Ok(Err(e)) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // Request lines wait at most a tenth of a second (see `logging::write_request`).
    runtime.spawn(spapi_proxy::logging::flush_every());
    let code = match cli.command {
        None => runtime.block_on(serve(cli.serve)),
        Some(Command::Serve(args)) => runtime.block_on(serve(args)),
        Some(Command::Demo {
            listen, sim_listen, ..
        }) => runtime.block_on(demo(listen, sim_listen)),
        Some(Command::Check { config }) => check(config.as_deref()),
        Some(Command::Operations { json }) => operations(json),
        Some(Command::Health { url, config }) => {
            runtime.block_on(health(url.or_else(|| listen_url(config.as_deref()))))
        }
        Some(Command::Status { url }) => runtime.block_on(status(url)),
        Some(Command::Tokens { seller, url, .. }) => runtime.block_on(refresh_tokens(url, seller)),
        Some(Command::Sellers {
            action:
                SellersAction::Add {
                    name,
                    region,
                    vendor,
                    url,
                },
        }) => runtime.block_on(sellers_add(url, &name, &region, vendor)),
        Some(Command::Explain {
            method,
            path,
            config,
            seller,
        }) => explain(&method, &path, config.as_deref(), seller.as_deref()),
    };
    // The last request lines (the runtime's own threads write theirs as they end).
    drop(runtime);
    spapi_proxy::logging::flush_all();
    code
}

/// `SPAPI_WORKERS`: runtime threads (default 1, a single-threaded runtime, which measured
/// fastest on small machines: no work stealing, no cross-thread wake-ups).
fn workers() -> Result<usize, String> {
    let Ok(v) = std::env::var("SPAPI_WORKERS") else {
        return Ok(1);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "SPAPI_WORKERS: want a whole number of threads above 0, got {v:?}"
        )),
    }
}

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        // Request lines are written while the thread is idle (see `logging::write_request`).
        .on_thread_park(spapi_proxy::logging::flush_at_park)
        .build()
}

/// Loads the configuration before any port is bound, so a mistake costs nothing.
fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    let default = Path::new("proxy.toml");
    let path = path.or_else(|| default.exists().then_some(default));
    Config::load(path, &|name| std::env::var(name).ok())
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: configuration: {e}");
    ExitCode::from(EX_USAGE)
}

/// Writes to stdout; a closed pipe (`spapi-proxy operations | head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

fn operations(as_json: bool) -> ExitCode {
    let catalog = spapi_proxy::operations::Catalog::builtin();
    if as_json {
        print_out(&format!("{:#}\n", commands::operations_json(catalog)))
    } else {
        print_out(&commands::operations_table(catalog))
    }
}

fn explain(method: &str, path: &str, config: Option<&Path>, seller: Option<&str>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    match commands::explain(&config, method, path, seller) {
        Ok(text) => print_out(&text),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The base URL of the address `serve` would listen on with `config` (the file's `listen`,
/// SPAPI_LISTEN winning), if the config can be read.
fn listen_url(config: Option<&Path>) -> Option<String> {
    Some(local_url(load_config(config).ok()?.listen))
}

/// `http://ADDR` for a listen address; 0.0.0.0 (or ::) becomes 127.0.0.1.
fn local_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        listen.ip()
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The proxy's base URL: `--url`, or the listen address from SPAPI_LISTEN (0.0.0.0 becomes
/// 127.0.0.1).
fn base_url(url: Option<String>) -> String {
    let base = url.unwrap_or_else(|| {
        let listen = std::env::var("SPAPI_LISTEN")
            .ok()
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        local_url(listen)
    });
    base.trim_end_matches('/').to_string()
}

/// What a command says when the proxy cannot be reached: for a refused connection, the
/// question a user needs ("is the proxy running?") rather than the client library's chain.
fn unreachable_message(base: &str, e: &reqwest::Error) -> String {
    if e.is_connect() {
        format!(
            "connection refused: is the proxy running at {base}? (--url or SPAPI_LISTEN say where)"
        )
    } else if e.is_timeout() {
        format!("no answer from {base} in time: is it the proxy?")
    } else {
        format!("{base}: {}", spapi_proxy::forward::describe(e))
    }
}

/// A client for the proxy's own endpoints, presenting `SPAPI_PROXY_KEY` (or the first of
/// `SPAPI_PROXY_KEYS`) when set.
fn admin_client() -> Result<reqwest::Client, String> {
    let key = std::env::var("SPAPI_PROXY_KEY").ok().or_else(|| {
        std::env::var("SPAPI_PROXY_KEYS")
            .ok()
            .and_then(|k| k.split(',').next().map(|k| k.trim().to_string()))
    });
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&key)
            .map_err(|_| "SPAPI_PROXY_KEY is not a valid header value".to_string())?;
        value.set_sensitive(true);
        headers.insert("x-spapi-proxy-key", value);
    }
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .default_headers(headers)
        .build()
        .map_err(|e| e.to_string())
}

/// GETs or POSTs `path` on the proxy and reads its JSON answer.
async fn admin_call(
    url: Option<String>,
    post: bool,
    path: &str,
) -> Result<serde_json::Value, String> {
    let client = admin_client()?;
    let base = base_url(url);
    let url = format!("{base}{path}");
    let request = if post {
        client.post(&url)
    } else {
        client.get(&url)
    };
    let resp = request
        .send()
        .await
        .map_err(|e| unreachable_message(&base, &e))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}

/// `sellers add`: asks the proxy for the consent URL, prints it, and polls the proxy's status
/// until the seller shows as authorized after this start (ten minutes at most, the state's life).
async fn sellers_add(url: Option<String>, name: &str, region: &str, vendor: bool) -> ExitCode {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("seller", name)
        .append_pair("region", region)
        .append_pair("vendor", if vendor { "true" } else { "false" })
        .finish();
    let client = match admin_client() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let base = base_url(url.clone());
    let start = format!("{base}/_proxy/oauth/start?{query}");
    let resp = match client
        .get(&start)
        .header("accept", "application/json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(&unreachable_message(&base, &e)),
    };
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return fail(&format!(
            "{base}/_proxy/oauth/start answered {status}: {body}"
        ));
    }
    let Some(consent) = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["url"].as_str().map(str::to_string))
    else {
        return fail(&format!(
            "{base}/_proxy/oauth/start answered without a url: {body}"
        ));
    };
    let mut since = String::new();
    let _ = spapi_proxy::logging::write_timestamp(&mut since, std::time::SystemTime::now());
    println!(
        "Open this URL in a browser signed in to the seller's account, and confirm:

  {consent}
"
    );
    println!("Waiting for the authorization (up to 10 minutes)...");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Ok(status) = admin_call(url.clone(), false, "/_proxy/status").await else {
            continue;
        };
        let seller = &status["sellers"][name];
        if let Some(at) = seller["authorized_at"].as_str().filter(|at| **at >= *since) {
            println!(
                "Seller {name} ({}) authorized at {at}; it serves requests now.",
                seller["selling_partner_id"].as_str().unwrap_or("-")
            );
            return ExitCode::SUCCESS;
        }
    }
    fail("no authorization arrived within 10 minutes; run `sellers add` again")
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

async fn status(url: Option<String>) -> ExitCode {
    match admin_call(url, false, "/_proxy/status").await {
        Ok(v) => print_out(&commands::status_tables(&v)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn refresh_tokens(url: Option<String>, seller: Option<String>) -> ExitCode {
    let path = match &seller {
        Some(s) => format!(
            "/_proxy/tokens/refresh?seller={}",
            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
        ),
        None => "/_proxy/tokens/refresh".to_string(),
    };
    match admin_call(url, true, &path).await {
        Ok(v) => {
            for (who, r) in v["tokens"].as_object().into_iter().flatten() {
                match r["refreshed"].as_bool() {
                    Some(true) => println!("{who}: refreshed"),
                    _ => println!("{who}: failed: {}", r["error"].as_str().unwrap_or("?")),
                }
            }
            if v["ok"] == serde_json::Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn health(url: Option<String>) -> ExitCode {
    let base = base_url(url);
    let url = format!("{base}/_proxy/health");
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            println!("healthy: {url}");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {}", unreachable_message(&base, &e));
            ExitCode::FAILURE
        }
    }
}

fn check(path: Option<&Path>) -> ExitCode {
    match load_config(path)
        .and_then(|c| c.require_credentials().map(|()| c))
        .and_then(|c| c.check_exposure().map(|()| c))
    {
        Ok(config) => {
            print!("{}", commands::describe(&config));
            println!("configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    // A reload reads the same file and the process environment again.
    let (path, listen) = (args.config.clone(), args.listen);
    let source: ConfigSource = Box::new(move || {
        let mut config = load_config(path.as_deref())?;
        if let Some(listen) = listen {
            config.listen = listen;
        }
        config.require_credentials()?;
        Ok(config)
    });
    let sellers = config.sellers.len();
    serve_until_signal(&config, Some(source), |addr| {
        // Said only once the config has proved good: no warning before a fatal error.
        if sellers == 0 {
            tracing::warn!("no seller configured: only grantless operations can be served");
        }
        tracing::info!(%addr, sellers, "spapi-proxy listening");
    })
    .await
}

/// Builds the proxy, binds, reports the address, and serves until SIGINT or SIGTERM; SIGHUP
/// reloads the config when there is a `source` to read it from.
async fn serve_until_signal(
    config: &Config,
    source: Option<ConfigSource>,
    listening: impl FnOnce(SocketAddr),
) -> ExitCode {
    if let Err(e) = config.check_exposure() {
        return config_error(&e);
    }
    // Before the proxy sizes its upstream connection slots from the limit.
    let fd_limit = server::raise_fd_limit();
    let proxy = match Proxy::new(config) {
        Ok(p) => match source {
            Some(source) => Arc::new(p.with_source(source)),
            None => Arc::new(p),
        },
        Err(e) => return config_error(&e),
    };
    reload_on_sighup(Arc::clone(&proxy));
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {}: {e} (try --listen 127.0.0.1:0)",
                config.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let settings = server::ServerSettings::from_config(config);
    tracing::info!(
        fd_limit,
        max_connections = settings.max_connections,
        "file-descriptor limit raised to the hard limit"
    );
    let bound = listener.local_addr().unwrap_or(config.listen);
    proxy.set_bound(bound);
    listening(bound);
    server::serve(listener, proxy, server::shutdown_signal(), settings).await;
    ExitCode::SUCCESS
}

/// SIGHUP re-reads the config; a bad one is logged and the old one kept.
fn reload_on_sighup(proxy: Arc<Proxy>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /_proxy/reload");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match proxy.reload() {
                Ok(summary) => tracing::info!("SIGHUP: {summary}"),
                Err(e) => {
                    tracing::warn!(error = %e, "SIGHUP: the config was not reloaded; the proxy keeps the one it had");
                }
            }
        }
    });
}

/// A second seller the demo's simulator knows, for configs of two sellers.
const DEMO_SECOND_REFRESH_TOKEN: &str = "Atzr|sim-refresh-token-2";

async fn demo(listen: SocketAddr, sim_listen: Option<SocketAddr>) -> ExitCode {
    let sim_addr = sim_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let started = match TcpListener::bind(sim_addr).await {
        Ok(l) => sim::Simulator::start_on(l),
        Err(e) => {
            eprintln!("error: cannot listen on {sim_addr} for the simulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let simulator = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the simulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    simulator.enforce_rate_limits(true);
    simulator.add_seller(DEMO_SECOND_REFRESH_TOKEN);
    let env = [
        ("SPAPI_ENDPOINT", simulator.url()),
        ("SPAPI_TOKEN_URL", simulator.token_url()),
        ("SPAPI_CLIENT_ID", sim::SIM_CLIENT_ID.to_string()),
        ("SPAPI_CLIENT_SECRET", sim::SIM_CLIENT_SECRET.to_string()),
        ("SPAPI_REFRESH_TOKEN", sim::SIM_REFRESH_TOKEN.to_string()),
        ("SPAPI_LISTEN", listen.to_string()),
    ];
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
    let config = match Config::from_toml_str("", "(demo)", &lookup) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let sim_url = simulator.url();
    let token_url = simulator.token_url();
    serve_until_signal(&config, None, |addr| {
        println!("spapi-proxy demo: the proxy on http://{addr} forwards to a local SP-API simulator at {sim_url}.");
        println!("Try (Ctrl-C stops both):\n");
        println!("  curl -s 'http://{addr}/sellers/v1/marketplaceParticipations'");
        println!("  curl -s 'http://{addr}/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2026-11-01T00:00:00Z'");
        println!("  curl -s 'http://{addr}/catalog/2022-04-01/items/B0C1EXAMPL?marketplaceIds=ATVPDKIKX0DER&includedData=summaries'");
        println!("  curl -s 'http://{addr}/_proxy/reports/60004/document?decode=utf-8'   # a Japanese report, gunzipped, in UTF-8");
        println!();
        println!(
            "simulator credentials: client id {}, client secret {}, refresh tokens {} and {DEMO_SECOND_REFRESH_TOKEN}",
            sim::SIM_CLIENT_ID,
            sim::SIM_CLIENT_SECRET,
            sim::SIM_REFRESH_TOKEN
        );
        println!("A proxy.toml of your own (two sellers, two regions) for this simulator; start it with");
        println!("`spapi-proxy serve --config proxy.toml --listen 127.0.0.1:8081`:\n");
        print!("{}", demo_config_snippet(&sim_url, &token_url));
        println!();
    })
    .await
}

/// A `proxy.toml` pointing every region at the demo's simulator, with two sellers.
fn demo_config_snippet(sim_url: &str, token_url: &str) -> String {
    format!(
        "token_url = \"{token_url}\"\n\
         [endpoints]\n\
         na = \"{sim_url}\"\n\
         eu = \"{sim_url}\"\n\
         fe = \"{sim_url}\"\n\
         [credentials]\n\
         client_id = \"{}\"\n\
         client_secret = \"{}\"\n\
         [sellers.us_shop]\n\
         refresh_token = \"{}\"\n\
         region = \"na\"\n\
         default = true\n\
         [sellers.eu_shop]\n\
         refresh_token = \"{DEMO_SECOND_REFRESH_TOKEN}\"\n\
         region = \"eu\"\n",
        sim::SIM_CLIENT_ID,
        sim::SIM_CLIENT_SECRET,
        sim::SIM_REFRESH_TOKEN
    )
}

/// mimalloc: the request path allocates and frees many small blocks (header maps, bodies,
/// futures). With `bench/run`, getOrders took 60,630 instructions per request on glibc's malloc
/// and 58,633 on mimalloc. It is built with `no_thp`: with transparent huge pages, each arena
/// touched early pulls in whole 2 MiB pages (RSS 38.3 MiB with 1,000 idle connections; 22.6
/// without). mimalloc's v2 line, not v3: v3's aligned-allocation entry (which Rust's
/// allocator interface always uses) falls to its slow path more often here (53,002 -> 51,465
/// instructions per request on v2). Entered through `mi_malloc` where the alignment allows
/// (see [`allocator`]): 324 fewer instructions per request than the `mimalloc` crate's
/// aligned entry.
#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;
