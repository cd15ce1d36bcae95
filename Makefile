# One-word targets. Each does its own set-up: venv + packages, Kafka jars (Maven), local broker.
VENV    ?= .venv
PY      := $(VENV)/bin/python
KAFKA   := dev/kafka/kafka.sh
PYTEST_ARGS ?=

.PHONY: all venv broker broker-stop demo test lint chaos chaos-small bench clean

all: test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

broker:
	$(KAFKA) start

broker-stop:
	$(KAFKA) stop

## The main job on the embedded local broker: topic, sample load, 3 workers, summary.
demo: venv broker
	$(VENV)/bin/stream-replica demo $(DEMO_ARGS)

## The suite (what .ci/run calls). Starts the local broker unless KAFKA_BOOTSTRAP_SERVERS is set.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check stream_replica tests benchmarks
	$(VENV)/bin/ruff format --check stream_replica tests benchmarks
	$(VENV)/bin/mypy stream_replica

## Faults under load; knobs: CHAOS_ARGS="--grains 5000 --records 200000 --kills 20 ..."
chaos: venv broker
	$(PY) -m benchmarks.chaos $(CHAOS_ARGS)

chaos-small: venv broker
	$(PY) -m benchmarks.chaos --small

## Throughput side by side; knobs: BENCH_ARGS="--records 500000 ..."
bench: venv broker
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

clean:
	-$(KAFKA) clean
	rm -rf .demo .chaos .bench
