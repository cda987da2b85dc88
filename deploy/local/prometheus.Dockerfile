# Prometheus for the compose rehearsal on a machine that cannot pull images
# (compose.local.yaml): Debian's prometheus package on a Debian base with python3, which runs
# the health check (the image has no wget).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/*
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
