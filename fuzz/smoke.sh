#!/usr/bin/env bash
# Builds every fuzz target once and runs each for a bounded time (the CI smoke run;
# docs/fuzzing.md). Usage: fuzz/smoke.sh [seconds per target] [target...]
# A crash, a leak of the rss limit or an input slower than the timeout fails the run;
# the input is left in fuzz/artifacts/<target>/ to turn into a regression test.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^sidekey-fuzz$')
fi

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION (about a minute, once per machine)"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Outside the clone, so that CI (a fresh clone on the same machine) reuses the
# instrumented dependencies and rebuilds only Sidekey's own crates. The corpus is kept
# there too: each smoke run starts from what the earlier ones found.
cache=${SIDEKEY_FUZZ_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/sidekey}
target_dir=$cache/fuzz-target

# No sanitizer: the code under test forbids `unsafe`, so what libFuzzer finds here is
# panics, hangs and memory blow-ups, which need none; and `-s none` builds on stable
# Rust without RUSTC_BOOTSTRAP. Debug assertions stay on (overflow checks).
build=(cargo fuzz build -O -s none --debug-assertions --target-dir "$target_dir")
start=$(date +%s)
"${build[@]}"
echo "fuzz: built ${#targets[@]} targets in $(( $(date +%s) - start )) s"

bin=$target_dir/x86_64-unknown-linux-gnu/release
failed=()
for t in "${targets[@]}"; do
  corpus=$cache/fuzz-corpus/$t
  mkdir -p "$corpus" "artifacts/$t" "regressions/$t"
  seeds=("regressions/$t")
  case $t in
    admission_bytes) seeds+=(../webhook/tests/data) ;;
  esac
  extra=()
  [ -f "$t.dict" ] && extra+=(-dict="$t.dict")
  [ "$t" = template ] && extra+=(-max_len=16384)
  # -timeout: one input taking longer is a hang; -rss_limit_mb: memory is bounded;
  # the corpus of earlier runs is reused, the regressions replayed first.
  if "$bin/$t" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 \
      -print_final_stats=1 "${extra[@]}" \
      -artifact_prefix="artifacts/$t/" "$corpus" "${seeds[@]}" \
      > "artifacts/$t.log" 2>&1; then
    echo "fuzz: $t ok ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "artifacts/$t.log" | grep -o '[0-9]*$') runs)"
  else
    echo "fuzz: $t FAILED; log: fuzz/artifacts/$t.log"
    grep -m1 -A4 "panicked\|ERROR: libFuzzer" "artifacts/$t.log" || true
    failed+=("$t")
  fi
done
echo "fuzz: ${#targets[@]} targets in $(( $(date +%s) - start )) s"
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: failed: ${failed[*]}"; exit 1; }
