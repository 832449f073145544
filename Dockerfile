# syntax=docker/dockerfile:1
# clearance: build with the pinned Rust toolchain, run on a slim Debian.
#
#   docker build -t clearance .
#   docker run --rm clearance clearance --help
#
# Two stages: a build image with the toolchain, then a runtime image
# with only the binary, its shared libraries (libssl3, zlib), CA
# certificates and a default configuration, run as an unprivileged user.

# ---- build -----------------------------------------------------------------
# The toolchain is Cargo.toml's rust-version (1.89), the oldest that the
# project and its locked dependencies build with; a test
# (tests/it/deploy.rs) keeps the two equal.
ARG RUST_VERSION=1.89
FROM rust:${RUST_VERSION}-bookworm AS build
# librdkafka is built from source by rdkafka-sys (ssl and libz features).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin clearance \
 && install -m 0755 target/release/clearance /usr/local/bin/clearance \
 && strip --strip-debug /usr/local/bin/clearance
# (The release profile keeps line tables for profiling; the image drops
# them, keeping the symbols, so that a panic's backtrace still names
# functions.)

# ---- runtime ---------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin clearance \
 && mkdir -p /etc/clearance \
 && printf '%s\n' \
      '# clearance configuration. Built-in defaults apply to everything not set' \
      '# here, and CLEARANCE_<SECTION>__<FIELD> variables override this file.' \
      '[admin]' \
      'listen = "0.0.0.0:9464"' \
      > /etc/clearance/clearance.toml
COPY --from=build /usr/local/bin/clearance /usr/local/bin/clearance
USER clearance
EXPOSE 9464
# Healthy = ready: /readyz answers 200 once the eligibility cache has caught
# up with the change feed and the policy topic was read (503 until then; on
# a large feed without a snapshot the catch-up can take minutes: raise
# --start-period to match). The image has no curl: the binary's own
# `clearance healthcheck` does the GET. Change the URL with the port if
# admin.listen is changed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["clearance", "healthcheck", "--url", "http://127.0.0.1:9464/readyz", "--timeout-secs", "4"]
CMD ["clearance", "run", "--config", "/etc/clearance/clearance.toml"]
