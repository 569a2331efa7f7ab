#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (FUZZ_SECONDS each, default 20) with cargo-fuzz on
# the nightly toolchain; fails on the first crash (libFuzzer writes the input to
# artifacts/<target>/: copy it to regressions/<target>/ once fixed). Used by tests/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${FUZZ_SECONDS:-20}"
targets=(frame device_message ota_request manifest config udp_packet mqtt_packet)
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi
# Without a sanitizer and unoptimized: the parsers are safe Rust (a panic is the failure), and
# this build of the whole server takes minutes instead of a quarter of an hour.
flags=(-s none --dev)
echo "==> building the fuzz targets"
cargo +nightly fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  # A scratch copy of the seeds: the inputs libFuzzer adds are not kept in the checkout.
  work="$(mktemp -d)"
  cp -r "corpus/$target/." "$work/"
  echo "==> fuzzing $target for ${seconds}s"
  log="$work.log"
  status=0
  cargo +nightly fuzz run "${flags[@]}" "$target" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    >"$log" 2>&1 || status=$?
  grep -E "^(Done|SUMMARY)|panicked|ERROR|deadly signal" "$log" || true
  rm -f "$log"
  rm -rf "$work"
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target crashed; the input is in runtime/fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "==> fuzzing done: ${#targets[@]} targets, ${seconds}s each, no crash"
