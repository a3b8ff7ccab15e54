# Two commands do all the set-up on a fresh clone: `make demo` and `make test` (each installs first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := data/demo
OUT := demo_out

.PHONY: install test demo lint benchmark clean-demo

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check tdms scripts tests

demo: $(STAMP)
	$(PY) scripts/demo.py --data $(DEMO) --out $(OUT)

benchmark: $(STAMP)
	$(PY) scripts/bench/benchmark.py --json $(OUT)/benchmark.json --plot $(OUT)/benchmark.png

clean-demo:
	rm -rf $(OUT) $(DEMO)
