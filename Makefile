# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test k8s-background test-containers lint unit proto check-proto bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[examples,dev,dashboard]"
	touch $@

demo: $(VENV)/.installed  ## a real 3-round FL run across 3 local agents (SQLite, logs to files)
	$(PY) examples/digits/demo.py

# The Kubernetes build (the longest step of a fresh machine's first run) starts first: it needs
# nothing the venv has, and builds at the lowest CPU priority while the venv is made and the other
# tests run; the Kubernetes tests run last and wait for it.
test: k8s-background $(VENV)/.installed  ## the whole suite: lint, real backends, a Docker engine and a Kubernetes control plane installed, stub check, every test
	$(MAKE) lint check-proto
	scripts/install_backends.sh
	scripts/install_docker.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -v -rA --durations=30

k8s-background:
	scripts/install_k8s.sh --background

test-containers: $(VENV)/.installed  ## only the container tests: Docker engine, images built offline, containerized FL runs
	scripts/install_backends.sh
	scripts/install_docker.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -v -rA -m containers

lint: $(VENV)/.installed  ## ruff (lint) and mypy, configured in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: $(VENV)/.installed  ## the fast tests: no real servers, no FL runs (well under a minute)
	$(PY) -m pytest -q -m "not e2e and not integration"

check-proto: $(VENV)/.installed  ## fail when the generated stubs differ from proto/
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/check_proto.sh

proto: $(VENV)/.installed  ## regenerate gRPC stubs from proto/
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/gen_proto.sh

bench: $(VENV)/.installed  ## every benchmark in bench/ (see bench/README.md)
	scripts/install_backends.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/round_overhead.py --rounds 3 --repeats 5
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/shipper_throughput.py --start-elasticsearch
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/agent_overhead.py

clean:
	rm -rf $(VENV) .fedops
