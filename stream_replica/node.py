"""One worker process: the replica loop and its HTTP face (metrics, health, status page),
wired together here and nowhere else. The loop never imports the HTTP layer; the HTTP layer
only reads the loop's snapshot."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from pathlib import Path

from stream_replica.errors import ConfigurationError
from stream_replica.http_app import HealthRules, HttpServer, build_app
from stream_replica.query_app import QueryConfig, add_query_routes
from stream_replica.settings import WorkerSettings
from stream_replica.store import ReplicaStore
from stream_replica.worker import ReplicaWorker

log = logging.getLogger("stream_replica.node")
STORE_SIZE_INTERVAL_S = 10.0  # a walk of the directory: a few hundred files at most


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` = all interfaces) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--http {text!r}: expected HOST:PORT, e.g. 0.0.0.0:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def _store_bytes(store: ReplicaStore) -> int:
    return sum(p.stat().st_size for p in store.path.iterdir() if p.is_file())


def advertised(settings: WorkerSettings, host: str, port: int) -> str:
    """``--advertise``, else the listening address (0.0.0.0/::: this machine's host name)."""
    if settings.advertise:
        name, sep, number = settings.advertise.rpartition(":")
        if not name or not sep or not number.isdigit() or not 0 < int(number) <= 65535:
            raise ConfigurationError(
                f"--advertise {settings.advertise!r}: expected HOST:PORT, e.g. worker-1:8080"
            )
        return settings.advertise
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_token(path: Path) -> str:
    try:
        token = path.read_text("utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"--http-token-file {path}: cannot read it ({exc})") from None
    except UnicodeDecodeError:  # (its text quotes a byte of the token)
        raise ConfigurationError(f"--http-token-file {path}: not UTF-8 text") from None
    if not token:
        raise ConfigurationError(f"--http-token-file {path}: the file is empty")
    return token


class _KeyEncryptedError(Exception):
    """--http-tls-key needs a password (there is no option for one)."""


def _no_key_password() -> str:
    raise _KeyEncryptedError


def tls_contexts(settings: WorkerSettings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server context, client context for forwarding); (None, None) without TLS."""
    cert, key = settings.http_tls_cert, settings.http_tls_key
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        raise ConfigurationError("--http-tls-cert and --http-tls-key go together")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A password callback, or OpenSSL asks for an encrypted key's on the terminal (a
        # worker started from one waited there; without one: "[Errno 22] Invalid argument").
        server.load_cert_chain(cert, key, _no_key_password)
    except _KeyEncryptedError:
        raise ConfigurationError(
            f"--http-tls-key {key} is encrypted: give the key unencrypted (PEM), readable "
            "by this process only"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"--http-tls-cert {cert} / --http-tls-key {key}: cannot load them ({exc})"
        ) from None
    try:
        client = ssl.create_default_context(
            cafile=None if settings.http_tls_cafile is None else str(settings.http_tls_cafile)
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"--http-tls-cafile {settings.http_tls_cafile}: cannot load it ({exc})"
        ) from None
    return server, client


async def run_node(settings: WorkerSettings, store: ReplicaStore, stop: asyncio.Event) -> None:
    worker = ReplicaWorker(settings, store, stop)
    server: HttpServer | None = None
    sizer: asyncio.Task[None] | None = None
    if settings.http:
        host, port = parse_listen(settings.http)
        rules = HealthRules(
            settings.health_max_poll_age_s, settings.ready_max_lag, settings.end_offset_max_age_s
        )
        server_ssl, client_ssl = tls_contexts(settings)
        query = QueryConfig(
            token=None
            if settings.http_token_file is None
            else read_token(settings.http_token_file),
            scheme="https" if server_ssl is not None else "http",
            client_ssl=client_ssl,
            forward_timeout_s=settings.read_forward_timeout_s,
            end_offset_max_age_s=settings.end_offset_max_age_s,
        )
        app = build_app(worker, rules)
        add_query_routes(app, worker, query, worker.metrics)
        server = HttpServer(app, host, port, server_ssl)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigurationError(
                f"--http {settings.http}: cannot listen ({exc.strerror})"
            ) from None
        query.endpoint = advertised(settings, host, server.port)
        worker.ownership.endpoint = query.endpoint
        log.info(
            "HTTP on %s:%d (%s; /grains, /partitions, /openapi.json, /metrics, /healthz, "
            "/readyz, /), advertised as %s",
            host,
            server.port,
            query.scheme,
            query.endpoint,
        )

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
