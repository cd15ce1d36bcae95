"""A local multi-broker KRaft cluster (dev/kafka/kafka.sh cluster ...) for the cluster test and
the chaos run's cluster mode, plus metadata helpers: who leads what, is everything in sync."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from stream_replica import admin

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "dev" / "kafka" / "kafka.sh"


class ClusterError(Exception):
    pass


class KafkaCluster:
    """Broker i (1..brokers) listens on ``base_port + (i - 1) * 1000``; the controller on
    ``base_port + 1``."""

    def __init__(self, base_port: int, run_dir: Path, brokers: int = 3) -> None:
        self.base_port = base_port
        self.brokers = brokers
        self.run_dir = run_dir
        self.env = {
            **os.environ,
            "KAFKA_CLUSTER_PORT": str(base_port),
            "KAFKA_CLUSTER_BROKERS": str(brokers),
            "KAFKA_CLUSTER_PORT_STEP": "1000",
            "KAFKA_CLUSTER_DIR": str(run_dir),
        }
        self.env.pop("KAFKA_CLUSTER_CONTROLLER_PORT", None)
        self.ids = list(range(1, brokers + 1))
        self.ports = {i: base_port + (i - 1) * 1000 for i in self.ids}
        self.bootstrap = ",".join(f"127.0.0.1:{self.ports[i]}" for i in self.ids)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(KAFKA_SH), "cluster", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and result.returncode != 0:
            # kafka.sh's error line, then what it printed after it (a failed start: the tail
            # of the node's server.log); the last line alone was a log line, not the error.
            lines = result.stderr.strip().splitlines() or ["(no output)"]
            errors = [i for i, line in enumerate(lines) if line.startswith("kafka: error:")]
            first = errors[0] if errors else len(lines) - 1
            raise ClusterError(
                f"kafka.sh cluster {' '.join(args)} exited {result.returncode}: "
                + "\n".join(lines[first:][:40])
            )
        return result

    def start(self) -> None:
        self.run("start")

    def stop(self) -> None:
        self.run("stop", check=False)

    def kill_broker(self, *ids: int) -> None:
        self.run("kill-broker", *map(str, ids))

    def stop_broker(self, *ids: int) -> None:
        self.run("stop-broker", *map(str, ids))

    def start_broker(self, *ids: int) -> None:
        self.run("start-broker", *map(str, ids))


async def partition_state(bootstrap: str, topic: str) -> dict[int, dict[str, Any]]:
    """partition -> {"leader": id, "replicas": [...], "isr": [...]} from a metadata request
    (asked again for up to 30 s while it goes to a killed broker not fenced yet)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            async with admin.admin_client(bootstrap) as client:
                topics = await client.describe_topics([topic])
            break
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    state: dict[int, dict[str, Any]] = {}
    for described in topics:
        for p in described["partitions"]:
            index = p.get("partition", p.get("partition_index"))
            state[int(index)] = {
                "leader": p.get("leader", p.get("leader_id")),
                "replicas": list(p.get("replicas", p.get("replica_nodes", []))),
                "isr": list(p.get("isr", p.get("isr_nodes", []))),
            }
    return state


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    return {p: s["leader"] for p, s in (await partition_state(bootstrap, topic)).items()}


async def fully_in_sync(bootstrap: str, topics: list[str]) -> bool:
    """True when every partition of ``topics`` has a leader and all its replicas in sync."""
    try:
        for topic in topics:
            state = await partition_state(bootstrap, topic)
            if not state:
                return False
            for s in state.values():
                if s["leader"] in (None, -1) or sorted(s["isr"]) != sorted(s["replicas"]):
                    return False
    except Exception:
        return False  # a broker is bouncing: not in sync yet
    return True
