"""End-to-end tests of dev/kafka/kafka.sh (the local single-node Kafka used by dev and tests).

One real broker is started per module, on free ports and in its own run dir under tmp, so it never
touches a developer's broker on 9092. The script itself polls for readiness; the tests never sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_cluster import KafkaCluster

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dev" / "kafka" / "kafka.sh"

# Generous per-call limits: the first start may download the jars (Maven) and format storage.
FIRST_START_TIMEOUT = 900
START_TIMEOUT = 240
STOP_TIMEOUT = 120
TOOL_TIMEOUT = 120

_JAVA = bool(os.environ.get("JAVA_HOME")) or shutil.which("java") is not None
_JARS = (
    bool(os.environ.get("KAFKA_HOME"))
    or shutil.which("mvn") is not None
    or (SCRIPT.parent / ".cache" / "lib" / ".resolved").exists()
)
needs_kafka = pytest.mark.skipif(
    not (_JAVA and _JARS), reason="needs java and (KAFKA_HOME, mvn, or cached jars)"
)

# The first broker start may include a one-time Maven download of ~90 jars; every subprocess
# call below has its own timeout, so this only lifts the project-wide pytest-timeout default.
pytestmark = pytest.mark.timeout(FIRST_START_TIMEOUT + 300)


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all sockets held open while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(
    env: dict[str, str], *args: str, timeout: float, expect: int | None = 0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(SCRIPT), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect is not None:
        assert proc.returncode == expect, (
            f"kafka.sh {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


class Broker:
    def __init__(self, run_dir: Path, port: int, controller_port: int) -> None:
        self.run_dir = run_dir
        self.pid = 0
        self.port = port
        self.controller_port = controller_port
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "KAFKA_RUN_DIR")
        }
        self.env.update(
            KAFKA_PORT=str(port),
            KAFKA_CONTROLLER_PORT=str(controller_port),
            KAFKA_RUN_DIR=str(run_dir),
        )

    def run(
        self, *args: str, timeout: float = TOOL_TIMEOUT, expect: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        return _run(self.env, *args, timeout=timeout, expect=expect)

    def start(self, timeout: float = START_TIMEOUT) -> int:
        proc = self.run("start", timeout=timeout)
        return _pid_from(proc.stdout)

    def stop(self) -> subprocess.CompletedProcess[str]:
        return self.run("stop", timeout=STOP_TIMEOUT)

    def status(self) -> subprocess.CompletedProcess[str]:
        return self.run("status", expect=None, timeout=30)

    def recorded_pid(self) -> int | None:
        try:
            return int((self.run_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _pid_from(text: str) -> int:
    m = re.search(r"\(pid (\d+)", text)
    assert m, f"no pid in {text!r}"
    return int(m.group(1))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    port, controller_port = _free_ports(2)
    b = Broker(tmp_path_factory.mktemp("kafka") / "run", port, controller_port)
    try:
        b.pid = b.start(timeout=FIRST_START_TIMEOUT)
        yield b
    finally:
        # Always stop the broker, even when start or a test failed.
        pid = b.recorded_pid()
        try:
            b.run("stop", timeout=STOP_TIMEOUT, expect=None)
        finally:
            if pid is not None and _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def running(broker: Broker) -> Broker:
    """The module broker, (re)started if a previous test stopped it (start is idempotent)."""
    broker.pid = broker.start()
    return broker


@pytest.fixture(scope="module")
def topic_t1(broker: Broker) -> str:
    broker.start()
    proc = broker.run("tool", "topics", "--create", "--topic", "t1", "--partitions", "2")
    assert "Created topic t1" in proc.stdout
    return "t1"


def _describe_partitions(b: Broker, topic: str) -> int:
    out = b.run("tool", "topics", "--describe", "--topic", topic).stdout
    m = re.search(r"PartitionCount:\s*(\d+)", out)
    assert m, out
    return int(m.group(1))


# --- no broker needed -------------------------------------------------------------------------


def test_usage_and_unknown_command() -> None:
    env = dict(os.environ)
    assert _run(env, "--help", timeout=30).stdout.startswith("usage:")
    proc = _run(env, "frobnicate", timeout=30, expect=2)
    assert "unknown command 'frobnicate'" in proc.stderr


def test_status_of_unused_run_dir(tmp_path: Path) -> None:
    env = dict(os.environ, KAFKA_RUN_DIR=str(tmp_path / "none"), KAFKA_PORT=str(_free_ports(1)[0]))
    proc = _run(env, "status", timeout=30, expect=3)
    assert "not running" in proc.stdout
    proc = _run(env, "stop", timeout=30)  # stopping nothing is a no-op
    assert "not running" in proc.stdout
    assert not (tmp_path / "none").exists()


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    # A PATH with every usual command except java (and mvn).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = bindir / name
            if name in ("java", "mvn") or os.path.lexists(target):
                continue
            target.symlink_to(os.path.join(d, name))
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(bindir), KAFKA_RUN_DIR=str(tmp_path / "run"), KAFKA_PORT="1")
    proc = _run(env, "start", timeout=30, expect=1)
    assert proc.stderr.strip() == (
        "kafka: error: java not found (need a JDK/JRE 17+ on PATH or JAVA_HOME)"
    )


def test_a_bad_initial_rebalance_delay_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        KAFKA_RUN_DIR=str(tmp_path / "run"),
        KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="3s",
    )
    proc = _run(env, "start", timeout=30, expect=1)
    assert proc.stderr.strip() == (
        "kafka: error: KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS must be a number of ms, got '3s'"
    )


def test_unknown_tool_name(tmp_path: Path) -> None:
    env = dict(os.environ, KAFKA_RUN_DIR=str(tmp_path / "run"))
    proc = _run(env, "tool", "no-such-tool", timeout=30, expect=2)
    assert "unknown tool 'no-such-tool'" in proc.stderr


@needs_kafka
def test_classpath_points_at_kafka_jars() -> None:
    proc = _run(dict(os.environ), "classpath", timeout=FIRST_START_TIMEOUT)
    cp = proc.stdout.strip()
    assert cp.endswith("/*"), cp
    jars = {p.name for p in Path(cp[:-2]).glob("*.jar")}
    assert any(j.startswith("kafka_2.13-") for j in jars), jars
    assert any(j.startswith("kafka-tools-") for j in jars), jars
    assert any(j.startswith("log4j-core-") for j in jars), jars


# --- one real broker for the module ------------------------------------------------------------


@needs_kafka
def test_status_reports_running(running: Broker) -> None:
    proc = running.status()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"kafka: running on 127.0.0.1:{running.port}")
    assert _pid_from(proc.stdout) == running.pid
    props = (running.run_dir / "server.properties").read_text()
    assert f"controller.quorum.voters=1@127.0.0.1:{running.controller_port}" in props
    assert "group.initial.rebalance.delay.ms=0\n" in props  # KAFKA_GROUP_INITIAL_... unset
    assert (running.run_dir / "data" / "meta.properties").exists()
    assert (running.run_dir / "logs" / "server.log").stat().st_size > 0


@needs_kafka
def test_start_again_is_a_noop(running: Broker) -> None:
    proc = running.run("start", timeout=START_TIMEOUT)
    assert "already running" in proc.stdout
    assert _pid_from(proc.stdout) == running.pid
    assert running.recorded_pid() == running.pid


@needs_kafka
def test_create_and_describe_topic(running: Broker, topic_t1: str) -> None:
    assert _describe_partitions(running, topic_t1) == 2


@needs_kafka
def test_consumer_groups_list(running: Broker) -> None:
    running.run("tool", "consumer-groups", "--list")


@needs_kafka
def test_stop_keeps_data_and_start_resumes(running: Broker, topic_t1: str) -> None:
    old_pid = running.pid
    proc = running.stop()
    assert "stopped" in proc.stdout
    assert not _pid_alive(old_pid)
    proc = running.status()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "not running" in proc.stdout

    running.pid = running.start()
    assert running.pid != old_pid
    topics = running.run("tool", "topics", "--list").stdout.split()
    assert topic_t1 in topics
    assert _describe_partitions(running, topic_t1) == 2

    running.stop()
    assert running.status().returncode == 3
    assert not _pid_alive(running.pid)


# --- cluster mode (the session's 3-broker cluster, see conftest.kafka_cluster) ----------------


def test_cluster_unknown_broker_is_a_clear_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KAFKA_CLUSTER_PORT": "47092",
        "KAFKA_CLUSTER_BROKERS": "3",
        "KAFKA_CLUSTER_DIR": str(tmp_path / "cluster"),
    }
    proc = _run(env, "cluster", "bootstrap", timeout=30)
    assert proc.stdout.strip() == "127.0.0.1:47092,127.0.0.1:48092,127.0.0.1:49092"
    proc = _run(env, "cluster", "kill-broker", "4", timeout=30, expect=1)
    assert proc.stderr.strip() == "kafka: error: no broker '4' (brokers are 1..3)"
    proc = _run(env, "cluster", "status", timeout=30, expect=3)
    assert proc.stdout.count("not running") == 4, proc.stdout
    proc = _run({**env, "KAFKA_CLUSTER_BROKERS": "12"}, "cluster", "status", timeout=30, expect=1)
    assert "KAFKA_CLUSTER_BROKERS must be 1..9" in proc.stderr


def _cluster_pids(cluster: KafkaCluster) -> dict[str, int]:
    """node name -> pid, from `cluster status`."""
    proc = cluster.run("status", check=False)
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(
            r"kafka: (controller|broker \d) running on \S+ \(pid (\d+)\)", proc.stdout
        )
    }


@needs_kafka
def test_cluster_stop_kill_and_restart_one_broker(cluster: KafkaCluster) -> None:
    before = _cluster_pids(cluster)
    assert set(before) == {"controller", "broker 1", "broker 2", "broker 3"}
    assert cluster.run("status").returncode == 0
    props = (cluster.run_dir / "broker-2" / "server.properties").read_text()
    assert "process.roles=broker\n" in props and "node.id=2\n" in props
    assert f"listeners=PLAINTEXT://127.0.0.1:{cluster.ports[2]}\n" in props
    assert f"controller.quorum.voters=0@127.0.0.1:{cluster.base_port + 1}\n" in props
    assert "min.insync.replicas=2\n" in props
    assert (cluster.run_dir / "broker-2" / "data" / "meta.properties").exists()

    proc = cluster.run("stop-broker", "2")
    assert proc.stdout.startswith("kafka: broker 2 stopped")
    assert not _pid_alive(before["broker 2"])
    proc = cluster.run("status", check=False)
    assert proc.returncode == 3
    assert "kafka: broker 2 not running" in proc.stdout
    assert set(_cluster_pids(cluster)) == {"controller", "broker 1", "broker 3"}

    proc = cluster.run("kill-broker", "3")
    assert proc.stdout.strip() == f"kafka: broker 3 killed (SIGKILL, pid {before['broker 3']})"
    assert not _pid_alive(before["broker 3"])

    cluster.run("start-broker", "2")
    cluster.run("restart-broker", "3")
    after = _cluster_pids(cluster)
    assert set(after) == set(before)
    assert after["broker 1"] == before["broker 1"] and after["controller"] == before["controller"]
    assert after["broker 2"] != before["broker 2"] and after["broker 3"] != before["broker 3"]
    assert cluster.run("status").returncode == 0
    topics = cluster.run("tool", "topics", "--list")
    assert topics.returncode == 0


def test_cluster_ids_never_start_with_a_dash(tmp_path: Path) -> None:
    """The cluster mode's own id: the storage tool took '-Y88...' for an option and the
    cluster never formatted (1 start in 64 with a fresh directory)."""
    script = (
        'source <(sed -n "/^cluster_id() {/,/^}/p" "$1")\n'
        'for i in $(seq 500); do rm -f "$CL_DIR/cluster.id"; cluster_id; echo; done'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(SCRIPT)],
        env={**os.environ, "CL_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    ids = done.stdout.split()
    assert len(ids) == 500 and len(set(ids)) == 500
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids), ids[:5]


def test_cluster_readiness_check_reads_a_long_log(tmp_path: Path) -> None:
    """`cluster start` on a running cluster checks each node's log for "Kafka Server started"
    after its latest start header. The check was `tail | grep -q` under pipefail: false once a
    node had logged more than a pipe's worth since it started (grep quits at the match, tail
    dies of SIGPIPE), so the fixture's `cluster start` waited 90 s and stopped a healthy broker."""
    header = "===== 2026-01-01T00:00:00Z kafka.sh start (127.0.0.1:1) =====\n"
    filler = "".join(f"[ts] INFO filler line {i} (kafka.Test)\n" for i in range(20_000))
    started = "[ts] INFO [KafkaRaftServer nodeId=1] Kafka Server started (kafka.server.X)\n"
    logs = {
        "long": header + started + filler,  # ~700 KB after the match
        "restarted": header + started + filler + header + filler,  # this run not started yet
        "again": header + started + header + filler + started + filler,
        "fresh": header,
    }
    for name, text in logs.items():
        (tmp_path / name).write_text(text)
    script = (
        "set -euo pipefail\n"
        'source <(sed -n "/^started_since_launch() {/,/^}/p" "$1")\n'
        "for f in long restarted again fresh missing; do\n"
        '  if started_since_launch "$2/$f"; then echo "$f yes"; else echo "$f no"; fi\n'
        "done"
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split("\n")[:-1] == [
        "long yes", "restarted no", "again yes", "fresh no", "missing no"
    ]  # fmt: skip
