# switchboard: multi-stage build. (No Docker engine runs on the project's build machines, so
# this file is not exercised by CI; `cargo build --release` is the same build.)

FROM rust:1.95-bookworm AS build
# Node.js and npm build the web client (build.rs); the final image does not contain them.
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, for layer caching.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src/bin/switchboard-bench benches \
 && echo '' > src/lib.rs \
 && for f in src/main.rs src/bin/switchboard-bench/main.rs benches/codec.rs benches/store_append.rs \
             benches/store_compare.rs; do echo 'fn main() {}' > "$f"; done \
 && cargo build --release --locked --bins \
 && rm -rf src benches
COPY web ./web
COPY src ./src
COPY benches ./benches
COPY schema.cql ./
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin switchboard

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/switchboard switchboard \
 && mkdir -p /var/lib/switchboard /etc/switchboard \
 && chown switchboard /var/lib/switchboard
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY config/switchboard.toml /etc/switchboard/switchboard.toml
USER switchboard
ENV SWITCHBOARD_HTTP_ADDR=0.0.0.0:8080 \
    SWITCHBOARD_DATA_DIR=/var/lib/switchboard
VOLUME /var/lib/switchboard
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["serve", "--config", "/etc/switchboard/switchboard.toml"]
