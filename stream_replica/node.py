"""One worker process: the replica loop and its HTTP face (metrics, health, status page),
wired together here and nowhere else. The loop never imports the HTTP layer; the HTTP layer
only reads the loop's snapshot."""

from __future__ import annotations

import asyncio
import logging
import time

from stream_replica.errors import ConfigurationError
from stream_replica.http_app import HealthRules, HttpServer, build_app
from stream_replica.settings import WorkerSettings
from stream_replica.store import ReplicaStore
from stream_replica.worker import ReplicaWorker

log = logging.getLogger("stream_replica.node")
STORE_SIZE_INTERVAL_S = 30.0


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` = all interfaces) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--http {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def _store_bytes(store: ReplicaStore) -> int:
    return sum(p.stat().st_size for p in store.path.iterdir() if p.is_file())


async def run_node(settings: WorkerSettings, store: ReplicaStore, stop: asyncio.Event) -> None:
    worker = ReplicaWorker(settings, store, stop)
    server: HttpServer | None = None
    sizer: asyncio.Task[None] | None = None
    if settings.http:
        host, port = parse_listen(settings.http)
        rules = HealthRules(settings.health_max_poll_age_s, settings.ready_max_lag)
        server = HttpServer(build_app(worker, rules), host, port)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigurationError(
                f"--http {settings.http}: cannot listen ({exc.strerror})"
            ) from None
        log.info("HTTP on %s:%d (/metrics, /healthz, /readyz, /)", host, server.port)

        async def measure_store() -> None:
            while True:
                worker.metrics.store_bytes.set(await asyncio.to_thread(_store_bytes, store))
                await asyncio.sleep(STORE_SIZE_INTERVAL_S)

        sizer = asyncio.create_task(measure_store())
    started = time.monotonic()
    try:
        await worker.run()
    finally:
        if sizer is not None:
            sizer.cancel()
        if server is not None:
            await server.stop()
        log.debug("node ran %.0f s", time.monotonic() - started)
