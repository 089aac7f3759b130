# FedOps control service. Runs each run's Flower SuperLink and ServerApp in the same container,
# so the image carries the Flower apps' dependencies (EXTRAS, default: the digits example's).
FROM python:3.11-slim

ARG EXTRAS="postgres,examples"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDOPS_OBSERVABILITY_DIR=/opt/fedops/observability

# git: tasks may reference their Flower app by git URL + ref.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 fedops \
    && mkdir -p /var/lib/fedops \
    && chown fedops:fedops /var/lib/fedops

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
EXPOSE 50051 9464
VOLUME ["/var/lib/fedops"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["fedopsctl", "--control", "127.0.0.1:50051", "health"]
ENTRYPOINT ["fedops-control", "--listen", "0.0.0.0:50051", "--data-dir", "/var/lib/fedops", \
            "--metrics-listen", "0.0.0.0:9464", "--superlink-bind", "0.0.0.0"]
