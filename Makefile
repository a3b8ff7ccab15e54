# Two commands do all the set-up on a fresh clone: `make demo` and `make test` (each installs first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := data/demo
OUT := demo_out

.PHONY: install test demo lint benchmark clean-demo

$(STAMP): requirements.txt setup.py
	@# the data builder's sample footage (tree.avi, vtest.avi, box.mp4, ...) is Debian's opencv-doc
	@dpkg -s opencv-doc >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q opencv-doc >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get install -y -q opencv-doc >/dev/null; }; }; } || \
		echo "note: tdms-build-data needs Debian's opencv-doc (its sample footage): sudo apt-get install opencv-doc"
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
