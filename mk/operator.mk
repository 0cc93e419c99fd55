# Operator lanes (issue 5).
.PHONY: bench-operator
bench-operator: deps ## scale benchmark: 1,000 StoragePools + 10,000 VGpuClaims; latency p50/p99, operator peak RSS
	$(CARGO) build -q --release -p tessera-operator --bin tessera-operator --example scale_bench
	$(CARGO_TARGET_DIR)/release/examples/scale_bench $(or $(POOLS),1000) $(or $(CLAIMS),10000)
