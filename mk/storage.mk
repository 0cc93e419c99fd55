# Node agent storage backends against a real kernel (issue 5). Scripts: hack/storage/, storage VM:
# hack/storage-vm/ (zfs.ko build: hack/storage-vm/zfs.sh).
.PHONY: e2e-storage

e2e-storage: ## node agent applies md RAID6, LVM raid5/6 and the LLM ZFS layout in qemu; degraded, refusal, no-op re-apply
	@bash hack/storage/e2e-storage.sh
