"""deploy/k8s, offline: both overlays render with `kubectl kustomize`, every object validates against the Kubernetes
schemas (kubernetes-validate, strict) or the vendored CRD schemas (deploy/k8s/schemas), the security, probe, budget,
network and autoscaling properties hold, the Strimzi topics are the command's output, and checkov finds nothing
beyond the justified skips (deploy/k8s/policy-skips.yaml)."""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.contracts.strimzi import render_strimzi
from pipeline.contracts.topics import load_registry
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"dev": "local", "prod": "prod"}  # overlay -> registry environment
K8S_VERSION = "1.32"  # the client here (kubernetes-client 1.32); the schemas of that minor version
CHECKOV = ROOT / ".tools" / "policy" / "bin" / "checkov"
CRD_SCHEMAS = {  # (apiVersion, kind) -> vendored openAPIV3Schema (deploy/k8s/schemas/README.md: sources, versions)
    ("kafka.strimzi.io/v1", "KafkaTopic"): "kafkatopic-kafka.strimzi.io-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}
COMPONENTS = ("collect", "worker", "anomaly", "alerts", "notify", "sink", "api")
# The flows of the data flow (docs/security.md): TCP/UDP ports each workload may open, and may be reached on.
EGRESS = {
    "collect": {53, 9092, 9093, 443, 9443},
    "worker": {53, 9092, 9093},
    "anomaly": {53, 9092, 9093},
    "alerts": {53, 9092, 9093},
    "notify": {53, 9092, 9093, 443, 465, 587},
    "sink": {53, 9092, 9093, 9000, 9440},
    "api": {53, 9092, 9093, 9000, 9440, 443},
    "db-migrate": {53, 9000, 9440},
}
INGRESS = {c: {9108} for c in COMPONENTS} | {"api": {9108, 8080}, "db-migrate": set()}


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        unavailable("kubectl missing (Debian package kubernetes-client; `make kubectl` installs it)")
    return found


@functools.cache
def _render_text(overlay: str) -> str:
    return subprocess.run(
        [_kubectl(), "kustomize", str(K8S / "overlays" / overlay)], check=True, capture_output=True, text=True
    ).stdout


def _render(overlay: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(_render_text(overlay)) if d]


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it to a client's typo: no field the schema does not name (the server
    would prune it silently), except where the schema keeps unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def _crd_validator(file: str) -> jsonschema.Draft7Validator:
    schema = json.loads((K8S / "schemas" / file).read_text())
    schema = _strict(schema)
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server, not the CRD
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_validates(overlay: str) -> None:
    objects = _render(overlay)
    assert len(objects) > 40
    crd_kinds = set()
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace") == f"marketprism{'-dev' if overlay == 'dev' else ''}", name
        if key in CRD_SCHEMAS:
            crd_kinds.add(obj["kind"])
            errors = [
                f"{list(e.absolute_path)}: {e.message}" for e in _crd_validator(CRD_SCHEMAS[key]).iter_errors(obj)
            ]
            assert not errors, f"{name}: {errors}"
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{name}: {list(exc.absolute_path)}: {exc.message}") from None
    assert crd_kinds >= {"KafkaTopic", "ScaledObject", "ServiceMonitor"}
    assert not _of(objects, "Secret"), "secrets are referenced, never defined in the manifests"


