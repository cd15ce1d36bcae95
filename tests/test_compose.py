"""Static checks for docker-compose.yml and the Dockerfile.

No Docker engine is needed: the YAML is parsed with PyYAML and, when the
`docker compose` client plugin is installed, validated with `docker compose config -q`
(which does not talk to an engine).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict:
    with COMPOSE_FILE.open() as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "docker-compose.yml has no services"
    return svcs


def env_of(service: dict) -> dict[str, str]:
    """A service's environment as {name: str(value)}, for both map and list syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            name, _, value = str(item).partition("=")
            out[name] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(part) for part in cmd]


def depends_condition(service: dict, on: str) -> str | None:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        # short syntax means plain service_started
        return "service_started" if on in deps else None
    entry = deps.get(on)
    if entry is None:
        return None
    return (entry or {}).get("condition", "service_started")


def option_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def advertised_plaintext(kafka: dict) -> str:
    """host:port of the PLAINTEXT listener in KAFKA_ADVERTISED_LISTENERS."""
    advertised = env_of(kafka).get("KAFKA_ADVERTISED_LISTENERS", "")
    listeners = {}
    for entry in advertised.split(","):
        name, sep, hostport = entry.strip().partition("://")
        if sep:
            listeners[name] = hostport
    assert "PLAINTEXT" in listeners, f"no PLAINTEXT listener in {advertised!r}"
    return listeners["PLAINTEXT"]


def replica_services(services: dict) -> dict[str, dict]:
    """Services other than topic-init built from / running the stream-replica image."""
    ref = services["topic-init"]
    return {
        name: svc
        for name, svc in services.items()
        if name != "topic-init"
        and (
            (ref.get("image") and svc.get("image") == ref.get("image"))
            or (ref.get("build") is not None and svc.get("build") == ref.get("build"))
        )
    }


# --------------------------------------------------------------------------- services


def test_required_services_exist(services):
    for name in ("kafka", "topic-init", "worker"):
        assert name in services, f"service {name!r} missing from docker-compose.yml"


def test_kafka_image_is_apache_kafka_4(services):
    image = services["kafka"].get("image", "")
    repo, _, tag = image.rpartition(":")
    assert repo == "apache/kafka", f"kafka image should be apache/kafka, got {image!r}"
    assert re.fullmatch(r"4(\.\d+)*", tag), f"kafka image tag should be 4.x, got {tag!r}"


def test_kafka_kraft_combined_single_node(services):
    env = env_of(services["kafka"])
    roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    assert {"broker", "controller"} <= roles, f"process roles {roles} not combined mode"
    assert env.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "1"
    assert env.get("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR") == "1"
    assert env.get("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR") == "1"
    # the controller listener named in CONTROLLER_LISTENER_NAMES must be declared and
    # reachable at the port the quorum voters use
    ctl_name = env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "")
    listeners = dict(
        entry.strip().split("://", 1)
        for entry in env.get("KAFKA_LISTENERS", "").split(",")
        if "://" in entry
    )
    assert ctl_name in listeners, f"controller listener {ctl_name!r} not in KAFKA_LISTENERS"
    voters = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    ctl_port = listeners[ctl_name].rsplit(":", 1)[1]
    assert voters.endswith(":" + ctl_port), (
        f"quorum voters {voters!r} not on controller port {ctl_port}"
    )


def test_kafka_has_healthcheck(services):
    hc = services["kafka"].get("healthcheck")
    assert hc and hc.get("test"), "kafka needs a healthcheck (topic-init waits on service_healthy)"
    assert not hc.get("disable", False)
    test = hc["test"] if isinstance(hc["test"], str) else " ".join(hc["test"])
    assert "kafka-broker-api-versions.sh" in test


def test_topic_init_waits_for_healthy_kafka_and_creates_topic(services):
    topic_init = services["topic-init"]
    assert depends_condition(topic_init, "kafka") == "service_healthy"
    cmd = command_of(topic_init)
    assert "topic" in cmd and "create" in cmd, f"topic-init command {cmd} does not create the topic"
    assert str(topic_init.get("restart", "no")) == "no", "topic-init is one-shot"


def test_worker_waits_for_topic_init(services):
    assert depends_condition(services["worker"], "topic-init") == "service_completed_successfully"


def test_worker_is_scalable(services):
    worker = services["worker"]
    assert "container_name" not in worker, "container_name prevents --scale worker=N"
    assert not worker.get("ports"), "host ports on worker prevent --scale worker=N"


def test_worker_command(services):
    cmd = command_of(services["worker"])
    assert cmd and cmd[0] == "run", f"worker command should start with 'run', got {cmd}"
    assert option_value(cmd, "--group"), f"worker command lacks --group: {cmd}"
    assert option_value(cmd, "--db"), f"worker command lacks --db: {cmd}"
    group_env = env_of(services["worker"]).get("STREAM_REPLICA_GROUP")
    if group_env is not None:
        assert group_env == option_value(cmd, "--group"), (
            "STREAM_REPLICA_GROUP disagrees with --group"
        )


