.PHONY: chart-render chart-check
chart-render: ## re-render deploy/rendered/tessera.yaml from charts/tessera (commit the result)
	@bash hack/chart/render.sh

chart-check: deps ## the chart checks alone (lint, kubeconform, drift, hadolint, install/upgrade/uninstall, RBAC)
	@bash hack/test.d/50-chart.sh