def test_the_checks_catch_a_typo() -> None:
    objects = _render("prod")
    deployment = copy.deepcopy(_of(objects, "Deployment")["sink"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    scaled = copy.deepcopy(_of(objects, "ScaledObject")["worker"])
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")  # the HPA's word, not KEDA's
    assert list(_crd_validator(CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).iter_errors(scaled))
    topic = copy.deepcopy(next(iter(_of(objects, "KafkaTopic").values())))
    topic["spec"]["partitions"] = 0
    assert list(_crd_validator(CRD_SCHEMAS[("kafka.strimzi.io/v1", "KafkaTopic")]).iter_errors(topic))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_strimzi_topics_are_the_commands_output(overlay: str) -> None:
    environment = OVERLAYS[overlay]
    committed = (K8S / "overlays" / overlay / "kafka-topics.yaml").read_text()
    result = CliRunner().invoke(app, ["topics", "render", "--format", "strimzi", "--environment", environment])
    assert result.exit_code == 0, result.output
    assert committed == result.stdout, (
        f"deploy/k8s/overlays/{overlay}/kafka-topics.yaml is stale: run marketprism topics render --format strimzi "
        f"--environment {environment} -o deploy/k8s/overlays/{overlay}/kafka-topics.yaml"
    )
    assert committed == render_strimzi(load_registry(), environment, "marketprism")
    registry = load_registry()
    replication = registry.replication(environment)
    topics = {o["spec"]["topicName"]: o for o in _of(_render(overlay), "KafkaTopic").values()}
    assert set(topics) == {t.name for t in registry} | {t.name for t in registry.internal}
    assert {o["spec"]["replicas"] for o in topics.values()} == {replication.replication_factor}


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_workloads_are_locked_down_and_probed(overlay: str) -> None:
    objects = _render(overlay)
    deployments = _of(objects, "Deployment")
    assert set(deployments) == set(COMPONENTS)
    workloads = list(deployments.values()) + list(_of(objects, "Job").values())
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in _containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in container.get("env", []))
            mounted = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounted, f"{name}: a writable /tmp on a read-only root"  # noqa: S108 - a mount path
    for name, deployment in deployments.items():
        (container,) = _containers(deployment)
        ports = {p["name"] for p in container["ports"]}
        probe_port = "http" if name == "api" else "metrics"
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": probe_port}, (name, probe)
        assert probe_port in ports
        # the args are a real command of this version (`--help` parses every option named before it)
        result = CliRunner().invoke(app, [*container["args"], "--help"])
        assert result.exit_code == 0, (name, container["args"], result.output)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
    return True


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    workloads = list(_of(objects, "Deployment").values()) + list(_of(objects, "Job").values())
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in workloads}


