# syntax=docker/dockerfile:1
# clearance: build with the pinned Rust toolchain, run on a slim Debian.
#
#   docker build -t clearance .
#   docker run --rm clearance clearance --help

# ---- build -----------------------------------------------------------------
# Cargo.toml says rust-version 1.85, but the locked time 0.3.55 and
# hdrhistogram 7.6.0 need rustc 1.88: build with the oldest toolchain that
# the lockfile accepts.
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
 && install -m 0755 target/release/clearance /usr/local/bin/clearance

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
CMD ["clearance", "run", "--config", "/etc/clearance/clearance.toml"]
