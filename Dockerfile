# syntax=docker/dockerfile:1
# stream-replica worker image: `docker build -t stream-replica .`
# State (RocksDB replicas) lives under /data; give each container its own volume there.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
WORKDIR /src
COPY . .
RUN pip install .

FROM python:3.11-slim
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /data --no-create-home --shell /usr/sbin/nologin app \
 && mkdir -p /data \
 && chown app:app /data
USER app
WORKDIR /data
# Declared after the chown so a fresh (anonymous or named) volume inherits app ownership.
VOLUME ["/data"]
# Exec form: stream-replica runs as PID 1 and receives SIGTERM from `docker stop` directly.
ENTRYPOINT ["stream-replica"]
CMD ["--help"]
