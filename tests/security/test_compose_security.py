"""Static security checks of the deployment stack (no Docker engine runs here): no password in the repository,
every secret required from the untracked .env, least-privilege ClickHouse users, Grafana's admin password required,
published ports on loopback only, /metrics and Kafka unpublished beyond the host."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
REQUIRED = re.compile(r"^\$\{([A-Z0-9_]+):\?[^}]+\}$")
OPTIONAL_EMPTY = re.compile(r"^\$\{([A-Z0-9_]+):-\}$")  # a feature's secret, off when unset: never a default value
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$", re.I)
USERS = ET.parse(ROOT / "infra/clickhouse/users.d/marketprism.xml").getroot()  # noqa: S314 - our own file


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for env_file in service.get("env_file", []):
        for line in (ROOT / env_file).read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
    return env | {k: str(v) for k, v in (service.get("environment") or {}).items()}


def template_names() -> list[str]:
    lines = (ROOT / "infra/env.template").read_text().splitlines()
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def grants(user: str) -> list[str]:
    node = USERS.find(f"users/{user}")
    assert node is not None, user
    return [q.text or "" for q in node.findall("grants/query")]


def test_every_secret_is_required_from_the_environment_never_written_down() -> None:
    required: set[str] = set()
    for name, service in SERVICES.items():
        for key, value in env_of(service).items():
            if SECRETISH.search(key):
                match = REQUIRED.match(value) or OPTIONAL_EMPTY.match(value)
                assert match, f"{name}: {key} must be ${{VAR:?...}} (a required variable from .env), got {value!r}"
                required.add(match.group(1))
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), f"{name}: {key} carries a password in a URL"
    assert required == set(template_names()), "infra/env.template must list exactly the variables compose reads"
    for path in [ROOT / "docker-compose.yml", *ROOT.glob("infra/**/*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not re.search(r"(?i)password\s*[:=]\s*['\"]?(marketprism|admin|change-?me|secret)\b", text), path
            assert ":-marketprism" not in text and "admin/admin" not in text, path


def test_env_template_generator_fills_every_variable_privately(tmp_path: Path) -> None:
    (tmp_path / "infra").mkdir()
    for name in ("make-env.sh", "env.template"):
        (tmp_path / "infra" / name).write_bytes((ROOT / "infra" / name).read_bytes())
    script = tmp_path / "infra/make-env.sh"
    script.chmod(0o755)
    subprocess.run([str(script)], check=True, capture_output=True)
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines() if "=" in line)
    assert set(env) == set(template_names()) and all(len(v) >= 32 for v in env.values())
    assert len(set(env.values())) == len(env)  # one random value each
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([str(script)], capture_output=True, check=False)
    assert again.returncode != 0  # never overwrites the secrets a stack's data is locked with
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_published_ports_are_loopback_only_and_components_publish_none() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"
        if service.get("build") and name != "api":  # the API is the operators' port (authenticated)
            assert not service.get("ports"), f"{name}: /metrics is for Prometheus on the compose network"
    kafka = SERVICES["kafka"]["environment"]
    assert "EXTERNAL://localhost:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_clickhouse_users_have_least_privilege() -> None:
    assert grants("marketprism_sink") == ["GRANT SELECT, INSERT ON marketprism.*"]
    assert grants("marketprism_reader") == ["GRANT SELECT ON marketprism.*"]
    reader = USERS.find("users/marketprism_reader/profile")
    assert reader is not None and reader.text == "marketprism_readonly"
    assert USERS.findtext("profiles/marketprism_readonly/readonly") in ("1", "2")
    for query in grants("marketprism_migrate"):
        assert query.endswith("ON marketprism.*") and "ACCESS" not in query and " ALL " not in f" {query} "
    for user in USERS.findall("users/*"):
        assert user.find("access_management") is None, f"{user.tag} must not manage access"
        password = user.find("password")
        assert password is not None and password.get("from_env") and not (password.text or "").strip()
    ch = SERVICES["clickhouse"]["environment"]
    assert ch["CLICKHOUSE_USER"] == "marketprism_admin"  # the only access manager, used by no component
    for name, service in SERVICES.items():
        url = env_of(service).get("MARKETPRISM_CLICKHOUSE_URL", "")
        assert "marketprism_admin" not in url and "default@" not in url, name
    assert env_of(SERVICES["sink"])["MARKETPRISM_CLICKHOUSE_URL"].startswith("clickhouse://marketprism_sink@")
    assert "--no-migrate" in SERVICES["sink"]["command"]
    assert env_of(SERVICES["db-migrate"])["MARKETPRISM_CLICKHOUSE_URL"].startswith("clickhouse://marketprism_migrate@")
    if "api" in SERVICES:  # reads history only
        assert env_of(SERVICES["api"])["MARKETPRISM_CLICKHOUSE_URL"].startswith("clickhouse://marketprism_reader@")
    datasource = yaml.safe_load((ROOT / "infra/grafana/provisioning/datasources/clickhouse.yaml").read_text())
    [source] = datasource["datasources"]
    assert source["jsonData"]["username"] == "marketprism_reader"
    assert source["secureJsonData"]["password"] == "$CLICKHOUSE_READER_PASSWORD"


def test_grafana_requires_an_admin_password_and_allows_no_anonymous_or_sign_up() -> None:
    env = SERVICES["grafana"]["environment"]
    assert REQUIRED.match(env["GF_SECURITY_ADMIN_PASSWORD"])
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false" and env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_components_that_checkpoint_share_a_required_key_and_metrics_stay_on_the_network() -> None:
    for name in ("anomaly", "alerts"):
        key = env_of(SERVICES[name]).get("MARKETPRISM_SECURITY__CHECKPOINT_KEY", "")
        assert REQUIRED.match(key), f"{name}: the checkpoint key must be required (a generated one dies with the box)"
    for name, service in SERVICES.items():
        if service.get("build"):
            assert env_of(service)["MARKETPRISM_METRICS_HOST"] == "0.0.0.0", name  # noqa: S104 - in-network only
