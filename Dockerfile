# syntax=docker/dockerfile:1
# abtest-exporter container image.
#
#   docker build -t abtest-exporter:0.1.0 .
#   docker run -p 9470:9470 -v abtest-data:/data abtest-exporter:0.1.0
#
# Two stages: the builder installs the package and its dependencies into a virtual
# environment (numpy and scipy come as binary wheels, so no compiler is needed), and the
# final image gets only that environment on a slim Python: no pip, no build tools, no
# source tree.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/venv/bin/pip install ".[fast]" \
    && /opt/venv/bin/pip uninstall --yes pip \
    && /opt/venv/bin/abtest-exporter --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="abtest-exporter" \
      org.opencontainers.image.description="A/B-testing metrics exporter for Prometheus and OpenTelemetry" \
      org.opencontainers.image.licenses="Apache-2.0"
# A dedicated user with a fixed id (65532, as in distroless images), so that Kubernetes'
# runAsNonRoot can check it and the chart's fsGroup matches; it owns only /data.
RUN groupadd --system --gid 65532 abtest \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin abtest \
    && mkdir /data \
    && chown 65532:65532 /data
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /data
# The data directory: one SQLite file (abtest.sqlite3, WAL). One writer per directory.
VOLUME /data
# 9470: HTTP (metrics, API, OTLP); 4318: the optional second OTLP listener (--otlp-port).
EXPOSE 9470 4318
# For `docker run` only (Kubernetes uses the chart's probes); plain HTTP on 9470, so drop
# it (HEALTHCHECK NONE in a derived image) when serving TLS or another port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9470/-/healthy', timeout=4)"]
ENTRYPOINT ["abtest-exporter"]
CMD ["serve", "--data-dir", "/data"]
