#!/usr/bin/env bash
# Runs criguard's cargo-fuzz targets (fuzz/fuzz_targets), each for a bounded time, on the
# machine's stable toolchain: cargo fuzz passes a few nightly-only flags, which RUSTC_BOOTSTRAP
# allows; no sanitizer (Rust's memory safety covers what ASan would; the targets look for
# panics, differences from their reference, and runaway memory or time).
#
#   tests/fuzz.sh                          every target, 60 s each
#   CRIGUARD_FUZZ_SECONDS=600 tests/fuzz.sh caller_edge
#
# A finding stops the script with the target's output and the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${CRIGUARD_FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(caller_edge audit_json policy_requests traceparent)

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz --version 0.13.2
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none --fuzz-dir fuzz
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "--> $target, ${seconds} s"
  log="fuzz/target/$target.log"
  # Each input within 10 s and 2 GiB: a slow or swelling input is a finding too.
  if ! cargo fuzz run -s none --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -v '^#[0-9]' "$log" | tail -n 60
    echo "fuzz target $target found an input: see fuzz/artifacts/$target"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log"
done
