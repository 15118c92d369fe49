//! spapi-proxy: a transparent signing reverse proxy for the Amazon Selling Partner API.
//!
//! # Layout
//!
//! - [`config`]: `proxy.toml` and the environment, validated into a [`config::Config`].
//! - [`server`]: sockets, connections, graceful shutdown.
//! - [`proxy`]: the request pipeline; every error becomes a response here.
//! - [`auth`]: which token a request carries; [`auth::lwa`] caches LWA access tokens.
//! - [`forward`]: the upstream side: header hygiene, signing headers, the pooled client.
//! - [`error`]: the error enum and its one status mapping.
//! - [`sim`]: a local SP-API and LWA simulator for `demo` and the tests.
//! - [`secret`], [`body`]: small shared types.
//!
//! # Request path
//!
//! ```text
//! server::serve  accept -> hyper connection (watched for graceful shutdown) -> Proxy::handle
//! Proxy::handle  /_proxy/* -> own endpoints; otherwise Proxy::proxy:
//!   1. read_body      small bodies are held so the request can be replayed
//!   2. auth           the cached LWA access token (single-flight refresh)
//!   3. forward::send  signing headers set, path and query byte for byte, bodies streamed
//!   4. on 403 "token expired/invalid": drop the token, fetch a new one, replay once
//!   5. Amazon's response back untouched (hop-by-hop headers aside)
//! ```

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod explain;
pub mod forward;
pub mod limiter;
pub mod operations;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod sim;
