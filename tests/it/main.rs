//! Integration tests: the real proxy against the simulator on loopback.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod cli;
mod dialect;
mod documents;
mod forwarding;
mod limits;
mod observe;
mod onboarding;
mod probe;
mod readme;
mod recipes;
mod restricted;
mod security;
mod sellers;
mod shared;
mod shutdown;
