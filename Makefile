# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test proto check-proto bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[examples,dev,dashboard]"
	touch $@

demo: $(VENV)/.installed  ## a real 3-round FL run across 3 local agents (SQLite, logs to files)
	$(PY) examples/digits/demo.py

test: $(VENV)/.installed  ## the whole suite: installs real backends, generated-code check, unit and end-to-end tests
	scripts/install_backends.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/check_proto.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pytest -v -rA

proto: $(VENV)/.installed  ## regenerate gRPC stubs from proto/
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/gen_proto.sh

bench: $(VENV)/.installed  ## every benchmark in bench/ (see bench/README.md)
	scripts/install_backends.sh
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/round_overhead.py --rounds 3 --repeats 5
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/shipper_throughput.py --start-elasticsearch
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) bench/agent_overhead.py

clean:
	rm -rf $(VENV) .fedops
