# make test : install what is missing, then run the whole test suite
# make chaos: run the nemeses against a cluster on separate hosts for
#             CHAOS_MINUTES (10) minutes; one JSON line of results
# make demo : install what is missing, then run an example job on a dev cluster
#             (DEMO_ARGS="--masters 3 --loadbalancers 2": three masters, a pair)
PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.uds-installed
PYTEST_ARGS ?=
CHAOS_MINUTES ?= 10
DEMO_ARGS ?=

.PHONY: setup test chaos demo bench clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml csrc/wire.h csrc/build_wire.py scripts/install-system-deps.sh
	scripts/install-system-deps.sh $(PYTHON)
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install -q --upgrade pip
	$(VENV_PYTHON) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

chaos: setup
	$(VENV_PYTHON) tests/chaos.py --minutes $(CHAOS_MINUTES)

demo: setup
	$(VENV_PYTHON) scripts/demo.py $(DEMO_ARGS)

bench: setup
	$(VENV_PYTHON) bench/wire_codec.py
	$(VENV_PYTHON) bench/fuzz_wire.py
	$(VENV_PYTHON) bench/fuse_read.py
	$(VENV_PYTHON) bench/throughput.py
	$(VENV_PYTHON) bench/latency.py
	$(VENV_PYTHON) bench/workflow.py
	$(VENV_PYTHON) bench/events.py

clean:
	rm -rf $(VENV) build *.egg-info wire/_wire_cffi.*