def test_disruption_budgets_services_and_scraping() -> None:
    objects = _render("prod")
    pods = _pod_labels(objects)
    budgets = _of(objects, "PodDisruptionBudget")
    for name in COMPONENTS:
        covering = [b for b in budgets.values() if _selects(b["spec"]["selector"], pods[name])]
        assert len(covering) == 1, name
    monitor = next(iter(_of(objects, "ServiceMonitor").values()))
    scraped = [
        s for s in _of(objects, "Service").values() if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {p for s in scraped for p in (x["name"] for x in s["spec"]["ports"])} >= {"metrics"}
    for name in COMPONENTS:
        assert any(_selects({"matchLabels": s["spec"]["selector"]}, pods[name]) for s in scraped), name


def _ports(rules: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for rule in rules for p in rule.get("ports", [])}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_allow_only_the_data_flows(overlay: str) -> None:
    objects = _render(overlay)
    policies = list(_of(objects, "NetworkPolicy").values())
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for name, labels in _pod_labels(objects).items():
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        egress = set().union(*(_ports(p["spec"].get("egress", [])) for p in mine))
        ingress = set().union(*(_ports(p["spec"].get("ingress", [])) for p in mine))
        assert egress == EGRESS[name], (name, egress)
        assert ingress == INGRESS[name], (name, ingress)
        for policy in mine:  # no rule without ports or peers: that would open everything
            for rule in policy["spec"].get("egress", []) + policy["spec"].get("ingress", []):
                assert rule.get("ports") and (rule.get("to") or rule.get("from")), policy["metadata"]["name"]


def test_autoscaling_is_capped_at_the_partitions() -> None:
    from pipeline.aggregation.app import APP_ID as AGGREGATOR_GROUP
    from pipeline.anomaly.agents import APP_ID as ANOMALY_GROUP
    from pipeline.sinks.runner import GROUP as SINK_GROUP

    registry = load_registry()
    partitions = {t.name: t.partitions for t in registry}
    stored = max(t.partitions for t in registry if t.sink)
    groups = {"worker": AGGREGATOR_GROUP, "anomaly": ANOMALY_GROUP, "sink": SINK_GROUP}
    for overlay in OVERLAYS:
        objects = _render(overlay)
        deployments = _of(objects, "Deployment")
        scaled = _of(objects, "ScaledObject")
        assert set(scaled) == {"worker", "anomaly", "sink", "api"}
        for name, obj in scaled.items():
            spec = obj["spec"]
            assert spec["scaleTargetRef"]["name"] in deployments
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            if name == "api":  # no consumer group: scales on requests (scaledobjects.yaml)
                assert [t["type"] for t in spec["triggers"]] == ["prometheus"]
                continue
            (trigger,) = spec["triggers"]
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka" and meta["consumerGroup"] == groups[name]
            assert meta["allowIdleConsumers"] == "false"
            cap = partitions[meta["topic"]] if "topic" in meta else stored
            assert spec["maxReplicaCount"] <= cap, (name, spec["maxReplicaCount"], cap)
            env = {e["name"] for e in _containers(deployments[name])[0].get("env", [])}
            env_config = next(iter(c for n, c in _of(objects, "ConfigMap").items() if n.startswith("marketprism-env")))
            assert meta["bootstrapServersFromEnv"] in env | set(env_config["data"])
            if overlay == "prod":
                assert trigger["authenticationRef"]["name"] in _of(objects, "TriggerAuthentication")
                assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"


def test_config_maps_hold_valid_rules_and_routes(tmp_path: Path) -> None:
    from pipeline.alerting.rules import load_rules
    from pipeline.notify.config import load_config

    config_maps = {n.rsplit("-", 1)[0]: c for n, c in _of(_render("prod"), "ConfigMap").items()}
    rules = tmp_path / "rules.yaml"
    rules.write_text(config_maps["marketprism-rules"]["data"]["rules.yaml"])
    assert load_rules([rules]).rules  # the core rules plus the site file, parsed
    routes = tmp_path / "notify.yaml"
    routes.write_text(config_maps["marketprism-notify"]["data"]["notify.yaml"])
    assert load_config(routes).receivers
    env = config_maps["marketprism-env"]["data"]
    assert env["MARKETPRISM_ENVIRONMENT"] == "prod" and env["MARKETPRISM_METRICS_HOST"] == "0.0.0.0"  # noqa: S104


def test_prod_uses_a_kafka_principal_per_component() -> None:
    objects = _render("prod")
    users = set()
    for name, deployment in _of(objects, "Deployment").items():
        env = {e["name"]: e.get("value") for e in _containers(deployment)[0]["env"]}
        assert env["MARKETPRISM_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL", name
        users.add(env["MARKETPRISM_KAFKA__SASL_USERNAME"])
        secrets = {
            v["secret"]["secretName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v
        }
        assert f"marketprism-{name}" in secrets
    assert len(users) == len(COMPONENTS)


def test_policy_scan() -> None:
    if not CHECKOV.exists():
        unavailable(f"checkov missing at {CHECKOV} (`make policy` syncs tools/policy into .tools/policy)")
    skips = yaml.safe_load((K8S / "policy-skips.yaml").read_text())["skips"]
    assert all(s["id"] and len(s["reason"]) > 40 for s in skips), "every skip needs its reason"
    scratch = ROOT / ".tools" / "policy-scan"
    scratch.mkdir(parents=True, exist_ok=True)
    files = []
    for overlay in OVERLAYS:
        path = scratch / f"{overlay}.yaml"
        path.write_text(_render_text(overlay))
        files += ["-f", str(path)]
    skip_ids = ",".join(s["id"] for s in skips)
    result = subprocess.run(
        [str(CHECKOV), *files, "--framework", "kubernetes", "--skip-check", skip_ids, "-o", "json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}" for r in reports for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert sum(r["summary"]["passed"] for r in reports) > 500
