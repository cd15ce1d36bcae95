"""The read API, mounted on the worker's HTTP app (aiohttp, the worker's own event loop and
RocksDB handle): any worker answers any grain by forwarding to the partition's owner.

Routes (README "Reading over HTTP"; ``/openapi.json`` describes them):

* ``GET /grains/{grain_type}/{grain_key}``: the grain with its freshness. Served here when
  this worker serves the grain's partition, else forwarded to the active owner (then, with
  ``?stale=ok``, to the standbys). ``?min_sequence=N&wait_ms=T`` waits for the replica to
  hold at least sequence N (504 when it does not within T ms).
* ``GET /grains/{grain_type}?prefix=&limit=&cursor=``: a paged scan over every partition
  (one request per owner, merged in key order; the cursor is the last key returned, so it
  stays valid across rebalances).
* ``GET /partitions``: who serves each partition, with checkpoints and lag per replica.

Every error is JSON ``{"error": "<one line>"}``; 503 and 504 carry ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from stream_replica.contract import GrainId
from stream_replica.fold import grain_json
from stream_replica.grain_waits import GrainWaits
from stream_replica.http_metrics import ForwardCounter
from stream_replica.membership import GroupAssignment
from stream_replica.metrics import Metrics
from stream_replica.openapi import openapi
from stream_replica.query_request import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_WAIT_MS,
    ReadError,
    bearer_matches,
    grain_of,
    grain_type_of,
    header_value,
    int_param,
    json_body,
    partitions_param,
    stale_param,
)
from stream_replica.routing import (
    FORWARD_TIMEOUT_S,
    OwnershipMap,
    ReplicaRef,
    Unresponsive,
    decode_cursor,
    encode_cursor,
    partition_for,
)
from stream_replica.status import PartitionRow
from stream_replica.store import ReplicaStore

log = logging.getLogger("stream_replica.query")

FORWARDED_HEADER: Final = "X-Stream-Replica-Forwarded-By"
FRESH_HEADER: Final = "X-Stream-Replica-Fresh-Only"
# With ?stale=ok a read keeps trying the replicas this long (a rebalance moves them).
STALE_RETRY_S: Final = 5.0
# A read of a grain the copy does not hold, while the copy is a few records behind its end
# offset, waits this long at most for the copy to read up to the end offset of when the read
# arrived (under a steady stream a partition is seldom caught up at the instant a read comes:
# at 1,000 records/s, 16 % of reads of absent grains were 503s, a second each in the client).
ABSENT_WAIT_S: Final = 1.0
_NO_QUERY: Final[Mapping[str, str]] = {}
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
PROTECTED_PREFIXES: Final = ("/grains", "/partitions")


class QueryView(Protocol):
    """What the read API needs from the worker (ReplicaWorker has it)."""

    topic: str
    store: ReplicaStore
    grain_waits: GrainWaits  # a read with ?min_sequence waits here for its grain's write

    def partition_rows(self) -> dict[int, PartitionRow]: ...

    def group_assignment(self) -> GroupAssignment | None: ...


@dataclass
class QueryConfig:
    endpoint: str | None = None  # this worker's advertised host:port (set once listening)
    token: str | None = None
    scheme: str = "http"
    client_ssl: ssl.SSLContext | None = None
    forward_timeout_s: float = FORWARD_TIMEOUT_S
    # --end-offset-max-age-s: an end offset confirmed longer ago says nothing of the log now
    end_offset_max_age_s: float = 15.0
    # Tests only: a fixed partition count (else the store's, asked on every read)
    _partitions: int | None = field(default=None, repr=False)


def ownership_map(assignment: GroupAssignment | None, topic: str) -> OwnershipMap:
    if assignment is None:
        return OwnershipMap()
    replicas: dict[int, list[ReplicaRef]] = {}
    for tp, owners in assignment.owners.items():
        if tp.topic != topic:
            continue
        replicas[tp.partition] = [
            ReplicaRef(owners.active.name, owners.active.endpoint, "active"),
            *(ReplicaRef(s.name, s.endpoint, "standby") for s in owners.standbys),
        ]
    return OwnershipMap(assignment.epoch, replicas)


def state_json(grain: GrainId, state: Any) -> dict[str, Any]:
    return grain_json(grain, state)


def _query(request: web.Request) -> Mapping[str, str]:
    """The query parameters; a plain GET has none and skips building the MultiDict."""
    return request.query if request.query_string else _NO_QUERY


class _Behind(ReadError):
    """A grain the copy does not hold while it is behind an end offset the broker confirmed
    lately: it may be reading it now, so the read waits a little for the copy (a 503 when
    it does not catch up in time)."""


def _rebuilding(row: PartitionRow) -> bool:
    """Not caught up with the log since it was assigned here (or its end not known yet)."""
    return row.end_offset is None or row.rebuild_remaining > 0


def add_query_routes(
    app: web.Application, view: QueryView, config: QueryConfig, metrics: Metrics | None = None
) -> None:
    """The read routes on ``app``; ``metrics``: where forwards are counted (by outcome)."""
    forwards = ForwardCounter(metrics)
    session_holder: dict[str, aiohttp.ClientSession] = {}
    timeouts: dict[float, aiohttp.ClientTimeout] = {}
    # The routing table of the last assignment seen (rebuilt only when the assignment object
    # changes, i.e. once per rebalance, not once per forwarded read).
    routing: list[tuple[GroupAssignment | None, OwnershipMap]] = [(None, OwnershipMap())]
    unresponsive = Unresponsive()

    def current_owners() -> OwnershipMap:
        assignment = view.group_assignment()
        seen, owners = routing[0]
        if assignment is not seen:
            owners = ownership_map(assignment, view.topic)
            routing[0] = (assignment, owners)
        return owners

    async def open_session(_: web.Application) -> None:
        connector = aiohttp.TCPConnector(ssl=config.client_ssl or False, limit=256)
        session_holder["s"] = aiohttp.ClientSession(connector=connector)

    async def close_session(_: web.Application) -> None:
        session = session_holder.pop("s", None)
        if session is not None:
            await session.close()

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if (
            config.token is not None
            and path not in OPEN_PATHS
            and path.startswith(PROTECTED_PREFIXES)
            and not bearer_matches(request.headers.get("Authorization", ""), config.token)
        ):
            return web.json_response(
                {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            return await handler(request)
        except ReadError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # its own headers but the body's (a 405's Allow: RFC 9110 requires it)
            kept = {
                k: v
                for k, v in exc.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            return web.json_response(
                {"error": f"{exc.reason}: {request.method} {request.path}"},
                status=exc.status,
                headers=kept,
            )

    app.middlewares.append(guard)

    def partition_count() -> int:
        # Asked on every read (the writer keeps its topic's identity in memory): a topic
        # given more partitions while the worker runs moves grains, and a read routed by
        # the count the worker started with goes to a partition that no longer gets them.
        if config._partitions is not None:
            return config._partitions
        identity = view.store.topic_identity()
        if identity is None:
            raise ReadError(503, "this worker has not reached the topic yet", retry=True)
        return identity.partitions

    def forward_headers(request: web.Request) -> dict[str, str]:
        headers = {FORWARDED_HEADER: config.endpoint or "?"}
        if config.token is not None:
            headers["Authorization"] = f"Bearer {config.token}"
        accept = request.headers.get("Accept")
        if accept:
            headers["Accept"] = accept
        return headers

    async def call(
        route: str, endpoint: str, path_qs: str, headers: Mapping[str, str], timeout_s: float
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """One GET on the pooled keep-alive session (no connect per read), counted under
        ``route``. ``path_qs`` is already percent-encoded (a request's own, or built by
        yarl): not parsed again."""
        session = session_holder["s"]
        url = URL(f"{config.scheme}://{endpoint}{path_qs}", encoded=True)
        timeout = timeouts.get(timeout_s)
        if timeout is None:
            timeout = timeouts.setdefault(timeout_s, aiohttp.ClientTimeout(total=timeout_s))
        try:
            async with session.get(url, headers=headers, timeout=timeout) as response:
                body = await response.read()
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors (and ClientErrors)
            forwards.count(route, "timeout")
            raise
        except (aiohttp.ClientError, OSError):
            forwards.count(route, "unreachable")
            raise
        forwards.count(route, "unavailable" if response.status == 503 else "answered")
        return response.status, body, response.headers

    def confirmed_lately(row: PartitionRow) -> bool:
        age = row.end_offset_age_s
        return age is not None and age <= config.end_offset_max_age_s

    def read_past(row: PartitionRow, arrived_end: int | None) -> bool:
        """Whether the copy has read up to ``arrived_end`` (the end offset when the request
        came), with an end offset confirmed lately: what it lacks, the log lacked then."""
        return arrived_end is not None and row.checkpoint >= arrived_end and confirmed_lately(row)

    def worth_waiting(row: PartitionRow | None, arrived_end: int | None) -> bool:
        """A copy a few records behind an end offset confirmed lately (it reads them now), or
        one whose end offset no fetch has confirmed yet (just assigned: one will at once).
        Not one whose end offset was confirmed long ago (Kafka unreachable)."""
        return (
            row is not None
            and not _rebuilding(row)
            and not row.caught_up
            and not read_past(row, arrived_end)
            and ((row.lag > 0 and confirmed_lately(row)) or row.end_offset_age_s is None)
        )

    def behind(row: PartitionRow) -> str:
        """How far behind the copy is, for a 503."""
        if row.end_offset_age_s is None:
            why = " (no fetch has confirmed its end offset yet)"
        elif not confirmed_lately(row):
            why = f" (its end offset was confirmed {row.end_offset_age_s:.0f} s ago)"
        else:
            why = ""
        return f"{row.lag} records behind on {config.endpoint}{why}"

    def serve_local(
        request: web.Request,
        grain: GrainId,
        partition: int,
        row: PartitionRow,
        stale: bool,
        min_sequence: int,
        arrived_end: int | None = None,
    ) -> web.Response | None:
        """The answer from this store, or None when min_sequence is not reached yet.
        ``arrived_end``: the partition's end offset when the read arrived; a copy that has
        read up to it (with an end offset confirmed lately) says a grain it lacks is absent,
        caught up or not since (raises :class:`_Behind` while it has not)."""
        if _rebuilding(row) and not stale:
            left = f" ({row.rebuild_remaining} records left)" if row.rebuild_remaining else ""
            raise ReadError(
                503,
                f"partition {partition} is being rebuilt on {config.endpoint}{left}; retry, or "
                "pass ?stale=ok for a possibly stale answer",
                retry=True,
            )
        state = view.store.get(grain)
        if min_sequence and (state is None or state.sequence < min_sequence):
            return None
        fresh = {
            "served_by": config.endpoint,
            "role": row.role,
            "replica_lag": row.lag,
            "caught_up": row.caught_up,
            "end_offset_age_s": _age(row),
        }
        if state is None:
            if not row.caught_up and not stale and not read_past(row, arrived_end):
                # It may catch up in a moment (the caller waits for it), unless Kafka has not
                # confirmed an end offset for long.
                refusal = _Behind if worth_waiting(row, arrived_end) else ReadError
                raise refusal(
                    503,
                    f"grain {grain[0]}/{grain[1]} not found, but partition {partition} is "
                    f"{behind(row)}; retry, or pass ?stale=ok",
                    retry=True,
                )
            raise ReadError(404, f"grain {grain[0]}/{grain[1]} not found", extra=fresh)
        if "application/octet-stream" in request.headers.get("Accept", ""):
            headers = {
                "X-Grain-Type": header_value(grain[0]),
                "X-Grain-Key": header_value(grain[1]),
                "X-Grain-Sequence": str(state.sequence),
                "X-Grain-Timestamp-Millis": str(state.timestamp_millis),
                "X-Grain-Source-Cluster": header_value(state.source_cluster),
                "X-Grain-Partition": str(state.partition),
                "X-Grain-Offset": str(state.offset),
                "X-Served-By": str(config.endpoint),
                "X-Replica-Role": row.role,
                "X-Replica-Lag": str(row.lag),
                "X-Caught-Up": "true" if row.caught_up else "false",
            }
            age = _age(row)
            if age is not None:
                headers["X-Replica-End-Offset-Age-S"] = str(age)
            if state.shadowed:  # as the JSON answer's shadowed_by_offset: may be stale
                headers["X-Grain-Shadowed-By-Offset"] = str(state.shadowed_by)
            return web.Response(
                body=state.payload, headers=headers, content_type="application/octet-stream"
            )
        return json_body(state_json(grain, state) | fresh)

    async def forward(
        request: web.Request, partition: int, stale: bool, wait_ms: int, fresh_only: bool
    ) -> web.Response:
        """The first answer of the partition's replicas (active first, then the standbys when
        ``stale``) other than 503; raises the last refusal when none answered."""
        owners = current_owners()
        candidates = unresponsive.last(
            [
                r
                for r in owners.endpoints(partition, allow_standby=stale)
                if r.endpoint != config.endpoint
            ]
        )
        if not candidates:
            raise ReadError(
                503,
                f"no worker serves partition {partition} with an endpoint right now "
                "(the group is rebalancing or the owner is down); retry"
                + ("" if stale else ", or pass ?stale=ok to read a standby"),
                retry=True,
            )
        last: ReadError | None = None
        for replica in candidates:
            assert replica.endpoint is not None
            try:
                status, body, headers = await call(
                    "grain",
                    replica.endpoint,
                    request.path_qs,
                    forward_headers(request) | ({FRESH_HEADER: "1"} if fresh_only else {}),
                    config.forward_timeout_s + wait_ms / 1000,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                unresponsive.failed(replica.endpoint)
                last = ReadError(
                    503,
                    f"the {replica.role} replica of partition {partition} at "
                    f"{replica.endpoint} did not answer ({type(exc).__name__}); retry"
                    + ("" if stale else ", or pass ?stale=ok to read a standby"),
                    retry=True,
                )
                continue
            unresponsive.answered(replica.endpoint)
            if status == 503:
                last = ReadError(503, _message(body), retry=True)
                continue
            if status == 401 or (status >= 500 and status != 504):
                # Not the caller's fault: a peer refusing this worker's token (the workers'
                # --http-token-file differ) told the caller its own token was wrong.
                last = _upstream_error(
                    f"the {replica.role} replica of partition {partition} at {replica.endpoint}",
                    status,
                    body,
                )
                continue
            keep = {
                k: v
                for k, v in headers.items()
                if k.startswith(("X-Grain-", "X-Served-", "X-Replica-", "X-Caught-"))
                or k in ("Retry-After", "WWW-Authenticate")
            }
            return web.Response(
                body=body,
                status=status,
                headers=keep,
                content_type=headers.get("Content-Type", "application/json").split(";")[0],
            )
        assert last is not None
        raise last

    async def get_grain(request: web.Request) -> web.Response:
        grain = grain_of(request.match_info)
        query = _query(request)
        stale = stale_param(query)
        wait_ms = int_param(query, "wait_ms", 0, 0, MAX_WAIT_MS)
        min_sequence = int_param(query, "min_sequence", 0, 0, 2**64 - 1)
        partition = partition_for(grain, partition_count())  # once: murmur2 is pure Python
        forwarded = FORWARDED_HEADER in request.headers
        started = time.monotonic()
        wait_deadline = started + wait_ms / 1000
        retry_deadline = started + (STALE_RETRY_S if stale and not forwarded else 0.0)
        # Set by a worker forwarding a ?stale=ok read on its first pass: answer only from a
        # copy that is not being rebuilt (a rebuilding copy is the last resort).
        fresh_only = FRESH_HEADER in request.headers
        absent_deadline = started + ABSENT_WAIT_S
        arrived_end: int | None = None  # the local copy's end offset when the read arrived
        while True:
            row = view.partition_rows().get(partition)
            # A standby copy here answers only callers that accept staleness (a forward whose
            # sender chose this standby carries the caller's ?stale=ok); others go to the
            # active owner.
            here = row is not None and (row.role == "active" or stale)
            if row is not None and here and not (stale and not forwarded and _rebuilding(row)):
                if arrived_end is None and confirmed_lately(row):
                    arrived_end = row.end_offset
                try:
                    answer = serve_local(
                        request,
                        grain,
                        partition,
                        row,
                        stale and not fresh_only,
                        min_sequence,
                        arrived_end,
                    )
                except _Behind:
                    if time.monotonic() >= absent_deadline:
                        raise
                    await view.grain_waits.wait_any(absent_deadline - time.monotonic())
                    continue
                if answer is not None:
                    return answer
                if time.monotonic() >= wait_deadline:
                    state = view.store.get(grain)
                    raise ReadError(
                        504,
                        f"grain {grain[0]}/{grain[1]} did not reach sequence {min_sequence} "
                        f"within {wait_ms} ms on {config.endpoint}",
                        retry=True,
                        extra={"sequence": None if state is None else state.sequence},
                    )
                await view.grain_waits.wait(grain, wait_deadline - time.monotonic())
                continue
            if forwarded:  # never forward twice: the sender's map is out of date
                served = "has only a standby copy on" if row is not None else "is not served by"
                raise ReadError(
                    503,
                    f"partition {partition} {served} {config.endpoint} (ownership is changing); "
                    "retry",
                    retry=True,
                )
            try:
                return await forward(request, partition, stale, wait_ms, fresh_only=stale)
            except ReadError as exc:
                failure = exc
            if time.monotonic() >= retry_deadline:
                if stale:  # no copy that is not being rebuilt answered in time: any copy will do
                    if row is not None and here:
                        answer = serve_local(request, grain, partition, row, True, min_sequence)
                        if answer is not None:
                            return answer
                    elif row is None:
                        try:
                            return await forward(request, partition, True, wait_ms, False)
                        except ReadError as exc:
                            failure = exc
                raise failure
            await asyncio.sleep(0.1)

    async def scan(request: web.Request) -> web.Response:
        grain_type = grain_type_of(request.match_info)
        prefix = request.query.get("prefix", "")
        limit = int_param(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        cursor = request.query.get("cursor")
        try:
            after = None if not cursor else decode_cursor(cursor)
        except ValueError as exc:
            raise ReadError(400, str(exc)) from None
        stale = stale_param(request.query)
        rows: Mapping[int, PartitionRow] = view.partition_rows()
        wanted = request.query.get("partitions")
        if wanted is not None:  # a fan-out's local step
            partitions = partitions_param(wanted, partition_count())
            rows, arrived = await read_to_arrival(partitions, stale)
            items, more = local_scan(
                grain_type, prefix, after, limit, partitions, rows, stale, arrived
            )
            # the page of these partitions alone, with its cursor like any page
            return web.json_response(
                {"items": items, "more": more, "next_cursor": _cursor_after(items, more)}
            )

        async def fetch(endpoint: str, parts: list[int]) -> tuple[list[dict[str, Any]], bool] | str:
            """The items of ``parts`` from ``endpoint``, or why it could not answer (down,
            or 503: another replica may). Other refusals (401, 400) end the scan."""
            query = {"prefix": prefix, "limit": str(limit), "partitions": ",".join(map(str, parts))}
            if cursor:
                query["cursor"] = cursor
            if stale:
                query["stale"] = "ok"
            path = request.app.router["scan"].url_for(grain_type=grain_type).with_query(query)
            try:
                status, body, _ = await call(
                    "scan", endpoint, str(path), forward_headers(request), config.forward_timeout_s
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                unresponsive.failed(endpoint)
                return f"did not answer ({type(exc).__name__})"
            unresponsive.answered(endpoint)
            if status == 503:
                return _message(body)
            if status != 200:  # 401: the peer refuses this worker's token, not the caller's
                raise _upstream_error(f"{endpoint} (partitions {parts})", status, body)
            got = json.loads(body)
            found: list[dict[str, Any]] = got["items"]
            # a worker of an older version does not say whether more follow
            return found, bool(got.get("more", len(found) >= limit))

        count = partition_count()
        # A standby copy here serves the page only to a caller accepting staleness (as a get).
        local = {p for p, r in rows.items() if p < count and (r.role == "active" or stale)}
        owners = current_owners()
        # partition -> the replicas still to try, in order: the active owner, then (?stale=ok)
        # the standbys. A replica that is down or answers 503 passes its partitions on.
        pending: dict[int, list[str]] = {}
        for p in range(count):
            if p not in local:
                pending[p] = [
                    r.endpoint
                    for r in unresponsive.last(owners.endpoints(p, allow_standby=stale))
                    if r.endpoint and r.endpoint != config.endpoint
                ]
        items = []
        more = False
        if local:
            rows, arrived = await read_to_arrival(local, stale)
            items, more = local_scan(grain_type, prefix, after, limit, local, rows, stale, arrived)
        failed: dict[int, str] = {}  # partition -> why no replica answered
        while pending:
            plan: dict[str, list[int]] = {}
            for p, endpoints in sorted(pending.items()):
                if endpoints:
                    plan.setdefault(endpoints[0], []).append(p)
                else:
                    failed.setdefault(p, "no worker with an endpoint serves it right now")
            answers = await asyncio.gather(*(fetch(e, ps) for e, ps in plan.items()))
            retry: dict[int, list[str]] = {}
            for (endpoint, parts), answer in zip(plan.items(), answers, strict=True):
                if isinstance(answer, str):
                    for p in parts:
                        failed[p] = f"{endpoint}: {answer}"
                        retry[p] = pending[p][1:]
                    continue
                items.extend(answer[0])
                more = more or answer[1]
            pending = {p: rest for p, rest in retry.items() if rest}
            for p in pending:
                del failed[p]
        if failed:  # never a partial page presented as complete
            parts = sorted(failed)
            raise ReadError(
                503,
                f"scan of {grain_type!r}: partition{'s' if len(parts) > 1 else ''} "
                f"{', '.join(map(str, parts))} of {view.topic} could not be read "
                f"({failed[parts[0]]}); retry the page"
                + ("" if stale else ", or pass ?stale=ok to read a standby"),
                retry=True,
                extra={"partitions": parts},
            )

        items.sort(key=lambda item: str(item["grain_key"]))
        page = items[:limit]
        more = more or len(items) > limit
        return web.json_response({"items": page, "next_cursor": _cursor_after(page, more)})

    async def read_to_arrival(
        partitions: set[int], stale: bool
    ) -> tuple[Mapping[int, PartitionRow], dict[int, int | None]]:
        """The rows once each copy here of ``partitions`` that is a few records behind has
        read up to its end offset of now (ABSENT_WAIT_S at most), and those end offsets: a
        page must not miss a grain the log held when it was asked for, as a 404 must not."""
        rows = view.partition_rows()
        arrived: dict[int, int | None] = {}
        for p in partitions:
            row = rows.get(p)
            arrived[p] = row.end_offset if row is not None and confirmed_lately(row) else None
        if stale:
            return rows, arrived
        deadline = time.monotonic() + ABSENT_WAIT_S
        while time.monotonic() < deadline and any(
            worth_waiting(rows.get(p), arrived[p]) for p in partitions
        ):
            await view.grain_waits.wait_any(deadline - time.monotonic())
            rows = view.partition_rows()
        return rows, arrived

    def local_scan(
        grain_type: str,
        prefix: str,
        after: str | None,
        limit: int,
        partitions: set[int],
        rows: Mapping[int, PartitionRow],
        stale: bool,
        arrived: Mapping[int, int | None],
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` items of ``partitions`` after ``after``, and whether more follow
        (one more is looked for, so a page that ends the scan says so). Without ``stale``,
        each copy must have read up to its end offset of when the scan came (``arrived``)."""
        for p in sorted(partitions):
            row = rows.get(p)
            why = None
            if row is None:
                why = f"partition {p} is not served by {config.endpoint}"
            elif _rebuilding(row) and not stale:
                why = f"partition {p} is being rebuilt on {config.endpoint}"
            elif row.role != "active" and not stale:  # the sender's map is out of date
                why = f"partition {p} has only a standby copy on {config.endpoint}"
            elif not stale and not row.caught_up and not read_past(row, arrived.get(p)):
                # a page from it could miss grains the log holds, as a 404 would be false
                why = f"partition {p} is {behind(row)}"
            if why is not None:
                raise ReadError(503, why, retry=True, extra={"partitions": [p]})
        items: list[dict[str, Any]] = []
        for grain_key, state in view.store.grains_of_type(grain_type, prefix, after):
            if state.partition not in partitions:
                continue
            if len(items) >= limit:
                return items, True
            row = rows[state.partition]
            items.append(
                {
                    **state_json((grain_type, grain_key), state),
                    "served_by": config.endpoint,
                    "role": row.role,
                    "replica_lag": row.lag,
                    "caught_up": row.caught_up,
                    "end_offset_age_s": _age(row),
                }
            )
        return items, False

    def local_rows() -> dict[str, Any]:
        return {
            "endpoint": config.endpoint,
            "partitions": {str(p): r.as_json() for p, r in sorted(view.partition_rows().items())},
        }

    async def partitions(request: web.Request) -> web.Response:
        if request.query.get("local") == "1":
            return web.json_response(local_rows())
        owners = current_owners()
        endpoints = sorted(
            {r.endpoint for rs in owners.replicas.values() for r in rs if r.endpoint}
        )

        async def report(endpoint: str) -> dict[str, Any] | None:
            if endpoint == config.endpoint:
                return local_rows()
            try:
                status, body, _ = await call(
                    "partitions", endpoint, "/partitions?local=1", forward_headers(request), 2.0
                )
            except (aiohttp.ClientError, TimeoutError, OSError):
                return None
            if status != 200:
                return None
            found: dict[str, Any] = json.loads(body)
            return found

        reports = dict(zip(endpoints, await asyncio.gather(*map(report, endpoints)), strict=True))
        result: dict[str, Any] = {}
        for p, replicas in sorted(owners.replicas.items()):
            entries = []
            ends = []
            for replica in replicas:
                got = reports.get(replica.endpoint or "")
                row = None if got is None else got["partitions"].get(str(p))
                entry: dict[str, Any] = {
                    "name": replica.name,
                    "endpoint": replica.endpoint,
                    "role": replica.role,
                    "reachable": got is not None,
                }
                if row is not None:
                    entry |= {k: row[k] for k in ("checkpoint", "lag", "caught_up")}
                    if row["end_offset"] is not None:
                        ends.append(row["end_offset"])
                entries.append(entry)
            result[str(p)] = {"end_offset": max(ends, default=None), "replicas": entries}
        return web.json_response(
            {
                "topic": view.topic,
                "partition_count": config._partitions or _count_or_none(view),
                "epoch": owners.epoch,
                "scheme": config.scheme,
                # clients wait longer than this for a worker (routing.client_timeout_s)
                "forward_timeout_s": config.forward_timeout_s,
                "partitions": result,
            }
        )

    async def openapi_json(_: web.Request) -> web.Response:
        return web.json_response(openapi())

    # [\s\S]: a grain key may hold any character, a line break too ("." would not match it)
    app.router.add_get(r"/grains/{grain_type}/{grain_key:[\s\S]+}", get_grain, name="grain")
    app.router.add_get("/grains/{grain_type}", scan, name="scan")
    app.router.add_get("/partitions", partitions, name="partitions")
    app.router.add_get("/openapi.json", openapi_json, name="openapi")


def _cursor_after(items: list[dict[str, Any]], more: bool) -> str | None:
    """The next page's cursor: None when the scan has no more items."""
    return encode_cursor(items[-1]["grain_key"]) if more and items else None


def _age(row: PartitionRow) -> float | None:
    """How long ago the broker confirmed the partition's end offset (ms precision)."""
    age = row.end_offset_age_s
    return None if age is None else round(age, 3)


def _count_or_none(view: QueryView) -> int | None:
    identity = view.store.topic_identity()
    return None if identity is None else identity.partitions


def _upstream_error(who: str, status: int, body: bytes) -> ReadError:
    """A 502 for a peer's refusal or failure that is not the caller's doing: a 401 means the
    workers' tokens differ (the caller's was accepted here), a 500 a failing peer."""
    why = (
        "refused this worker's token (the workers' --http-token-file differ)"
        if status == 401
        else f"answered {status}"
    )
    return ReadError(502, f"{who} {why}: {_message(body)}", retry=True)


def _message(body: bytes) -> str:
    try:
        found = json.loads(body)
        return str(found.get("error", body[:200].decode(errors="replace")))
    except ValueError:
        return body[:200].decode(errors="replace")