def test_worker_db_on_private_volume(services):
    """Each replica's RocksDB dir must be on a per-container (anonymous) volume."""
    worker = services["worker"]
    db = option_value(command_of(worker), "--db")
    assert db, "worker command lacks --db"
    targets = []
    for vol in worker.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            anonymous = len(parts) == 1
            target = parts[0] if anonymous else parts[1]
        else:
            target = vol.get("target")
            anonymous = vol.get("type", "volume") == "volume" and not vol.get("source")
        if db == target or db.startswith(target.rstrip("/") + "/"):
            targets.append((target, anonymous))
    assert targets, f"--db {db} is not under any volume mounted in worker"
    for target, anonymous in targets:
        assert anonymous, (
            f"{target} is a shared named volume/bind mount: replicas would share one RocksDB"
        )


def test_bootstrap_servers_match_kafka_advertised_listener(services):
    expected = advertised_plaintext(services["kafka"])
    host = expected.rsplit(":", 1)[0]
    assert host in services or host == services["kafka"].get("hostname"), (
        f"advertised host {host!r} is not resolvable on the compose network"
    )
    for name in ("topic-init", "worker"):
        got = env_of(services[name]).get("KAFKA_BOOTSTRAP_SERVERS")
        assert got == expected, (
            f"{name} KAFKA_BOOTSTRAP_SERVERS={got!r}, kafka advertises {expected!r}"
        )


def test_all_replica_services_use_same_topic(services):
    topic = env_of(services["topic-init"]).get("STREAM_REPLICA_TOPIC")
    assert topic, "topic-init has no STREAM_REPLICA_TOPIC"
    others = replica_services(services)
    assert "worker" in others, "worker does not run the same image as topic-init"
    for name, svc in others.items():
        got = env_of(svc).get("STREAM_REPLICA_TOPIC")
        assert got == topic, f"{name} uses topic {got!r} but topic-init creates {topic!r}"


def test_worker_graceful_stop(services):
    worker = services["worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert worker.get("stop_grace_period"), (
        "worker should get time to commit offsets / flush RocksDB"
    )
    # a stop while Kafka is degraded: the last commit (15 s) and leaving the group (10 s)
    grace = worker["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) >= 60, grace


def test_worker_instance_id_is_its_container_name(services):
    """Static membership needs an id per replica, stable across redeploys: a literal would be
    shared by every --scale replica (they would fence each other); the container name is not."""
    env = env_of(services["worker"])
    assert env.get("STREAM_REPLICA_INSTANCE_ID") == "@container"
    assert option_value(command_of(services["worker"]), "--instance-id") is None


def test_worker_advertises_a_name_the_other_workers_resolve(services):
    """The read API forwards to the owner's advertised HOST:PORT. Without --advertise it is
    the container's host name, i.e. its id, which other containers need not resolve; the
    container name (@container) is in Docker's DNS and unique per --scale replica (a service
    name or a fixed hostname would be shared by every replica)."""
    from stream_replica.cli import with_container_name
    from stream_replica.node import parse_listen
    from stream_replica.settings import WorkerSettings

    worker = services["worker"]
    cmd = command_of(worker)
    listen = option_value(cmd, "--http")
    assert listen, f"worker command lacks --http: {cmd}"
    _, port = parse_listen(listen)
    advertise = option_value(cmd, "--advertise") or env_of(worker).get("STREAM_REPLICA_ADVERTISE")
    assert advertise, "no --advertise: forwards would go to the container id"
    host, _, advertised_port = str(advertise).rpartition(":")
    assert advertised_port == str(port), f"advertises port {advertised_port}, listens on {port}"
    assert host == "@container", f"advertised host {host!r}: not one name per replica"
    # and the worker turns @container:PORT into its container name, as it does the instance id
    settings = WorkerSettings(
        bootstrap_servers="kafka:9092", topic="t", group="g", db=Path("/data/x"),
        http=listen, advertise=str(advertise), instance_id="@container",
    )  # fmt: skip
    named = with_container_name(settings, lambda option: "stream-replica-worker-2")
    assert named.advertise == f"stream-replica-worker-2:{port}"
    assert named.instance_id == "stream-replica-worker-2"


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _exec_form(value: str) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return shlex.split(value)
    return [str(p) for p in parsed] if isinstance(parsed, list) else [str(parsed)]


def test_dockerfile_entrypoint_is_stream_replica():
    entrypoints = [rest for kw, rest in _dockerfile_instructions() if kw == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert _exec_form(entrypoints[-1]) == ["stream-replica"], f"ENTRYPOINT is {entrypoints[-1]}"
    assert entrypoints[-1].lstrip().startswith("["), (
        "use exec form so SIGTERM reaches stream-replica"
    )


def test_dockerfile_runs_as_non_root():
    users = [rest for kw, rest in _dockerfile_instructions() if kw == "USER"]
    assert users, "Dockerfile never switches to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"final USER is {users[-1]}"


# --------------------------------------------------------------------------- docker compose config


def test_docker_compose_config_validates():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed; cannot run `docker compose config`")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            "docker compose plugin not installed (`docker compose version` failed); "
            "YAML checked structurally only"
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"docker compose config failed:\n{result.stdout}\n{result.stderr}"
    )
