# syntax=docker/dockerfile:1
#
# Kapsel container image. See docs/DEPLOYMENT.md ("Docker") before running it in production:
# Docker 25 and later block io_uring by default (Kapsel then runs on epoll), `docker stop`
# waits only 10 s unless told otherwise, and the data must live on a volume.
#
#   docker build -t kapsel .
#   docker run -d --name kapsel -p 8080:8080 -v kapsel-data:/var/lib/kapsel \
#       --stop-timeout 30 --ulimit nofile=262144:262144 kapsel

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build directory between builds (BuildKit); the
# binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kapsel \
 && install -D -m 0755 target/release/kapsel /out/kapsel

FROM debian:bookworm-slim
# Kapsel trusts its built-in webpki roots for https destinations; ca-certificates is here for
# KAPSEL_EXTRA_CA_FILE and for debugging from inside the container.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kapsel \
 && useradd --system --uid 10001 --gid kapsel --home-dir /var/lib/kapsel --shell /usr/sbin/nologin kapsel \
 && install -d -m 0700 -o kapsel -g kapsel /var/lib/kapsel
COPY --from=build /out/kapsel /usr/local/bin/kapsel

ENV KAPSEL_DATA_DIR=/var/lib/kapsel \
    SERVER_ADDR=0.0.0.0:8080 \
    KAPSEL_LOG_FORMAT=json
# A new named volume starts with this directory's owner (kapsel, uid 10001). A bind-mounted
# host directory must be owned by uid 10001 already.
VOLUME ["/var/lib/kapsel"]
EXPOSE 8080
USER 10001:10001
# Kapsel handles SIGTERM itself (it runs fine as PID 1): stop accepting, finish in-flight
# requests (at most 20 s), flush the logs, exit 0.
STOPSIGNAL SIGTERM

# Liveness over plain HTTP with bash's /dev/tcp (the slim image has no curl or wget). It reads
# the port from SERVER_ADDR. It cannot speak TLS: with KAPSEL_TLS_CERT/KEY set, disable it
# (--no-healthcheck) or install a client and override it. Start-up replays the whole log
# before serving, hence the long start period.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SERVER_ADDR##*:} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r status <&3 && [[ $status == *' 200 '* ]]"]

ENTRYPOINT ["/usr/local/bin/kapsel"]
