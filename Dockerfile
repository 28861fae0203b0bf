# One image for every MarketPrism component; the compose file picks the sub-command per service.
# The project is installed in editable mode from /app so the package finds topics/ and schemas/ beside it.
FROM python:3.11-slim
RUN pip install --no-cache-dir uv && useradd --create-home --uid 10001 marketprism
WORKDIR /app
COPY pyproject.toml README.md ./
COPY topics ./topics
COPY schemas ./schemas
COPY pipeline ./pipeline
RUN uv venv /opt/venv && uv pip install --python /opt/venv/bin/python --no-cache -e . \
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
