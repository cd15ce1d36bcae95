"""Metrics of the worker's HTTP face: a middleware counting every answer by route name and
status and timing it by route name, and the count of forwards to other workers by outcome.

Labels stay bounded: a route's name as the app names it (``request.match_info.route.name``,
"unmatched" for a path no route matches), never the path, which holds grain keys. The
children of the labelled series are cached (a lookup per answer, not prometheus_client's
locked ``labels()``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from stream_replica.metrics import Metrics

UNMATCHED = "unmatched"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_metrics(metrics: Metrics) -> Middleware:
    """The middleware; install it first (outermost), so it sees the answers the other
    middlewares make (a 401, a JSON error)."""
    counters: dict[tuple[str, int], Any] = {}
    timers: dict[str, Any] = {}

    def record(route: str, status: int, seconds: float) -> None:
        counter = counters.get((route, status))
        if counter is None:
            counter = counters.setdefault(
                (route, status), metrics.http_requests.labels(route, str(status))
            )
        counter.inc()
        timer = timers.get(route)
        if timer is None:
            timer = timers.setdefault(route, metrics.http_seconds.labels(route))
        timer.observe(seconds)

    @web.middleware
    async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.name or UNMATCHED
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            record(route, exc.status, time.perf_counter() - started)
            raise
        except Exception:
            record(route, 500, time.perf_counter() - started)
            raise
        record(route, response.status, time.perf_counter() - started)
        return response

    return measured


class ForwardCounter:
    """Counts a worker's forwards by route and outcome (metrics.FORWARD_OUTCOMES); without
    metrics (a read API mounted alone, as tests do) it counts nothing."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, str], Any] = {}

    def count(self, route: str, outcome: str) -> None:
        if self._metrics is None:
            return
        child = self._children.get((route, outcome))
        if child is None:
            child = self._children.setdefault(
                (route, outcome), self._metrics.forwards.labels(route, outcome)
            )
        child.inc()
