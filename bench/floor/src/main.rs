//! The floor the benchmark measures spapi-proxy against: a minimal hyper reverse proxy doing
//! the same header work (host, token, date, user-agent) with the same crates and settings
//! (HTTP/1 `conn::http1` on both sides, a stack of idle upstream connections, current_thread,
//! mimalloc, writev off), and nothing else: no matching, limits, tokens, metrics or log line.
//!
//! `cargo build --release -p hyper-floor`; `bench/run` starts it with `SPAPI_LISTEN` and
//! `SPAPI_ENDPOINT` (an `http://host:port` upstream) and reports its instructions per request
//! next to spapi-proxy's.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// spapi-proxy's own allocator (mimalloc entered through `mi_malloc` where the alignment
/// allows), so that the floor and the proxy differ only in what the proxy does.
#[path = "../../../src/allocator.rs"]
mod allocator;

#[global_allocator]
static GLOBAL: allocator::MiMalloc = allocator::MiMalloc;

const X_AMZ_ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-amz-access-token");
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");

struct Upstream {
    addr: String,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Upstream {
    async fn sender(&self) -> std::io::Result<SendRequest<Incoming>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Incoming> {
        let (parts, body) = req.into_parts();
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 4);
        for (name, value) in &parts.headers {
            if name != header::HOST && name != header::USER_AGENT && name != header::CONNECTION {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(header::HOST, self.host.clone());
        headers.insert(
            X_AMZ_ACCESS_TOKEN,
            HeaderValue::from_static("Atza|bench-token"),
        );
        headers.insert(X_AMZ_DATE, HeaderValue::from_static("20261207T000000Z"));
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("bench/1.0 (Language=Rust)"),
        );
        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.uri_mut() = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        *out.headers_mut() = headers;
        let mut sender = self.sender().await.expect("upstream connection");
        let response = sender.send_request(out).await.expect("upstream answer");
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
        response
    }
}

fn main() -> std::io::Result<()> {
    let listen = std::env::var("SPAPI_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let endpoint = std::env::var("SPAPI_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9".into());
    let addr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let upstream = Arc::new(Upstream {
        host: HeaderValue::from_static("sellingpartnerapi-na.amazon.com"),
        addr,
        idle: Mutex::default(),
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                let upstream = Arc::clone(&upstream);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let upstream = Arc::clone(&upstream);
                        async move {
                            if req.uri().path() == "/_proxy/ready" {
                                return Ok::<_, Infallible>(Response::new(Either::Right(Empty::<
                                    Bytes,
                                >::new(
                                ))));
                            }
                            Ok(upstream.forward(req).await.map(Either::Left))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .writev(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
