# FedOps control dashboard (Streamlit). Stateless: it reads the control service over gRPC and
# telemetry from Elasticsearch and Prometheus (FEDOPS_CONTROL, FEDOPS_ELASTICSEARCH_URL, FEDOPS_PROMETHEUS_URL).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDOPS_OBSERVABILITY_DIR=/opt/fedops/observability

RUN useradd --create-home --uid 10001 fedops

WORKDIR /opt/fedops
COPY pyproject.toml README.md ./
COPY fedops_common ./fedops_common
COPY fedops_control ./fedops_control
COPY fedops_agent ./fedops_agent
COPY fedops_dash ./fedops_dash
COPY observability ./observability
# The project itself: its pins are in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[dashboard]"

USER 10001
EXPOSE 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"]
ENTRYPOINT ["fedops-dash", "--address", "0.0.0.0", "--port", "8501"]
