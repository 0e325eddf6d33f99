# keyhaven's container image: built in one stage, run in a small one as a non-root
# user whose only writable place is the /data volume (the SQLite store, its
# master.key, the audit log; with PostgreSQL, the admin key's hash and the audit log).
#
#   docker build -t keyhaven .
#   docker run -p 9210:9210 -v keyhaven-data:/data keyhaven
#
# See docs/deploy.md.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keyhaven

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 keyhaven \
    && useradd --system --uid 10001 --gid keyhaven --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin keyhaven \
    && mkdir /data \
    && chown keyhaven:keyhaven /data \
    && chmod 0700 /data
COPY --from=build /src/target/release/keyhaven /usr/local/bin/keyhaven
USER 10001:10001
WORKDIR /data
ENV KEYHAVEN_DATA_DIR=/data \
    KEYHAVEN_LISTEN=0.0.0.0:9210 \
    KEYHAVEN_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 9210
ENTRYPOINT ["/usr/local/bin/keyhaven"]
CMD ["serve"]
