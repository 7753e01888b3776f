VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test proto lint bench install

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[torch,demo,dev,dp,ray]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/pollen demo

test: $(VENV)/.installed
	$(PY) -m pytest

proto: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iproto --python_out=src --grpc_python_out=src --pyi_out=src proto/pollen/proto/*.proto

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

# Every benchmark, each next to Flower 1.42 in the same run (installed once in
# .pollen/peers/); sizes chosen to fit in 24 GB. PEER= runs Pollen alone.
PEER ?= --peer flower
bench: $(VENV)/.installed
	$(PY) benchmarks/round_latency.py --secure $(PEER)
	$(PY) benchmarks/auth_overhead.py --repeats 3
	$(PY) benchmarks/transport_ceiling.py
	$(PY) benchmarks/throughput.py --model-mb 100 500 $(PEER)
	$(PY) benchmarks/throughput.py --model-mb 2500 --rounds 3
	$(PY) benchmarks/memory.py --model-mb 500 --nodes 2 $(PEER)
	$(PY) benchmarks/memory.py --model-mb 500 --nodes 8
	$(PY) benchmarks/cifar_round.py
	$(PY) benchmarks/simulation.py $(PEER)
	$(PY) benchmarks/simulation.py --backend process-pool
	$(PY) benchmarks/load.py --nodes 1000 --soak 600
