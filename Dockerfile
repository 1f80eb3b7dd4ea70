# Vintage: the Dagster code location, webserver and daemon in one image.
#   docker build -t vintage .
#   docker run -p 3000:3000 -v vintage-data:/var/lib/vintage vintage
# The warehouse, the demo data and the Dagster instance live in the volume /var/lib/vintage.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/vintage/.venv \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    PATH=/opt/vintage/.venv/bin:$PATH \
    DAGSTER_HOME=/var/lib/vintage/dagster_home \
    VINTAGE_WAREHOUSE=/var/lib/vintage/warehouse

RUN pip install --no-cache-dir uv==0.13.9 \
 && useradd --create-home --uid 10001 vintage \
 && mkdir -p /var/lib/vintage && chown vintage:vintage /var/lib/vintage

WORKDIR /opt/vintage
# Dependencies first, from the lock file, so code changes reuse this layer.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --extra postgres --no-install-project
COPY ml_assets ./ml_assets
COPY resources ./resources
COPY sql ./sql
COPY config ./config
COPY docker ./docker
COPY workspace.yaml ./
RUN uv sync --frozen --no-dev --extra postgres

USER vintage
# Relative paths of config/vintage.yaml (the demo folder) resolve inside the volume.
WORKDIR /var/lib/vintage
VOLUME ["/var/lib/vintage"]
EXPOSE 3000
# `vintage ui` is what `make dev` runs: webserver and daemon; inside the container it must
# listen on all interfaces for the published port to reach it.
CMD ["vintage", "ui", "--host", "0.0.0.0", "--port", "3000"]
