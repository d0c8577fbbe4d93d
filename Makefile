# Two entry points, each setting itself up on a fresh machine:
#   make book   execute every chapter (papermill, profile $(PROFILE)) and build the HTML book
#   make test   run the test suite (unit, numerics, pipeline, browser)
# Data: $HESSIAN_LIB_DATA names the CIFAR-100 folder (or pass DATA_ROOT=...); without it the
# data goes to ~/.cache/hessian_lib/cifar100 and torchvision downloads it when online.

PYTHON ?= python3
VENV ?= .venv
PROFILE ?= cpu
DATA_ROOT ?=
PYTEST_ARGS ?=
BOOK_ARGS ?=
export HESSIAN_LIB_DOWNLOAD ?= 1

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test setup system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[book,test,bench]'
	touch $@

# Chromium for the browser tests, npm for the book's vendored JavaScript.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && apt-get install -y -q chromium nodejs npm; \
	  else \
	    echo "Please install Chromium, Node.js and npm (Debian: sudo apt-get install chromium nodejs npm)"; exit 1; \
	  fi; \
	fi

setup: $(STAMP) system-deps
	$(PY) -c "from hessian_lib.vendor import ensure_vendor_assets; ensure_vendor_assets()"

book: setup
	$(PY) -m hessian_lib book --profile $(PROFILE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(BOOK_ARGS)

test: setup
	$(if $(DATA_ROOT),HESSIAN_LIB_DATA=$(DATA_ROOT)) $(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf _build .vendor
