# The two commands: `make demo` and `make test`. Both create/refresh .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv lint clickhouse-server clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip uv
	@$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/marketprism demo

# Installs Debian's clickhouse-server when missing and apt is usable; the tests that need it skip
# with a message otherwise.
clickhouse-server:
	@if ! command -v clickhouse-server >/dev/null 2>&1 && ! test -x /usr/sbin/clickhouse-server; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing clickhouse-server with apt"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server >/dev/null) \
				|| echo "apt could not install clickhouse-server; its tests will be skipped"; \
		else \
			echo "clickhouse-server missing and apt unavailable (not root); its tests will be skipped"; \
		fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) clickhouse-server
	$(BIN)/ruff check .
	$(BIN)/marketprism topics schemas
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .marketprism
