"""The example Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate
bundles them; nothing is downloaded), and wired the way the worker expects. The Grafana
dashboard and the Prometheus alerts query only metrics a worker exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_statefulset_gives_stable_ids_volumes_probes_and_metrics() -> None:
    (statefulset,) = [d for d in documents() if d["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["STREAM_REPLICA_INSTANCE_ID"]["value"] == "$(POD_NAME)"
    assert "value" not in env["STREAM_REPLICA_SASL_PASSWORD"]  # from a Secret only
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts == {"data": "/data"} and claims == {"data"}
    assert "--db" in container["args"] and container["args"][
        container["args"].index("--db") + 1
    ].startswith("/data/")


def test_the_examples_cover_a_statefulset_service_and_disruption_budget() -> None:
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "StatefulSet"]
    (service,) = [d for d in documents() if d["kind"] == "Service"]
    (statefulset,) = [d for d in documents() if d["kind"] == "StatefulSet"]
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    # Each pod's DNS name (what workers advertise for forwarding) outlives readiness: a
    # worker catching up or cut off from Kafka still serves and forwards reads.
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]


def test_the_manifest_args_are_flags_the_worker_accepts() -> None:
    from stream_replica.cli import build_parser

    (statefulset,) = [d for d in documents() if d["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.http == "0.0.0.0:8080" and args.log_format == "json"
    env_names = {e["name"] for e in container["env"]}
    assert "STREAM_REPLICA_INSTANCE_ID" in env_names


def exposed_metrics() -> set[str]:
    """Every series name a worker's /metrics carries once each labelled metric was used."""
    from stream_replica.metrics import Metrics
    from stream_replica.status import PartitionRow

    metrics = Metrics("t")
    metrics.set_partitions({0: PartitionRow("active", 1, 2, False, end_offset_age_s=0.2)})
    metrics.set_shadowed({}, {})
    # labelled series appear once used: one answered read, one forward
    metrics.http_requests.labels("grain", "200").inc()
    metrics.http_seconds.labels("grain").observe(0.001)
    metrics.forwards.labels("grain", "answered").inc()
    return {
        line.split("{")[0].split(" ")[0]
        for line in metrics.exposition().decode().splitlines()
        if line and not line.startswith("#")
    }


def test_dashboard_queries_only_metrics_the_worker_exposes() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/stream-replica.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"stream_replica_[a-z_]+", target["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= exposed_metrics(), f"not exposed: {sorted(used - exposed_metrics())}"


def test_alerts_use_only_metrics_the_worker_exposes_and_prometheus_loads_them() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    for rule in alerts:
        assert rule["alert"].startswith("StreamReplica"), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
    used = {name for rule in alerts for name in re.findall(r"stream_replica_[a-z_]+", rule["expr"])}
    # counters are queried by their series name (_total)
    assert used <= exposed_metrics(), f"not exposed: {sorted(used - exposed_metrics())}"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes


PROMTOOL = shutil.which("promtool", path=f"{ROOT / '.cache/bin'}:{os.environ.get('PATH', '')}")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make check-alerts)")
def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    assert PROMTOOL is not None
    for args in (("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")):
        result = subprocess.run(
            [PROMTOOL, *args], cwd=ROOT / "deploy/prometheus", capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
