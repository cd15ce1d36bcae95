"""The example Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate
bundles them; nothing is downloaded), and wired the way the worker expects."""

from __future__ import annotations

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


def test_dashboard_queries_only_metrics_the_worker_exposes() -> None:
    import json
    import re

    from stream_replica.metrics import Metrics
    from stream_replica.status import PartitionRow

    metrics = Metrics("t")
    metrics.set_partitions({0: PartitionRow("active", 1, 2, False, end_offset_age_s=0.2)})
    metrics.set_shadowed({}, {})
    # labelled series appear once used: one answered read, one forward
    metrics.http_requests.labels("grain", "200").inc()
    metrics.http_seconds.labels("grain").observe(0.001)
    metrics.forwards.labels("grain", "answered").inc()
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in metrics.exposition().decode().splitlines()
        if line and not line.startswith("#")
    }
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/stream-replica.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"stream_replica_[a-z_]+", target["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= exposed, f"not exposed: {sorted(used - exposed)}"
