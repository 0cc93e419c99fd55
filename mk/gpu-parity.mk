# Parity engine on the GPU (issue 4). Script: hack/gpu-parity/gpu-test.sh.
.PHONY: gpu-test gpu-test-parity gpu-parity-stage

gpu-test:: gpu-test-parity
	@true

gpu-test-parity: ## GPU parity lane: build --features cuda, stage into .gpu/parity/, run correctness tests + bench --gpu where a GPU is
	@bash hack/gpu-parity/gpu-test.sh all

gpu-parity-stage: ## build tessera-raid and the GPU test binary (--features cuda) into .gpu/parity/
	@bash hack/gpu-parity/gpu-test.sh stage
