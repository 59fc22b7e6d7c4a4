# Lanes: `make run` serves the API on http://127.0.0.1:8080; `make test` runs every test.
PY := .venv/bin/python
PORT ?= 8080
WORKERS ?= auto

.PHONY: setup lock run test unit integration faults lint format services stop clean render prometheus dashboard-png bench bench-quick

setup:  ## install everything a fresh machine needs (idempotent)
	@scripts/setup.sh

lock: setup  ## rewrite the lock files from shared/, client/ and pyproject.toml's declarations (UPGRADE=1: newest allowed)
	@scripts/lock.sh $(if $(UPGRADE),--upgrade)

run: setup  ## the whole stack on the embedded default; Ctrl-C stops it
	$(PY) -m deploy.runner --port $(PORT) --workers $(WORKERS)

test: setup lint  ## the full suite against real RabbitMQ and FerretDB
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest tests/unit

integration: setup
	$(PY) -m pytest tests/integration

faults: setup  ## the fault suite; ends with a table of what each fault did
	$(PY) -m pytest tests/faults

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared/lanes client/lanes_client

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The renderer's own small environment: Python, PyYAML and the template code (no setup).
RENDER_ENV := build/render-env
RENDER_PY ?= $(RENDER_ENV)/bin/python
RENDER_FLAGS = --registry $(REGISTRY) $(if $(TAG),--tag $(TAG)) $(FLAGS)
$(RENDER_ENV)/.installed: requirements-render.lock
	python3 -m venv $(RENDER_ENV)
	$(RENDER_ENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes -r requirements-render.lock
	touch $@
render: $(if $(filter $(RENDER_ENV)/bin/python,$(RENDER_PY)),$(RENDER_ENV)/.installed)  ## manifests: make render OUT=DIR REGISTRY=ghcr.io/acme [TAG=…] [FLAGS=…] -> DIR/knative/, DIR/openfaas-ce/, DIR/openfaas-standard/
	@test -n "$(OUT)" -a -n "$(REGISTRY)" || { echo "usage: make render OUT=DIR REGISTRY=ghcr.io/acme [TAG=0.1.0] [FLAGS='--hostname …']" >&2; exit 2; }
	PYTHONPATH=shared $(RENDER_PY) -m deploy.render knative --out $(OUT)/knative $(RENDER_FLAGS)
	PYTHONPATH=shared $(RENDER_PY) -m deploy.render openfaas --openfaas-edition ce --out $(OUT)/openfaas-ce $(RENDER_FLAGS)
	PYTHONPATH=shared $(RENDER_PY) -m deploy.render openfaas --openfaas-edition standard --out $(OUT)/openfaas-standard $(RENDER_FLAGS)

prometheus: setup  ## Prometheus on http://127.0.0.1:9090 scraping `make run` (PORT), with Lanes' alerts
	$(PY) -m deploy.prometheus --target 127.0.0.1:$(PORT)

dashboard-png: setup  ## a fresh stack, Prometheus and a burst of load, drawn as build/dashboard-overview.png
	LANES_DASHBOARD_PNG=$(CURDIR)/build/dashboard-overview.png $(PY) -m pytest -q tests/integration/test_prometheus.py
	@echo "dashboard: build/dashboard-overview.png"

bench: setup  ## Lanes against raw RabbitMQ, a bare enqueue endpoint and Celery; report in bench/results (<= 15 min)
	$(PY) -m bench

bench-quick: setup  ## the same scenarios on small workloads (<= 3 min)
	$(PY) -m bench --quick

services: setup  ## start the embedded RabbitMQ and FerretDB and leave them running
	$(PY) -m deploy.services up

stop:  ## stop the embedded RabbitMQ and FerretDB started by `make services`
	$(PY) -m deploy.services down

clean: stop
	rm -rf .lanes .venv
