# Every target bootstraps the virtualenv from pyproject.toml on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit test-e2e bench chaos lint up down status venv system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# From Debian when missing (needs root): PostgreSQL server binaries; kcat, the plain Kafka client the
# tests use to show that any producer can write our usage messages; wrk, the quota benchmark's load generator.
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v kcat >/dev/null 2>&1 || missing="$$missing kcat"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian:$$missing"; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: venv system-deps
	$(BIN)/billing demo

test: venv system-deps
	$(BIN)/pytest -q

test-unit: venv
	$(BIN)/pytest -q -m unit

# Tests that run several services as processes (marker e2e): tests/e2e (the three services bill a month) and
# the short fault suite (kill -9, poison corpus); on the stack `make up` runs.
test-e2e: venv system-deps
	$(BIN)/pytest -q -m e2e

bench: venv system-deps
	$(BIN)/python -m bench.run

# The fault suite (issue 12) on a PRIVATE stack (var/chaos/stack, ports 29092/29093/25432/22111), never the
# shared one: kill -9, Kafka and PostgreSQL outages under load, the poison corpus. Table: var/chaos/results.json.
chaos: venv system-deps
	$(BIN)/python -m chaos

lint: venv
	$(BIN)/ruff check shared services tests bench deploy chaos
	$(BIN)/mypy shared services chaos
	$(BIN)/lint-imports

up: venv system-deps
	$(BIN)/python deploy/stack.py up

down:
	$(PYTHON) deploy/stack.py down

status:
	$(PYTHON) deploy/stack.py status

clean: down
	rm -rf var/stack
