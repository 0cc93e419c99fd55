# End-to-end lane (issue 8): the user's path on a local control plane.
.PHONY: e2e
e2e: deps ## helm install + operator and node agent (dry run) with the chart's tokens + samples + VGpuClaim lifecycle
	@bash hack/e2e.sh
