# Two set-up commands for a fresh machine (see README.md):
#   make demo   create .venv if needed, install, train on the bundled data, write forecasts + plots + report
#   make test   install the test extras into the same .venv, run ruff and pytest
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test bench bench-all install install-test

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e ".[test,ray]"
	# the report's browser test renders it in Debian's headless chromium
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/bayesdyn demo --out runs/demo

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check bayesdyn tests examples benchmarks
	$(VENV)/bin/ruff format --check bayesdyn tests examples benchmarks
	# One OpenMP thread unless set: small test ops gain nothing from a second thread, and on a
	# shared 2-core machine a busy core stalls every 2-thread parallel region.
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_latent_sde.py

# accuracy benchmarks against published results; rewrites the README results table
bench-all: $(VENV)/.installed-test
	$(PY) benchmarks/run_all.py --seed 0
