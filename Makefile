# Two entry points, each setting itself up on a fresh machine:
#   make book   execute every chapter (papermill, profile $(PROFILE)) and build the HTML book.
#               Needs Python 3.11, make and npm (for the book's JavaScript, fetched once); never a browser.
#   make test   run the test suite (unit, numerics, pipeline, headless Chromium on a smoke build).
#               Needs Chromium as well: installed here when run as root and missing.
# Data: $HESSIAN_LIB_DATA names the CIFAR-100 folder (or pass DATA_ROOT=...); without it the
# data goes to ~/.cache/hessian_lib/cifar100. `make book` lets torchvision download it there when
# the folder is empty and the machine is online (DOWNLOAD=0 to forbid); the tests never download.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
DATA_ROOT ?=
# 1: make book may download CIFAR-100 into an empty data root (default; $HESSIAN_LIB_DOWNLOAD if set).
DOWNLOAD ?= $(or $(HESSIAN_LIB_DOWNLOAD),1)
PYTEST_ARGS ?=
BOOK_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_ENV := $(if $(DATA_ROOT),HESSIAN_LIB_DATA=$(DATA_ROOT))

.PHONY: book test setup book-deps test-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[book,test,bench]'
	touch $@

# Debian packages for the commands that are missing, as COMMAND:PACKAGE pairs: only what is missing
# is installed (one apt-get for all of it, as root), so nothing conflicts with what is there (npm comes
# with NodeSource's nodejs, and is then not missing). Without root: print the one command to run, stop.
define system_packages
	@missing=""; for pair in $(1); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing the missing system packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "Missing system packages. Please run:  sudo apt-get update && sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi
endef

# The book: Node.js and npm (to fetch the widget manager, RequireJS and MathJax once into .vendor/).
book-deps:
	$(call system_packages,node:nodejs npm:npm)

# The tests: Chromium and its driver for the browser tests, on top of what the book needs.
test-deps: book-deps
	$(call system_packages,chromium:chromium chromedriver:chromium-driver)

setup: $(STAMP) book-deps
	$(PY) -c "from hessian_lib.vendor import ensure_vendor_assets; ensure_vendor_assets()"

book: setup
	$(DATA_ENV) HESSIAN_LIB_DOWNLOAD=$(DOWNLOAD) $(PY) -m hessian_lib book --profile $(PROFILE) $(BOOK_ARGS)

# The linter (ruff, configured in pyproject.toml), then the tests and the examples in the library's docstrings.
test: setup test-deps
	$(VENV)/bin/ruff check .
	$(DATA_ENV) HESSIAN_LIB_DOWNLOAD=0 $(PY) -m pytest $(PYTEST_ARGS) tests --doctest-modules hessian_lib

clean:
	rm -rf _build .vendor
