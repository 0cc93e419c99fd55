# NBD block device (issue 9): benchmark here, and the GPU lane packed for the device machine.
.PHONY: bench-nbd gpu-test-nbd
NBD_TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

bench-nbd: ## NBD benchmark: Tessera host memory vs nbdkit memory, table with ratios (hack/nbd/bench.sh)
	$(CARGO) build --release -p tessera-gpu-proxy -p tessera-nbd --bins
	NBD_BIN_DIR=$(NBD_TARGET_DIR)/release bash hack/nbd/bench.sh

gpu-test-nbd: ## pack the NBD GPU lane into .gpu/nbd (binaries + Debian clients) and print the run command
	bash hack/nbd/gpu-pack.sh
