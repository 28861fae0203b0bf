# The two commands: `make demo` and `make test`. Both install exactly what uv.lock says first.
#
#   make test                      # Python 3.11 in .venv
#   make test PYTHON=3.12          # another supported Python, in .venv-3.12
#   make lock                      # re-resolve uv.lock after editing pyproject.toml (UPGRADE=1: newest allowed)
#
# Every CI workflow step (.github/workflows/) calls one of these targets, so a forge run and a local run
# cannot drift apart.
PYTHON ?= 3.11
VENV ?= $(if $(filter 3.11,$(PYTHON)),.venv,.venv-$(PYTHON))
UV_VERSION := 0.13.9
TOOLS := .tools/uv-$(UV_VERSION)
UV := $(TOOLS)/bin/uv
BIN := $(VENV)/bin
IMAGE ?= marketprism:dev
# The interpreter for PYTHON (a version such as 3.12, or a command): on PATH, else under pyenv.
PYTHON_BIN := $(shell for c in python$(PYTHON) $(PYTHON) $$HOME/.pyenv/versions/$(PYTHON)*/bin/python3; do \
	$$c -c 'import sys' >/dev/null 2>&1 && { command -v $$c; break; }; done)

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1

.PHONY: demo test check venv lock lint format typecheck security audit actionlint configs \
	clickhouse-server amtool stunnel chromium kubectl zookeeper policy pytest bench-nightly image image-push image-check image-scan dist clean

$(UV):
	@test -n "$(PYTHON_BIN)" || { echo "no Python $(PYTHON) found (PATH or ~/.pyenv/versions)"; exit 2; }
	@$(PYTHON_BIN) -m venv $(TOOLS)
	@$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Exactly the lock: uv sync adds what is missing and removes what the lock does not name.
venv: $(UV)
	@$(UV) sync --locked --quiet --python $(PYTHON_BIN) || { echo "uv.lock does not match pyproject.toml: run make lock"; exit 1; }

# checkov (the policy scan of deploy/k8s) in a locked environment of its own: its pins would downgrade the
# project's test tools (pytest, packaging) if it shared the project's lock.
POLICY_ENV := .tools/policy
policy: $(UV)
	@cd tools/policy && UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(POLICY_ENV) $(CURDIR)/$(UV) sync --locked --quiet --python $(PYTHON_BIN) \
		|| { echo "tools/policy/uv.lock does not match its pyproject.toml: run make lock"; exit 1; }

lock: $(UV)
	$(UV) lock $(if $(UPGRADE),--upgrade,)
	cd tools/policy && $(CURDIR)/$(UV) lock $(if $(UPGRADE),--upgrade,)

demo: venv
	$(BIN)/marketprism demo

# Quality gates: `make test` runs them before the suite.
check: lint format typecheck security audit actionlint configs

lint: venv
	$(BIN)/ruff check .

format: venv
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# ruff's flake8-bandit rules (S) are part of `lint`; this runs them alone (S101 as in pyproject: asserts state invariants).
security: venv
	$(BIN)/ruff check --select S --ignore S101 --output-format concise .

audit: venv
	@$(UV) export --frozen --quiet --no-emit-project --no-hashes --format requirements-txt > $(VENV)/audit-requirements.txt
	$(BIN)/python tools/audit.py $(VENV)/audit-requirements.txt

