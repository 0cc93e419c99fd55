#!/usr/bin/env bash
# Runs every test stage (hack/test.d/NN-name.sh, in name order), printing the wall time of each
# and a summary. A stage fails the run by exiting non-zero; a stage that skips says why in one line.
# TESSERA_STAGES="20-cargo-test 30-crds" limits the run to those stages.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.." || exit 2
export PATH=$HOME/.cache/tessera/bin:$PATH
T0=$(date +%s)
declare -a rows
fail=0
for s in "$HERE"/test.d/*.sh; do
  name=$(basename "$s" .sh)
  if [ -n "${TESSERA_STAGES:-}" ] && ! [[ " $TESSERA_STAGES " == *" $name "* ]]; then continue; fi
  echo "=== stage $name"
  t=$(date +%s)
  if bash "$s"; then r=ok; else r=FAILED; fail=1; fi
  d=$(( $(date +%s) - t ))
  rows+=("$(printf '%-28s %-7s %5ss' "$name" "$r" "$d")")
  echo "=== stage $name: $r in ${d}s"
done
echo
echo "=== test stages (wall time)"
printf '%s\n' "${rows[@]}"
echo "=== total $(( $(date +%s) - T0 ))s"
exit $fail
