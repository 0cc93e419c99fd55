# Parity engine lanes (issue 3). Scripts: hack/parity/, storage VM: hack/storage-vm/.
.PHONY: e2e-md parity-bench

e2e-md: ## real-kernel md/LVM RAID5/6 arrays in qemu, checked by tessera-raid (images cached)
	@bash hack/parity/e2e-md.sh

parity-bench: ## tessera-raid bench: Tessera vs ISA-L, single thread and all threads
	$(CARGO) run -q --release -p tessera-parity --bin tessera-raid -- bench
