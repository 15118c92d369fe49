# Build stage: compile a release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin spapi-proxy

# Final stage: the binary alone on a minimal glibc base, as an unprivileged user.
# TLS roots are compiled into the binary (webpki-roots), so no CA bundle is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/spapi-proxy /usr/local/bin/spapi-proxy
COPY proxy.toml /etc/spapi-proxy/proxy.toml
USER nonroot:nonroot
# Inside a container the proxy must listen on all interfaces to be reachable, so it starts only
# with inbound keys: pass SPAPI_PROXY_KEYS (the binary exits 64 without them).
ENV SPAPI_LISTEN=0.0.0.0:8080
EXPOSE 8080
# The distroless image has no curl: the binary checks /_proxy/health itself.
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["/usr/local/bin/spapi-proxy", "health"]
ENTRYPOINT ["/usr/local/bin/spapi-proxy"]
CMD ["serve", "--config", "/etc/spapi-proxy/proxy.toml"]
