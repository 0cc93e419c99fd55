# Xen lane (issue 7): Xen 4.17 + Debian 6.1 dom0 under qemu TCG, real `xl create` of PV domains
# whose /init is tessera-guest-agent, first by hand (agent part), then through tessera-shim and
# crictl (shim part). Scripts: hack/xen/. Knobs (XEN_PARTS, XEN_DOM0_TEST, ...): hack/xen/e2e-xen.sh.
.PHONY: e2e-xen xen-guest-image

e2e-xen: deps ## Xen lane under qemu TCG: tessera-shim + crictl and the guest agent in real PV domains
	@bash hack/xen/e2e-xen.sh

xen-guest-image: ## build (or reuse) the tessera-xen guest kernel + initramfs under ~/.cache/tessera
	@bash hack/xen/build-guest-image.sh

.PHONY: bench-shim
bench-shim: deps ## latency tessera-shim adds to delegated pods: crictl loop vs containerd directly (BENCH_N=20)
	@cargo build -q --release -p tessera-shim
	@bash hack/critest/run.sh "$(CARGO_TARGET_DIR)/release/tessera-shim" --bench $(or $(BENCH_N),20)
