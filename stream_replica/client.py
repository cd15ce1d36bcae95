"""A Python client of the workers' read API: learns the ownership map (``/partitions``),
sends each read straight to the partition's owner, follows ownership changes, and retries on
another worker when one is down or answers 503.

    with ReplicaClient(["http://10.0.0.1:8080", "http://10.0.0.2:8080"]) as client:
        grain = client.get("account", "42")          # None: not found
    async with AsyncReplicaClient(endpoints) as client:
        grain = await client.get("account", "42", min_sequence=7, wait_ms=2000)
"""

from __future__ import annotations

import asyncio
import base64
import random
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx

from stream_replica.client_aio import AioGetter, Reply, TransportError, describe
from stream_replica.contract import ContractError, check_grain_text
from stream_replica.routing import FORWARD_TIMEOUT_S, client_timeout_s, partition_for

# An endpoint that refused a connection or did not answer in time is tried last for this
# long: longer than a request's timeout, or a hung one is tried first again every round.
DOWN_FOR_S: Final = 10.0


class ReplicaClientError(Exception):
    """A read the workers refused for good (bad request, wrong token) or could not answer
    within the client's deadline; the message is the worker's one line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SequenceTimeout(ReplicaClientError):
    """``min_sequence`` was not reached within ``wait_ms`` (HTTP 504); ``sequence``: the one
    the replica held then (None: no state)."""

    def __init__(self, message: str, status: int = 504, sequence: int | None = None) -> None:
        super().__init__(message, status)
        self.sequence = sequence


@dataclass(frozen=True, slots=True)
class GrainRead:
    grain_type: str
    grain_key: str
    sequence: int
    timestamp_millis: int
    source_cluster: str
    payload: bytes
    partition: int
    offset: int
    served_by: str
    role: str
    replica_lag: int
    caught_up: bool
    # The offset of a later record on the grain's key that the fold refused (a Delta, an
    # invalid value): the state may be stale (README, "Shadowed grains"). None: not shadowed.
    shadowed_by_offset: int | None = None
    # Seconds since the broker confirmed the end offset that replica_lag and caught_up are
    # measured against (None: not confirmed yet).
    end_offset_age_s: float | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GrainRead:
        return cls(
            obj["grain_type"],
            obj["grain_key"],
            obj["sequence"],
            obj["timestamp_millis"],
            obj["source_cluster"],
            base64.b64decode(obj["payload"]),
            obj["partition"],
            obj["offset"],
            obj["served_by"],
            obj["role"],
            obj["replica_lag"],
            obj["caught_up"],
            obj.get("shadowed_by_offset"),
            obj.get("end_offset_age_s"),
        )


def _base(endpoint: str, scheme: str) -> str:
    return endpoint.rstrip("/") if "://" in endpoint else f"{scheme}://{endpoint}"


class _Router:
    """The client's view of the group (no I/O): known workers, the ownership map, and the
    order to try workers in for a grain."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("ReplicaClient needs at least one worker endpoint")
        self.scheme = "https" if endpoints[0].startswith("https://") else "http"
        self.bases = [_base(e, self.scheme) for e in endpoints]
        self.partitions: int | None = None
        self.replicas: dict[int, list[tuple[str, str]]] = {}  # partition -> [(base, role)]
        self.down: dict[str, float] = {}
        self.stale_map = True
        # The workers' --read-forward-timeout-s, as /partitions reports it.
        self.forward_timeout_s = FORWARD_TIMEOUT_S

    def learn(self, obj: dict[str, Any]) -> None:
        self.partitions = obj.get("partition_count") or self.partitions
        self.forward_timeout_s = float(obj.get("forward_timeout_s") or self.forward_timeout_s)
        replicas: dict[int, list[tuple[str, str]]] = {}
        for p, entry in obj.get("partitions", {}).items():
            replicas[int(p)] = [
                (_base(r["endpoint"], self.scheme), r["role"])
                for r in entry["replicas"]
                if r.get("endpoint")
            ]
        self.replicas = replicas
        for rs in replicas.values():
            for base, _ in rs:
                if base not in self.bases:
                    self.bases.append(base)
        self.stale_map = False

    def order(self, grain: tuple[str, str], stale: bool) -> list[str]:
        """Owner first (then standbys with ``stale``), then every other worker (any worker
        forwards); endpoints seen down recently go last."""
        first: list[str] = []
        if self.partitions:
            partition = partition_for(grain, self.partitions)
            first = [b for b, role in self.replicas.get(partition, []) if role == "active" or stale]
        rest = [b for b in self.bases if b not in first]
        random.shuffle(rest)
        now = time.monotonic()
        ordered = first + rest
        return sorted(ordered, key=lambda b: self.down.get(b, 0.0) > now)

    def owner(self, grain: tuple[str, str]) -> str | None:
        if not self.partitions:
            return None
        for base, role in self.replicas.get(partition_for(grain, self.partitions), []):
            if role == "active":
                return base
        return None

    def learned(self, base: str, response: _Answer) -> bool:
        """Learn the map from a 200 of ``/partitions``; one that holds no map (something
        else answers at ``base``) teaches nothing, and ``base`` is tried last for a while."""
        body = _body(response)
        try:
            if body is None:
                raise ValueError("not a JSON object")
            self.learn(body)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.mark_down(base)
            return False
        return True

    def mark_down(self, base: str) -> None:
        self.down[base] = time.monotonic() + DOWN_FOR_S
        self.stale_map = True

    def refresh_order(self) -> list[str]:
        now = time.monotonic()
        return sorted(self.bases, key=lambda b: self.down.get(b, 0.0) > now)


