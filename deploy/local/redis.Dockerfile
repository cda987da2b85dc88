# Redis for the compose rehearsal on a machine that cannot pull images (compose.local.yaml):
# Debian's redis-server package on a Debian base, which that file names (BASE_IMAGE).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
USER redis
ENTRYPOINT ["redis-server"]
