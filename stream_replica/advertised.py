"""Whether the brokers a cluster advertises can be reached from here.

A Kafka client uses its bootstrap servers only to learn the cluster's metadata; every request
after that goes to the address each broker *advertises* (``advertised.listeners``, per
listener). A broker advertising a name that does not resolve where the client runs (a
container's host name, an internal DNS name) or a port nobody forwards answers the bootstrap
and then nothing: aiokafka reports ``NodeNotReadyError`` for every request and retries for
ever. Asked only after a request failed that way or took over 3 s (admin.py), so a healthy
cluster rarely pays for it (a metadata request and a TCP connection per broker).

Only a cluster whose *every* advertised address fails is reported: the broker that answered
the bootstrap is alive and advertises one of them, so that is a misconfiguration (or a
network path that does not match the advertised names), not an outage. Some addresses
failing is a broker down, which the caller keeps retrying."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.protocol.metadata import MetadataRequest

from stream_replica.connection import ConnectionSettings, parse_bootstrap_servers
from stream_replica.diagnosis import connect
from stream_replica.errors import KafkaAccessError
from stream_replica.listener import unreachable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Advertised:
    node_id: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


async def check_advertised(settings: ConnectionSettings, timeout_s: float = 5.0) -> None:
    """Raise :class:`KafkaAccessError` (one line) if a bootstrap server answers but no broker
    address the cluster advertises accepts a connection from here; return otherwise (also
    when no bootstrap server answers: that is for the caller's own report)."""
    for host, port in parse_bootstrap_servers(settings.bootstrap_servers):
        brokers = await _metadata_brokers(settings, host, port, timeout_s)
        if brokers is None:
            continue
        failures: list[str] = []
        for broker in brokers:
            if (broker.host, broker.port) == (host, port):
                return  # the address we just reached
            why = await unreachable(broker.host, broker.port, timeout_s)
            if why is None:
                return
            failures.append(f"broker {broker.node_id} at {broker.address}: {why}")
        if failures:
            raise KafkaAccessError(_message(f"{host}:{port}", failures))
        return


async def _metadata_brokers(
    settings: ConnectionSettings, host: str, port: int, timeout_s: float
) -> list[Advertised] | None:
    """The brokers the cluster metadata lists, asked of one bootstrap server over the
    client's own protocol; None if it does not answer."""
    try:
        conn = await connect(settings, host, port, timeout_s)
    except Exception:
        log.debug("advertised-listener check: no connection to %s:%d", host, port, exc_info=True)
        return None
    try:
        # An empty topic list asks for the brokers only (version 1 and later).
        response = await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    except Exception:
        log.debug("advertised-listener check: no metadata from %s:%d", host, port, exc_info=True)
        return None
    finally:
        conn.close()
    return [
        Advertised(int(b["node_id"]), str(b["host"]), int(b["port"]))
        for b in response.to_object()["brokers"]
    ]


def _message(answered: str, failures: list[str]) -> str:
    return (
        f"the broker at {answered} answered, but the cluster advertises no broker reachable "
        f"from here ({'; '.join(failures)}): after bootstrapping, Kafka clients connect to the "
        f"addresses in the brokers' advertised.listeners; fix those for the listener at "
        f"{answered}, or run where they resolve and connect"
    )