def _checked(grain_type: str, grain_key: str) -> tuple[str, str]:
    """The grain, or the 400 a worker would answer (an empty type or key, a '/' in the type:
    before routing, which cannot place it)."""
    try:
        return check_grain_text(grain_type, grain_key)
    except ContractError as exc:
        raise ReplicaClientError(str(exc), 400) from None


def _segment(text: str) -> str:
    """One path segment. A key of "." or ".." is a dot segment, which HTTP clients remove
    from the path (RFC 3986): its dots go percent-encoded (the server decodes them)."""
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if text in (".", "..") else quoted


def _path(grain_type: str, grain_key: str) -> str:
    return f"/grains/{_segment(grain_type)}/{_segment(grain_key)}"


def _within(deadline: float | None, wanted_s: float) -> float | None:
    """A request's timeout: what it wants, or what is left of the read's deadline (None: no
    deadline); None when nothing is left (a request would outlast the deadline the caller
    was promised)."""
    if deadline is None:
        return wanted_s
    left = deadline - time.monotonic()
    return None if left <= 0 else min(wanted_s, left)


def _read_deadline_s(deadline_s: float, wait_ms: int | None) -> float:
    """How long one read may take: ``deadline_s`` of retries on top of the ``wait_ms`` the
    caller asked a worker to wait for its sequence (a wait longer than the deadline was cut
    short and reported as "no answer", status None, from healthy workers)."""
    return deadline_s + (wait_ms or 0) / 1000


def _params(stale: bool, min_sequence: int | None, wait_ms: int | None) -> dict[str, str]:
    params = {}
    if stale:
        params["stale"] = "ok"
    if min_sequence is not None:
        params["min_sequence"] = str(min_sequence)
    if wait_ms is not None:
        params["wait_ms"] = str(wait_ms)
    return params


class _Answer(Protocol):
    """What both clients' responses offer (httpx.Response, client_aio.Reply)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def _body(response: _Answer) -> dict[str, Any] | None:
    """The answer's JSON object, or None when it is not one."""
    try:
        found = response.json()
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _error_line(response: _Answer) -> str:
    body = _body(response)
    if body is not None and "error" in body:
        return str(body["error"])
    return response.text[:200].strip() or f"HTTP {response.status_code}"


def _retry_after(response: _Answer) -> float:
    try:
        return min(1.0, max(0.05, float(response.headers.get("Retry-After", "0.2"))))
    except ValueError:
        return 0.2


# An answer no worker gives: something else answers at that address (another service, a proxy
# in front of a worker that is gone). Its 404 is not "absent", its 200 not a grain.
_NOT_A_WORKER: Final = "not an answer of a stream-replica worker"


class _Outcome:
    """What one answer means: done (value), give up (error), retry after a pause, or ask
    the next worker now (``elsewhere``: why this one's answer is of no use)."""

    def __init__(
        self,
        done: bool,
        value: GrainRead | None = None,
        pause: float = 0.0,
        elsewhere: str | None = None,
    ) -> None:
        self.done = done
        self.value = value
        self.pause = pause
        self.elsewhere = elsewhere


