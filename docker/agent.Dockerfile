# FedOps device agent: registers the device, heartbeats, reports data status and resources, and runs
# the Flower SuperNode (and ClientApp) of each run it takes part in. EXTRAS carries the ClientApps'
# dependencies (default: the digits example's).
#
# BASE_IMAGE: any Debian-like image with Python 3.11 (default the public python:3.11-slim;
# scripts/build_images.sh builds on a local one, without a registry). With PIP_NO_INDEX=1 every Python
# package comes from docker/wheels/ (built on the host), so the build needs no network.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG EXTRAS="examples"
ARG PIP_NO_INDEX=0
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS=/tmp/wheels
WORKDIR /opt/fedops
COPY docker/wheels /tmp/wheels
# Dependencies first, from pyproject.toml alone: this layer is kept while the pins do not change.
COPY pyproject.toml README.md ./
# The project itself: its pins are in pyproject.toml.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"
# Every package of pyproject.toml's [tool.setuptools.packages.find] (tests/test_docker.py checks).
COPY fedops_common ./fedops_common
COPY fedops_control ./fedops_control
COPY fedops_agent ./fedops_agent
COPY fedops_flower ./fedops_flower
COPY fedops_client ./fedops_client
COPY fedops_cli ./fedops_cli
COPY fedops_dash ./fedops_dash
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --force-reinstall . \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 10001 fedops \
    && mkdir -p /var/lib/fedops-agent /var/lib/fedops-federation /data \
    && chown fedops:fedops /var/lib/fedops-agent /var/lib/fedops-federation

WORKDIR /opt/fedops
COPY --from=build /opt/venv /opt/venv
COPY examples ./examples
COPY docker/federation-shipper.sh /usr/local/bin/fedops-federation-shipper

USER 10001
EXPOSE 9465
VOLUME ["/var/lib/fedops-agent"]
# FEDOPS_METRICS_PORT: the port of --metrics-listen when it is not 9465 (agents on the host's network).
# 30 s (Docker's default): on a loaded 2-core host a check that starts Python took over 5 s, and the
# container was marked unhealthy while it served (seen in a CI run).
HEALTHCHECK --interval=15s --timeout=30s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('FEDOPS_METRICS_PORT', '9465'), timeout=25)"]
# Settings come from /etc/fedops/agent.toml and FEDOPS_* variables (see docker/agent-compose.yml).
ENTRYPOINT ["fedops-agent", "--state-dir", "/var/lib/fedops-agent", "--metrics-listen", "0.0.0.0:9465"]
