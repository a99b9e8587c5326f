# syntax=docker/dockerfile:1
#
# cc-forwarder container image: build the dashboard and the release binary, then copy the binary
# into a small Debian runtime that runs it as a non-root user.
#
#   docker build -t cc-forwarder .
#   docker run -d --name cc-forwarder -p 8087:8087 -v ccf-data:/data \
#     -e FORWARDER_CLIENT_TOKEN="$(openssl rand -hex 24)" -e ANTHROPIC_API_KEY=sk-ant-... \
#     cc-forwarder
#
# The image's config is config/docker.yaml: the proxy on 0.0.0.0 with inbound auth on, its token
# from FORWARDER_CLIENT_TOKEN; the forwarder refuses to start, naming the variable, when it or
# ANTHROPIC_API_KEY is missing. Mount your own config at /etc/cc-forwarder/config.yaml for more.
# Relative paths in it (data/usage.db) resolve under /data, the volume.
# bins/cc-forwarder/tests/docker_image.rs runs the binary the way the runtime stage below does
# (it reads the COPY, ENV, WORKDIR and CMD lines of this file). See docs/operations.md.

# --- the web dashboard (embedded into the binary by crates/ccf-admin/build.rs) ---
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

# --- the binary ---
FROM rust:bookworm AS builder
WORKDIR /src
COPY . .
COPY --from=web /src/web/dist web/dist
# The dashboard is built above; the version line takes the commit from these when given
# (.git is not copied into the build context).
ARG CC_FORWARDER_GIT_COMMIT=""
ARG CC_FORWARDER_COMMIT_DATE=""
ENV CCF_WEB_NO_NPM=1 \
    CC_FORWARDER_GIT_COMMIT=${CC_FORWARDER_GIT_COMMIT} \
    CC_FORWARDER_COMMIT_DATE=${CC_FORWARDER_COMMIT_DATE}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist -p cc-forwarder --locked \
    && install -m 0755 target/dist/cc-forwarder /usr/local/bin/cc-forwarder

# --- the runtime ---
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ccf \
    && useradd --system --uid 10001 --gid ccf --home-dir /data --shell /usr/sbin/nologin ccf \
    && install -d -o ccf -g ccf -m 0750 /data \
    && install -d -m 0755 /etc/cc-forwarder
COPY --from=builder /usr/local/bin/cc-forwarder /usr/local/bin/cc-forwarder
COPY config/docker.yaml /etc/cc-forwarder/config.yaml
# The dashboard stays on the container's loopback unless you publish it with a token (the admin
# API refuses a non-loopback address without one):
#   -p 8088:8088 -e CCF_WEB__HOST=0.0.0.0 -e CCF_WEB__AUTH_TOKEN=<long random token>
# A mounted config listens on every interface too (environment overrides win over the file),
# as with earlier images: a container's loopback cannot be reached through -p.
ENV CCF_SERVER__HOST=0.0.0.0
WORKDIR /data
VOLUME ["/data"]
USER ccf:ccf
EXPOSE 8087 8088
STOPSIGNAL SIGTERM
CMD ["cc-forwarder", "--config", "/etc/cc-forwarder/config.yaml", "--no-tui"]