def _judge(router: _Router, grain: tuple[str, str], base: str, response: _Answer) -> _Outcome:
    status = response.status_code
    body = _body(response)
    if status == 200:
        try:
            read = GrainRead.from_json(body or {})
        except (KeyError, TypeError, ValueError):
            return _Outcome(False, elsewhere=f"200 with no grain in it ({_NOT_A_WORKER})")
        if _base(read.served_by, router.scheme) != router.owner(grain) and read.role == "active":
            router.stale_map = True  # it moved: learn the new owner before the next read
        return _Outcome(True, read)
    if status == 404:
        # A worker's "not found" names the copy that answered: only that one means absent.
        if body is not None and "served_by" in body:
            return _Outcome(True, None)
        return _Outcome(False, elsewhere=f"404 {_error_line(response)!r} ({_NOT_A_WORKER})")
    if status == 504:
        if body is not None and "sequence" in body:  # a worker's: the sequence it holds
            sequence = body["sequence"]
            raise SequenceTimeout(
                _error_line(response), status, sequence if isinstance(sequence, int) else None
            )
        return _Outcome(False, elsewhere=f"504 {_error_line(response)!r} ({_NOT_A_WORKER})")
    if status == 503:
        router.stale_map = True
        return _Outcome(False, pause=_retry_after(response))
    if status >= 500:  # this worker (or what stands in front of it) fails: another may not
        return _Outcome(False, elsewhere=f"{status} {_error_line(response)!r}")
    raise ReplicaClientError(f"{base}: {_error_line(response)}", status)


class _Last:
    """What a read's last attempt ran into, for the error raised at its deadline: the
    worker's line and status (503), or no status when the last worker did not answer."""

    def __init__(self) -> None:
        self.line = "no worker answered"
        self.status: int | None = None

    def refused(self, base: str, response: _Answer) -> None:
        self.line, self.status = f"{base}: {_error_line(response)}", response.status_code

    def useless(self, base: str, status: int, why: str) -> None:
        """An answer of no use (a failing worker, or not a worker): the next one is asked."""
        self.line, self.status = f"{base}: answered {why}", status

    def unreachable(self, base: str, why: str) -> None:
        self.line, self.status = f"{base}: {why}", None

    def timed_out(self, deadline_s: float) -> ReplicaClientError:
        return ReplicaClientError(f"no answer within {deadline_s:.0f} s ({self.line})", self.status)

    def out_of_time(self, base: str, why: str, deadline_s: float) -> ReplicaClientError:
        """A request that ended with the deadline (cut short to it): not the worker's fault,
        so it is not marked down, and what an earlier attempt ran into says more."""
        if self.line == "no worker answered":
            self.unreachable(base, why)
        return self.timed_out(deadline_s)


def _page_useless(response: _Answer) -> str | None:
    """Why a scan page's answer is of no use so that the next worker is asked (a failing
    worker, or no page in a 200: not a worker); None when it is a page or a refusal."""
    status = response.status_code
    if status == 200:
        body = _body(response)
        if body is None or not isinstance(body.get("items"), list) or "next_cursor" not in body:
            return f"200 with no page in it ({_NOT_A_WORKER})"
        return None
    if status == 404:  # a worker's scan route answers any grain type (checked before)
        return f"404 {_error_line(response)!r} ({_NOT_A_WORKER})"
    if status >= 500 and status != 503:
        return f"{status} {_error_line(response)!r}"
    return None


def _any_answered(base: str, response: _Answer, last: _Last, router: _Router) -> bool:
    """Whether a scan page's answer is the one (200); a 503 means try the next worker, and
    so does a failing worker or an answer that is not a worker's (that one is tried last
    from then on); the same rules for both clients. Any other refusal (400, 401, ...) ends
    the scan."""
    useless = _page_useless(response)
    if useless is not None:
        router.mark_down(base)
        last.useless(base, response.status_code, useless)
        return False
    if response.status_code == 200:
        return True
    last.refused(base, response)
    if response.status_code != 503:
        raise ReplicaClientError(last.line, response.status_code)
    return False


def _scan_params(prefix: str, limit: int, cursor: str | None) -> dict[str, str]:
    return {"prefix": prefix, "limit": str(limit), **({"cursor": cursor} if cursor else {})}


ANY_PAUSE_S: Final = 0.2  # between rounds over every worker, when each was down or said 503


def _http_options(
    token: str | None, verify: bool | str | ssl.SSLContext
) -> tuple[dict[str, str], bool | ssl.SSLContext]:
    """What both clients send and trust: the bearer token's header, the CA to verify with."""
    if isinstance(verify, str):
        verify = ssl.create_default_context(cafile=verify)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return headers, verify


class _Timeouts:
    """The per-request timeout both clients use: ``timeout_s`` when given, else longer than
    the workers' forward timeout (learned from /partitions) by ``CLIENT_TIMEOUT_MARGIN_S``, so
    that a worker forwarding to a silent owner answers 503 before the client gives up on it."""

    router: _Router
    timeout_s: float | None

    @property
    def request_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        return client_timeout_s(self.router.forward_timeout_s)


