# vGPU forwarding (issue 6): GPU acceptance. Run on a machine with an NVIDIA GPU and cuda-python;
# elsewhere it prints "skipped: ...". `make vgpu-stage` builds the binaries into .gpu/vgpu/.
.PHONY: gpu-test-vgpu vgpu-stage
gpu-test-vgpu: ## vGPU acceptance: cuda-python on real vs stand-in libcuda, two tenants, benchmark
	@bash hack/vgpu/gpu-test.sh

vgpu-stage: ## build tessera-gpu-proxy and the stand-in libcuda.so.1 into .gpu/vgpu/
	@bash hack/vgpu/build.sh
