"""The worker's HTTP face (aiohttp, in the worker's own event loop): ``/metrics``
(Prometheus), ``/healthz`` (the loop is alive), ``/readyz`` (every served partition caught up
within a lag), ``/status.json`` and a small live status page at ``/``.

It only reads: a :class:`WorkerView` gives it a snapshot; it never drives the loop.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from aiohttp import web

from stream_replica.http_metrics import request_metrics
from stream_replica.metrics import CONTENT_TYPE, Metrics
from stream_replica.status import NodeStatus


class WorkerView(Protocol):
    metrics: Metrics

    def status(self) -> NodeStatus: ...


@dataclass(frozen=True)
class HealthRules:
    max_poll_age_s: float = 30.0  # /healthz fails when the loop has not polled for this long
    ready_max_lag: int = 1000  # /readyz: every served partition within this many records
    # /readyz: and its end offset confirmed by the broker within this long
    end_offset_max_age_s: float = 15.0


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default names the Python and aiohttp versions to anyone who asks
    response.headers["Server"] = "stream-replica"


def build_app(view: WorkerView, rules: HealthRules) -> web.Application:
    app = web.Application()
    app.middlewares.append(request_metrics(view.metrics))  # first: it sees every answer
    app.on_response_prepare.append(_server_header)

    async def metrics(_: web.Request) -> web.Response:
        view.status()  # refreshes the per-partition gauges a scrape reads
        body = view.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        status = view.status()
        age = status.last_poll_age_s
        if age is not None and age <= rules.max_poll_age_s:
            return web.json_response({"status": "ok", "last_poll_age_s": round(age, 3)})
        if age is None and status.waiting_for_kafka is not None:
            # Alive, waiting for Kafka (retrying one it cannot reach, or the group's
            # assignment): a restart would not help (as for a worker that loses Kafka while
            # it polls, whose polls go on coming back empty).
            return web.json_response(
                {"status": "ok", "waiting_for_kafka": status.waiting_for_kafka}
            )
        if age is None:
            since = max(0.0, time.time() - status.started_at)
            reason = (
                f"no poll yet, {since:.0f} s after start: Kafka not reached or the group not "
                "joined (see the log)"
            )
        else:
            reason = f"last poll {age:.1f} s ago"
        return web.json_response(
            {"status": "unhealthy", "reason": reason, "max_poll_age_s": rules.max_poll_age_s},
            status=503,
        )

    async def readyz(_: web.Request) -> web.Response:
        status = view.status()
        if not status.assigned:
            return web.json_response(
                {"status": "not ready", "reason": "no assignment yet"}, status=503
            )
        unconfirmed = sorted(
            p
            for p, row in status.partitions.items()
            if row.end_offset_age_s is not None
            and row.end_offset_age_s > rules.end_offset_max_age_s
        )
        if unconfirmed:
            oldest = max(status.partitions[p].end_offset_age_s or 0.0 for p in unconfirmed)
            return web.json_response(
                {
                    "status": "not ready",
                    "reason": f"the broker has not confirmed the end offsets of partitions "
                    f"{unconfirmed} for {oldest:.0f} s (over {rules.end_offset_max_age_s:g} s): "
                    "Kafka unreachable? Answers may be stale",
                    "partitions": unconfirmed,
                },
                status=503,
            )
        unfetched = sorted(
            p for p, row in status.partitions.items() if row.end_offset_age_s is None
        )
        if unfetched:  # their lag is against the end listed at the assignment, if anything
            return web.json_response(
                {
                    "status": "not ready",
                    "reason": f"no fetch has confirmed the end offsets of partitions {unfetched} "
                    "yet",
                    "partitions": unfetched,
                },
                status=503,
            )
        behind = {
            str(p): row.lag
            for p, row in sorted(status.partitions.items())
            if row.end_offset is None or row.lag > rules.ready_max_lag
        }
        if behind:
            return web.json_response(
                {
                    "status": "not ready",
                    "reason": f"partitions behind by more than {rules.ready_max_lag} records",
                    "lag": behind,
                },
                status=503,
            )
        return web.json_response({"status": "ready", "partitions": len(status.partitions)})

    async def status_json(_: web.Request) -> web.Response:
        # The page's health dot follows /healthz's rule: it needs the threshold too.
        return web.json_response(
            view.status().as_json() | {"health_max_poll_age_s": rules.max_poll_age_s}
        )

    async def page(_: web.Request) -> web.Response:
        html = resources.files("stream_replica").joinpath("status.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html")

    # The names are the ``route`` label of the HTTP metrics (http_metrics.py).
    app.router.add_get("/metrics", metrics, name="metrics")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/status.json", status_json, name="status")
    app.router.add_get("/", page, name="page")
    return app


class HttpServer:
    """Runs the app on ``host:port`` inside the current event loop."""

    def __init__(
        self, app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()  # runs the app's cleanup (e.g. closes client sessions)
            raise
        # port 0: learn the one the OS chose
        for server in self._runner.addresses:
            if isinstance(server, tuple) and len(server) >= 2:
                self.port = int(server[1])
                break

    async def stop(self) -> None:
        await self._runner.cleanup()