class ReplicaClient(_Timeouts):
    """Synchronous client (httpx). ``verify``: True, False, or a CA bundle path / SSLContext
    for HTTPS workers; ``token``: the workers' bearer token; ``timeout_s``: how long to wait
    for one worker (default: the workers' ``--read-forward-timeout-s`` + 2 s, see
    :class:`_Timeouts`), plus ``wait_ms``; ``deadline_s``: how long one read keeps retrying
    other workers (on top of its ``wait_ms``). An answer that is not a worker's (a 404 or a
    200 from another service at that address) or a worker failing (500, 502) sends the read
    to the next worker, as one that is down does."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        token: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout_s: float | None = None,
        deadline_s: float = 15.0,
    ) -> None:
        self.router = _Router(endpoints)
        headers, trust = _http_options(token, verify)
        self.http = httpx.Client(headers=headers, verify=trust)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s

    def __enter__(self) -> ReplicaClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def refresh(self, deadline: float | None = None) -> None:
        """Learn the ownership map from the first worker that answers (before ``deadline``,
        a ``time.monotonic()``, when given)."""
        for base in self.router.refresh_order():
            timeout = _within(deadline, self.request_timeout_s)
            if timeout is None:
                return
            try:
                response = self.http.get(base + "/partitions", timeout=timeout)
            except httpx.TransportError:
                self.router.mark_down(base)
                continue
            if response.status_code == 200 and self.router.learned(base, response):
                return
            if response.status_code == 401:
                raise ReplicaClientError(f"{base}: {_error_line(response)}", 401)

    def get(
        self,
        grain_type: str,
        grain_key: str,
        *,
        stale: bool = False,
        min_sequence: int | None = None,
        wait_ms: int | None = None,
    ) -> GrainRead | None:
        """The grain (None: a worker's "not found"). Raises SequenceTimeout (with the
        ``sequence`` held), or ReplicaClientError when no worker answered within the deadline
        (status 400 for a grain the contract refuses, before any request)."""
        grain = _checked(grain_type, grain_key)
        deadline_s = _read_deadline_s(self.deadline_s, wait_ms)
        deadline = time.monotonic() + deadline_s
        last = _Last()
        while True:
            if self.router.stale_map:
                self.refresh(deadline)
            pause = 0.1
            for base in self.router.order(grain, stale):
                timeout = _within(deadline, self.request_timeout_s + (wait_ms or 0) / 1000)
                if timeout is None:
                    raise last.timed_out(deadline_s)
                try:
                    response = self.http.get(
                        base + _path(grain_type, grain_key),
                        params=_params(stale, min_sequence, wait_ms),
                        timeout=timeout,
                    )
                except httpx.TransportError as exc:
                    if time.monotonic() >= deadline:
                        raise last.out_of_time(base, describe(exc), deadline_s) from None
                    self.router.mark_down(base)
                    last.unreachable(base, describe(exc))
                    continue
                outcome = _judge(self.router, grain, base, response)
                if outcome.done:
                    return outcome.value
                if outcome.elsewhere is not None:
                    self.router.mark_down(base)
                    last.useless(base, response.status_code, outcome.elsewhere)
                    continue
                last.refused(base, response)
                pause = outcome.pause
                break
            if time.monotonic() + pause > deadline:
                raise last.timed_out(deadline_s)
            time.sleep(pause)

    def scan(self, grain_type: str, prefix: str = "", limit: int = 100) -> Iterator[dict[str, Any]]:
        """Every grain of a type (whose key starts with ``prefix``), in key order, page by
        page; each page from any worker, retried (503, down) until the deadline. Each item is
        the API's Grain object as JSON (payload in base64, its copy's freshness fields):
        ``GrainRead.from_json(item)`` types it."""
        _checked(grain_type, "-")  # an empty type, or one with a '/': the worker's 400
        cursor: str | None = None
        while True:
            path = f"/grains/{_segment(grain_type)}"
            response = self._any(path, _scan_params(prefix, limit, cursor))
            page = response.json()
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def _any(self, path: str, params: dict[str, str]) -> httpx.Response:
        """The first 200 of any worker (those seen down last), round after round until the
        deadline."""
        deadline = time.monotonic() + self.deadline_s
        last = _Last()
        while True:
            for base in self.router.refresh_order():
                timeout = _within(deadline, self.request_timeout_s)
                if timeout is None:
                    raise last.timed_out(self.deadline_s)
                try:
                    response = self.http.get(base + path, params=params, timeout=timeout)
                except httpx.TransportError as exc:
                    if time.monotonic() >= deadline:
                        raise last.out_of_time(base, describe(exc), self.deadline_s) from None
                    self.router.mark_down(base)
                    last.unreachable(base, describe(exc))
                    continue
                if _any_answered(base, response, last, self.router):
                    return response
            if time.monotonic() + ANY_PAUSE_S > deadline:
                raise last.timed_out(self.deadline_s)
            time.sleep(ANY_PAUSE_S)


class AsyncReplicaClient(_Timeouts):
    """The asyncio twin of :class:`ReplicaClient` (same arguments and behaviour), on one
    pooled aiohttp session (see client_aio for why not httpx)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        token: str | None = None,
        verify: bool | str | ssl.SSLContext = True,
        timeout_s: float | None = None,
        deadline_s: float = 15.0,
    ) -> None:
        self.router = _Router(endpoints)
        headers, trust = _http_options(token, verify)
        self.http = AioGetter(headers, trust)
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._refreshing = asyncio.Lock()

    async def __aenter__(self) -> AsyncReplicaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def refresh(self, deadline: float | None = None) -> None:
        async with self._refreshing:
            if not self.router.stale_map:
                return  # another task just did it
            for base in self.router.refresh_order():
                timeout = _within(deadline, self.request_timeout_s)
                if timeout is None:
                    return
                try:
                    response = await self.http.get(base + "/partitions", timeout_s=timeout)
                except TransportError:
                    self.router.mark_down(base)
                    continue
                if response.status_code == 200 and self.router.learned(base, response):
                    return
                if response.status_code == 401:
                    raise ReplicaClientError(f"{base}: {_error_line(response)}", 401)

    async def get(
        self,
        grain_type: str,
        grain_key: str,
        *,
        stale: bool = False,
        min_sequence: int | None = None,
        wait_ms: int | None = None,
    ) -> GrainRead | None:
        grain = _checked(grain_type, grain_key)
        deadline_s = _read_deadline_s(self.deadline_s, wait_ms)
        deadline = time.monotonic() + deadline_s
        last = _Last()
        while True:
            if self.router.stale_map:
                await self.refresh(deadline)
            pause = 0.1
            for base in self.router.order(grain, stale):
                timeout = _within(deadline, self.request_timeout_s + (wait_ms or 0) / 1000)
                if timeout is None:
                    raise last.timed_out(deadline_s)
                try:
                    response = await self.http.get(
                        base + _path(grain_type, grain_key),
                        params=_params(stale, min_sequence, wait_ms),
                        timeout_s=timeout,
                    )
                except TransportError as exc:
                    if time.monotonic() >= deadline:
                        raise last.out_of_time(base, str(exc), deadline_s) from None
                    self.router.mark_down(base)
                    last.unreachable(base, str(exc))
                    continue
                outcome = _judge(self.router, grain, base, response)
                if outcome.done:
                    return outcome.value
                if outcome.elsewhere is not None:
                    self.router.mark_down(base)
                    last.useless(base, response.status_code, outcome.elsewhere)
                    continue
                last.refused(base, response)
                pause = outcome.pause
                break
            if time.monotonic() + pause > deadline:
                raise last.timed_out(deadline_s)
            await asyncio.sleep(pause)

    async def scan(
        self, grain_type: str, prefix: str = "", limit: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        """As :meth:`ReplicaClient.scan`: the answer's JSON objects (``payload`` base64)."""
        _checked(grain_type, "-")  # an empty type, or one with a '/': the worker's 400
        cursor: str | None = None
        while True:
            path = f"/grains/{_segment(grain_type)}"
            response = await self._any(path, _scan_params(prefix, limit, cursor))
            page = response.json()
            for item in page["items"]:
                yield item
            cursor = page["next_cursor"]
            if not cursor:
                return

    async def _any(self, path: str, params: dict[str, str]) -> Reply:
        """:meth:`ReplicaClient._any`, awaited."""
        deadline = time.monotonic() + self.deadline_s
        last = _Last()
        while True:
            for base in self.router.refresh_order():
                timeout = _within(deadline, self.request_timeout_s)
                if timeout is None:
                    raise last.timed_out(self.deadline_s)
                try:
                    response = await self.http.get(base + path, params=params, timeout_s=timeout)
                except TransportError as exc:
                    if time.monotonic() >= deadline:
                        raise last.out_of_time(base, str(exc), self.deadline_s) from None
                    self.router.mark_down(base)
                    last.unreachable(base, str(exc))
                    continue
                if _any_answered(base, response, last, self.router):
                    return response
            if time.monotonic() + ANY_PAUSE_S > deadline:
                raise last.timed_out(self.deadline_s)
            await asyncio.sleep(ANY_PAUSE_S)
