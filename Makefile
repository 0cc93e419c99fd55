# Tessera: the two commands a newcomer needs are `make dev` and `make test`.
# Each installs what it needs first (hack/deps.sh is idempotent).
SHELL := /bin/bash
export PATH := $(HOME)/.cache/tessera/bin:$(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# Rust build artifacts are shared by every clone on this machine (CI builds a fresh clone each time),
# keyed by the pinned toolchain, so only the workspace's own crates rebuild in a new clone.
RUST_TOOLCHAIN := $(shell sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tessera/cargo-target-$(RUST_TOOLCHAIN)

.PHONY: help deps build test dev dev-down crds fmt
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

deps: ## install Debian packages, cargo tools and the Go-built Kubernetes tools (idempotent)
	@bash hack/deps.sh

build: ## build every binary of the workspace
	$(CARGO) build --workspace --bins

test: deps ## run every test stage, printing each stage's wall time
	@bash hack/test.sh

dev: deps ## start a local control plane, install the CRDs, apply the samples
	@bash hack/dev.sh up

dev-down: ## stop the local control plane started by `make dev`
	@bash hack/dev.sh down

crds: ## regenerate charts/tessera/crds from the Rust types
	$(CARGO) run -q -p tessera-crds --bin crdgen -- --out charts/tessera/crds

fmt: ## format the Rust code
	$(CARGO) fmt --all

# Each area adds its own lanes (e2e-md, gpu-test, ...) in mk/<area>.mk.
-include mk/*.mk
