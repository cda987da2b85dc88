# Two commands: `make run` starts the proxy, `make test` runs every check.
# Both create (or reuse) the virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run simulate test lint typecheck unit browser helm-env bench upgrade clean

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

# The status page's browser test needs Debian's chromium and chromium-driver: installed here when
# missing and running as root; otherwise that test skips (and fails under CI=true).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 chromium chromium-driver; \
	else echo "chromium or chromedriver missing and not root: the browser test will skip"; fi

# The Helm chart's test renders it with helm-sdkpy (Helm as a library), which needs Python
# >= 3.12: this keeps a separate environment for it in .venv/helm-py312 (Python found on PATH or
# under pyenv; without one the test skips, and fails under CI=true).
helm-env: $(STAMP)
	$(BIN)/python -m tests.helm_env

unit: $(STAMP) browser helm-env
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck unit

# The benchmarks of issue 8 (about 5 minutes; README "Performance"). They compare against
# Debian's nginx and load with Debian's wrk: both are installed here when missing and running
# as root (RUNLEVEL=1: the package must not start a system nginx); otherwise nginx is left out
# and bench/loadgen.py's asyncio client replaces wrk.
bench: $(STAMP)
	@if { command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null && command -v wrk >/dev/null; \
	then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 nginx-light wrk; \
	else echo "nginx or wrk missing and not root: the benchmarks run without them"; fi
	$(BIN)/python bench/sidecar.py $(ARGS)
	$(BIN)/python bench/streams.py
	$(BIN)/python bench/cluster.py --figures 24 --command-rates 500 --command-seconds 20 \
		--idle-seconds 3 --transitions 10

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
