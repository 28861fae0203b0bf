"""Static checks of the deployment stack (no Docker engine runs here): compose services, images,
health checks, ports, env, volumes, Prometheus targets and Grafana provisioning all point at things
that exist, and every component service runs a real `marketprism` sub-command."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
COMPONENTS = {name: s for name, s in SERVICES.items() if s.get("build")}
INFRA = {name: s for name, s in SERVICES.items() if not s.get("build")}


def _host_path(volume: str) -> Path | None:
    source = volume.split(":", 1)[0]
    return ROOT / source if source.startswith(".") else None


def test_every_service_has_an_image_or_a_build() -> None:
    for name, service in SERVICES.items():
        assert service.get("image") or service.get("build"), name
        if image := service.get("image"):
            assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", image), f"{name}: pin a tag ({image})"


def test_infrastructure_services_have_health_checks() -> None:
    for name, service in INFRA.items():
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no health check"


def test_component_image_is_non_root_with_a_health_check() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", dockerfile, re.M)
    for copied in re.findall(r"^COPY\s+(?!--)(\S+)", dockerfile, re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies missing {copied}"


def test_ports_env_files_volumes_and_dependencies_exist() -> None:
    named_volumes = set(COMPOSE.get("volumes") or {})
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", str(port)), f"{name}: port {port} not on loopback"
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), f"{name}: env_file {env_file}"
        for volume in service.get("volumes", []):
            host = _host_path(volume)
            if host is None:
                assert volume.split(":", 1)[0] in named_volumes, f"{name}: undeclared volume {volume}"
            else:
                assert host.exists(), f"{name}: {volume} mounts a missing path"
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"


def test_host_ports_are_unique() -> None:
    published = [str(p).rsplit(":", 2)[-2] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published))


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_commands_are_real_subcommands(name: str) -> None:
    command = COMPONENTS[name]["command"]
    words = [w for w in command if not w.startswith("-") and not w.startswith("/")]
    result = CliRunner().invoke(app, [*words, "--help"], env={"MARKETPRISM_METRICS_PORT": "0"})
    assert result.exit_code == 0, f"{name}: `marketprism {' '.join(words)}` is not a command\n{result.output}"


def test_component_settings_point_at_compose_services() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "infra/marketprism.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    kafka_host = env["MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS"].split(":")[0]
    assert kafka_host in SERVICES
    assert env["MARKETPRISM_CLICKHOUSE_URL"].split("@")[1].split(":")[0] in SERVICES
    listeners = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"//{env['MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS']}" in listeners


def test_prometheus_scrapes_existing_services_and_loads_its_rules() -> None:
    config = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    env_port = "9108"
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    for target in targets:
        host, port = target.split(":")
        assert host == "localhost" or host in SERVICES, f"scrape target {target} is not a service"
        if host in COMPONENTS:
            assert port == env_port
    assert set(COMPONENTS) - {"topics-init", "db-migrate"} <= {t.split(":")[0] for t in targets}
    mount = next(v for v in SERVICES["prometheus"]["volumes"] if v.startswith("./infra/prometheus"))
    for rule_file in config.get("rule_files", []):
        local = ROOT / "infra/prometheus" / Path(rule_file).relative_to(mount.split(":")[1])
        rules = yaml.safe_load(local.read_text())
        assert all(r["expr"] and r["alert"] for g in rules["groups"] for r in g["rules"])


def test_grafana_provisioning_points_at_existing_services_and_dashboards() -> None:
    grafana = SERVICES["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources/clickhouse.yaml").read_text())["datasources"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    uids = set()
    for source in datasources:
        assert source["jsonData"]["host"] in SERVICES
        uids.add(source["uid"])
    providers = yaml.safe_load((provisioning / "dashboards/marketprism.yaml").read_text())["providers"]
    for provider in providers:
        local = mounts[provider["options"]["path"]]
        dashboards = list(local.glob("*.json"))
        assert dashboards, f"no dashboards in {local}"
        for dashboard in dashboards:
            text = dashboard.read_text()
            for uid in re.findall(r'"uid":\s*"(marketprism-[a-z-]+)"', text):
                if "clickhouse" in uid:
                    assert uid in uids, f"{dashboard.name} uses unknown datasource {uid}"


def test_mounted_notifier_config_is_valid() -> None:
    service = SERVICES["notify"]
    routes = service["command"][service["command"].index("--routes") + 1]
    mount = next(v for v in service["volumes"] if v.split(":")[1] == routes)
    result = CliRunner().invoke(app, ["notify", "check", "--routes", str(ROOT / mount.split(":")[0])])
    assert result.exit_code == 0, result.output
