# One image for every MarketPrism component; the compose file picks the sub-command per service.
# It installs exactly what uv.lock says (runtime packages only, no test tools). The project is installed
# in editable mode from /app so the package finds topics/ and schemas/ beside it.
FROM python:3.11-slim
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}" && useradd --create-home --uid 10001 marketprism
WORKDIR /app
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project --no-cache
COPY topics ./topics
COPY schemas ./schemas
COPY pipeline ./pipeline
RUN uv sync --locked --no-dev --no-cache \
    && mkdir -p /var/lib/marketprism && chown marketprism /var/lib/marketprism
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MARKETPRISM_STATE_DIR=/var/lib/marketprism \
    MARKETPRISM_METRICS_PORT=9108
USER marketprism
EXPOSE 9108
HEALTHCHECK --interval=15s --timeout=5s --retries=4 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4)"
ENTRYPOINT ["marketprism"]
