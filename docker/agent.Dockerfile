# FedOps device agent: registers the device, heartbeats, reports data status and resources, and runs
# the Flower SuperNode (and ClientApp) of each run it takes part in. EXTRAS carries the ClientApps'
# dependencies (default: the digits example's).
FROM python:3.11-slim

ARG EXTRAS="examples"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDOPS_OBSERVABILITY_DIR=/opt/fedops/observability

RUN useradd --create-home --uid 10001 fedops \
    && mkdir -p /var/lib/fedops-agent /data \
    && chown fedops:fedops /var/lib/fedops-agent

WORKDIR /opt/fedops
COPY pyproject.toml README.md ./
COPY fedops_common ./fedops_common
COPY fedops_control ./fedops_control
COPY fedops_agent ./fedops_agent
COPY fedops_dash ./fedops_dash
COPY observability ./observability
COPY examples ./examples
# The project itself: its pins are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${EXTRAS}]"

USER 10001
EXPOSE 9465
VOLUME ["/var/lib/fedops-agent"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9465/metrics', timeout=4)"]
# Settings come from /etc/fedops/agent.toml and FEDOPS_* variables (see docker/agent-compose.yml).
ENTRYPOINT ["fedops-agent", "--state-dir", "/var/lib/fedops-agent", "--metrics-listen", "0.0.0.0:9465"]