actionlint: venv
	$(BIN)/actionlint -color=false .github/workflows/*.yml

# Rule files, notifier configs, the topic registry and its schemas, compose and deployment files.
configs: venv kubectl policy
	$(BIN)/marketprism alerts rules --rules pipeline/demo/rules.yaml > /dev/null
	$(BIN)/marketprism notify check --routes infra/notify.yaml > /dev/null
	$(BIN)/marketprism topics list > /dev/null
	$(BIN)/marketprism topics schemas
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy tests/contracts

# apt-install $(1) (a Debian package) unless the command (or file) $(2) is there, with sudo when not root; when apt
# cannot, say so: the tests that need it skip with the reason (and fail with CI=true).
define apt_install
	@if ! command -v $(2) >/dev/null 2>&1 && ! test -x /usr/sbin/$(2) && ! test -x /usr/bin/$(2) && ! test -e $(2); then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
		if command -v apt-get >/dev/null 2>&1 && $$SUDO true 2>/dev/null; then \
			echo "installing $(1) with apt"; \
			($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(1) >/dev/null) \
				|| echo "apt could not install $(1); the tests that need $(2) will be skipped"; \
		else \
			echo "$(2) missing and apt unavailable (not root, no sudo); the tests that need it will be skipped"; \
		fi; \
	fi
endef

# Debian's clickhouse-server: the sink's network path against a real server.
clickhouse-server:
	$(call apt_install,clickhouse-server,clickhouse-server)

# Debian's prometheus-alertmanager ships amtool, the real Alertmanager client the API's v2 compatibility tests drive.
amtool:
	$(call apt_install,prometheus-alertmanager,amtool)

# Debian's stunnel4: the TLS endpoint in front of the local broker for the secured-transport tests.
stunnel:
	$(call apt_install,stunnel4,stunnel4)

# Debian's Chromium: the real browser the console tests drive through Playwright (Playwright's own download cannot
# work here).
chromium:
	$(call apt_install,chromium,chromium)

# Debian's kubernetes-client: `kubectl kustomize` renders deploy/k8s for the offline manifest checks.
kubectl:
	$(call apt_install,kubernetes-client,kubectl)

# Debian's zookeeper: the coordination service of the two-node clickhouse-server cluster test (Debian's
# clickhouse-server 18.16 predates ClickHouse Keeper).
zookeeper:
	$(call apt_install,zookeeper libslf4j-java,/usr/share/java/zookeeper.jar)

pytest: venv clickhouse-server amtool stunnel chromium kubectl zookeeper
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: check pytest

# The long runs CI does nightly: every benchmark at its full size and the NAB corpus; reports land in
# $(REPORTS) (docs/benchmarks.md says how to read them).
REPORTS ?= reports
SHARED ?= $(or $(MARKETPRISM_SHARED_DIR),../shared)
bench-nightly: venv
	@mkdir -p $(REPORTS)
	$(BIN)/marketprism bench collect | tee $(REPORTS)/collect.txt
	$(BIN)/marketprism bench aggregate | tee $(REPORTS)/aggregate.txt
	$(BIN)/marketprism bench sink | tee $(REPORTS)/sink.txt
	$(BIN)/marketprism bench anomaly | tee $(REPORTS)/anomaly.txt
	$(BIN)/marketprism bench alerting | tee $(REPORTS)/alerting.txt
	$(BIN)/marketprism bench notify | tee $(REPORTS)/notify.txt
	$(BIN)/marketprism bench simulate | tee $(REPORTS)/simulate.txt
	$(BIN)/marketprism bench broker | tee $(REPORTS)/broker.txt
	$(BIN)/marketprism bench nab $(SHARED)/nab --results $(REPORTS)/nab | tee $(REPORTS)/nab.txt

dist: $(UV)
	$(UV) build --out-dir dist

# The image targets need a Docker engine (the forge has one; these development machines do not).
image:
	docker build --tag $(IMAGE) .

image-push:
	docker push $(IMAGE)

image-check:
	tools/image-check.sh $(IMAGE)

image-scan: venv
	docker run --rm --entrypoint python $(IMAGE) -c \
		'import importlib.metadata as m; print("\n".join(sorted(f"{d.name}=={d.version}" for d in m.distributions())))' \
		> $(VENV)/image-requirements.txt
	$(BIN)/python tools/audit.py $(VENV)/image-requirements.txt

clean:
	rm -rf .venv .venv-* .tools .marketprism dist
