# The two commands (README): `make run` sets everything up and starts the server on the default
# models; `make test` sets everything up and runs the tests. Every step is pinned and idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test models peers bench-engine bench-server clean

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-test.txt
	# The differential-test peer; --no-deps because it asks for opencv-python, which clashes with
	# opencv-python-headless (its other needs are in requirements-test.txt).
	$(PIP) --no-deps rapidocr_onnxruntime==1.4.4
	touch $@

models: $(STAMP)
	$(PY) -m ocr_engine.models fetch ppocr-v4 --format all

run: models
	$(PY) setup.py $(ARGS)

test: models
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Heavy peers for benchmarks and the reference outputs (paddleocr 2.10), in their own venv.
peers:
	bash bench/setup_peers.sh

bench-engine: models peers
	$(PY) bench/engine.py

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PIP) -r requirements-bench.txt
	touch $@

bench-server: models $(BENCH_STAMP)
	$(PY) bench/server.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-peer .pytest_cache
