# One-word targets. Each does its own set-up: venv + packages, Kafka jars (Maven), local broker.
VENV    ?= .venv
PY      := $(VENV)/bin/python
KAFKA   := dev/kafka/kafka.sh
PYTEST_ARGS ?=

.PHONY: all venv broker broker-stop demo test lint chaos chaos-small chaos-cluster fuzz bench bench-audit bench-read rolling check-alerts clean

all: test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# With KAFKA_BOOTSTRAP_SERVERS set, the targets use that broker and start none.
broker:
ifdef KAFKA_BOOTSTRAP_SERVERS
	@echo "broker: using KAFKA_BOOTSTRAP_SERVERS=$(KAFKA_BOOTSTRAP_SERVERS); the local one is not started"
else
	$(KAFKA) start
endif

broker-stop:
	$(KAFKA) stop

# With KAFKA_PORT set (and no KAFKA_BOOTSTRAP_SERVERS), the local broker listens on
# 127.0.0.1:$(KAFKA_PORT) (dev/kafka/kafka.sh): the demo and the benches are told so. Only in its recipe: set
# globally, KAFKA_BOOTSTRAP_SERVERS would make `broker` start none.
LOCAL_BOOTSTRAP = $(if $(KAFKA_BOOTSTRAP_SERVERS),,$(if $(KAFKA_PORT),KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$(KAFKA_PORT) ))

## The main job on the embedded local broker: topic, sample load, 3 workers, summary.
demo: venv broker
	$(LOCAL_BOOTSTRAP)$(VENV)/bin/stream-replica demo $(DEMO_ARGS)

## The suite (what .ci/run calls). Starts the local broker unless KAFKA_BOOTSTRAP_SERVERS is set.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check stream_replica tests benchmarks
	$(VENV)/bin/ruff format --check stream_replica tests benchmarks
	$(VENV)/bin/mypy stream_replica benchmarks

## Faults under load on a dedicated broker (port 19092); knobs: CHAOS_ARGS="--records 200000 ..."
## CHAOS_ARGS="--cluster ..." runs it on a 3-broker cluster (ports 14092/15092/16092) with
## leader kill -9, controlled shutdown and two brokers down.
## (CHAOS_ARGS="--static": workers with instance ids and one standby replica)
chaos: venv
	$(PY) -m tests.chaos $(CHAOS_ARGS)

chaos-small: venv
	$(PY) -m tests.chaos --small

chaos-cluster: venv
	$(PY) -m tests.chaos --cluster --small

## 100,000 hostile values through both decoders; knobs: FUZZ_ARGS="--values N --atheris SECONDS"
fuzz: venv
	$(PY) -m tests.fuzz $(FUZZ_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

## Throughput side by side (ours, raw aiokafka, Kafka's perf tool, Quix, a Kafka Streams app built
## with Maven: --skip-kstreams), final states verified against the fold of the log; knobs: BENCH_ARGS="--records N --small ..."
bench: $(VENV)/.bench-installed broker
	$(LOCAL_BOOTSTRAP)$(PY) -m benchmarks.bench $(BENCH_ARGS)

## Reads over HTTP (wrk, installed when missing): local hits, forwarded reads, the Python client
## under a 5,000 records/s producer, fetch loop with/without the server; knobs: READ_ARGS="--seconds N ..."
bench-read: venv broker
	$(PY) -m benchmarks.read_bench $(READ_ARGS)

## Time of `stream-replica audit` on a store of 100k grains; knobs: AUDIT_ARGS="--grains N"
bench-audit: venv broker
	$(LOCAL_BOOTSTRAP)$(PY) -m benchmarks.audit_bench $(AUDIT_ARGS)

## Deploy and crash costs: partitions moved / records re-read per rolling restart, failover
## seconds with and without standbys; knobs: ROLLING_ARGS="--records N --legacy ..."
rolling: venv broker
	$(PY) -m benchmarks.rolling $(ROLLING_ARGS)

## promtool's check of deploy/prometheus/alerts.yml and its unit tests (alerts_test.yml);
## promtool is built with Go from the Go module proxy into .cache/bin (minutes, the first time)
PROMTOOL_VERSION := v0.316.0
.cache/bin/promtool:
	GOBIN=$(CURDIR)/.cache/bin GOFLAGS=-mod=mod go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

check-alerts: .cache/bin/promtool
	cd deploy/prometheus && $(CURDIR)/.cache/bin/promtool check rules alerts.yml
	cd deploy/prometheus && $(CURDIR)/.cache/bin/promtool test rules alerts_test.yml

clean:
	-$(KAFKA) clean
	-$(KAFKA) cluster clean
	rm -rf .demo .chaos .bench .rolling
