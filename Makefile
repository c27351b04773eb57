# grokscope: `make demo` and `make test` work on a fresh machine with only python3.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint mutate clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/grokscope demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check grokscope tests benchmarks analyses tools

# mutation testing of the measures' maths; MODULES="rqi phases" limits it (all: hours),
# SAMPLE=60 runs a seeded random sample of 60 mutants per module (an estimate with its interval)
mutate: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt 'mutmut==3.8.1'
	$(PY) tools/mutate.py $(if $(SAMPLE),--sample $(SAMPLE)) $(MODULES)

clean:
	rm -rf $(VENV) runs .pytest_cache
