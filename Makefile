# Lanes: `make run` serves the API on http://127.0.0.1:8080; `make test` runs every test.
PY := .venv/bin/python
PORT ?= 8080
WORKERS ?= 2

.PHONY: setup run test unit integration faults lint format services stop clean bench bench-quick

setup:  ## install everything a fresh machine needs (idempotent)
	@scripts/setup.sh

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
	$(PY) -m mypy shared/lanes

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: setup  ## Lanes against raw RabbitMQ, a bare enqueue endpoint and Celery; report in bench/results (<= 10 min)
	$(PY) -m bench

bench-quick: setup  ## the same scenarios on small workloads (<= 2 min)
	$(PY) -m bench --quick

services: setup  ## start the embedded RabbitMQ and FerretDB and leave them running
	$(PY) -m deploy.services up

stop:  ## stop the embedded RabbitMQ and FerretDB started by `make services`
	$(PY) -m deploy.services down

clean: stop
	rm -rf .lanes .venv
