#!/usr/bin/env bash
# Runs every fuzz target for up to RUNS executions or SECONDS seconds, whichever comes first,
# from the committed corpus (fuzz/corpus/<target>), then merges the inputs that found new
# coverage back into it. Prints one line per target: executions, seconds, result.
#
#   fuzz/run-all.sh [SECONDS] [RUNS] [TARGET...]     (defaults: 1800 s, 10,000,000 runs, all)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Crashes land in
# fuzz/artifacts/<target>/; logs in $FUZZ_LOGS (default /tmp/conclave-fuzz).
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
runs=${2:-10000000}
shift $(( $# > 2 ? 2 : $# ))
logs=${FUZZ_LOGS:-/tmp/conclave-fuzz}
mkdir -p "$logs"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  work="$logs/work-$t"
  rm -rf "$work" && mkdir -p "$work"
  start=$(date +%s)
  cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
    -runs="$runs" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=64 \
    -print_final_stats=1 >"$logs/$t.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  # Keep only inputs that add coverage to the committed corpus.
  cargo +nightly fuzz run "$t" -- -merge=1 "fuzz/corpus/$t" "$work" >>"$logs/$t.merge.log" 2>&1
  if [ $rc -eq 0 ]; then result=ok; else result="FAILED (exit $rc, see $logs/$t.log and fuzz/artifacts/$t/)"; fi
  printf '%-20s %12s execs %6s s  %s\n' "$t" "${execs:-?}" "$took" "$result"
done
