#!/usr/bin/env bash
# The end-to-end lane (make e2e) as a test stage: helm install, operator and node agent with the
# chart's tokens, samples, VGpuClaim lifecycle. About a minute.
set -euo pipefail
exec bash "$(dirname "$0")/../e2e.sh"
