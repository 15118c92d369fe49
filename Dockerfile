# Build stage: compile a release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a change to the proxy's source rebuilds only the proxy.
# (The stub sources stand in for ours while the dependencies compile, then are thrown away.)
COPY Cargo.toml Cargo.lock ./
COPY xtask/Cargo.toml xtask/Cargo.toml
RUN mkdir -p src benches examples xtask/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/matcher.rs && echo 'fn main() {}' > examples/ratelimit.rs \
    && echo 'fn main() {}' > xtask/src/main.rs \
    && cargo build --release --locked --bin spapi-proxy \
    && rm -rf src benches examples xtask/src
COPY . .
# Make sure cargo sees our sources as newer than the stubs' build.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin spapi-proxy
# Inside a container the proxy must listen on all interfaces to be reachable: the image's
# config says so in its `listen` (a config you mount instead says where; the health check follows it).
RUN sed 's/^listen = .*/listen = "0.0.0.0:8080"/' proxy.toml > container.toml \
    && grep -q '^listen = "0.0.0.0:8080"' container.toml

# Final stage: the binary alone on a minimal glibc base, as an unprivileged user.
# TLS roots are compiled into the binary (webpki-roots), so no CA bundle is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/spapi-proxy /usr/local/bin/spapi-proxy
COPY --from=build /src/container.toml /etc/spapi-proxy/proxy.toml
USER nonroot:nonroot
# Listening on all interfaces, the proxy starts only with inbound keys: pass SPAPI_PROXY_KEYS
# (the binary exits 64 without them).
EXPOSE 8080
# The distroless image has no curl: the binary checks /_proxy/health itself, at the address the
# config (and SPAPI_LISTEN, if set) gives, as `serve` reads it.
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["/usr/local/bin/spapi-proxy", "health", "--config", "/etc/spapi-proxy/proxy.toml"]
ENTRYPOINT ["/usr/local/bin/spapi-proxy"]
CMD ["serve", "--config", "/etc/spapi-proxy/proxy.toml"]
