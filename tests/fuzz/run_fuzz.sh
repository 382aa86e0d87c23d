#!/usr/bin/env bash
# Builds the libFuzzer targets with clang into build-fuzz/ and fuzzes parse_header for a while.
#
#   tests/fuzz/run_fuzz.sh [seconds]      (default 60)
#
# The fuzzer runs on a copy of the seed corpus in a temporary directory, so the committed
# tests/fuzz/corpus/ never changes. Exits non-zero on any crash, sanitizer report, leak, timeout
# (a hang: one input over 10 s) or OOM (over 2 GiB); the reproducer is kept under
# build-fuzz/artifacts/<date>/ and the log in build-fuzz/fuzz-safetensors.log.
# Environment: FUZZ_BUILD (build dir, default build-fuzz), CC_FUZZ / CXX_FUZZ (default clang /
# clang++), FUZZ_JOBS (ninja -j, default 2), FUZZ_KEEP=1 keeps the grown temporary corpus.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: $0 [seconds]" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${FUZZ_BUILD:-$root/build-fuzz}"
fuzzer="$build/tests/fuzz/safetensors_fuzz"
seeds="$root/tests/fuzz/corpus/safetensors"
dict="$root/tests/fuzz/safetensors.dict"
artifacts="$build/artifacts/$(date +%Y%m%d-%H%M%S)"
log="$build/fuzz-safetensors.log"

cmake -S "$root" -B "$build" -G Ninja \
    -DCMAKE_C_COMPILER="${CC_FUZZ:-clang}" -DCMAKE_CXX_COMPILER="${CXX_FUZZ:-clang++}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCHAINIO_BUILD_FUZZ=ON -DCHAINIO_BUILD_TESTS=OFF -DCHAINIO_BUILD_BENCH=OFF \
    -DCHAINIO_BUILD_PYTHON=OFF -DCHAINIO_SANITIZE= >/dev/null
cmake --build "$build" --target safetensors_fuzz -j "${FUZZ_JOBS:-2}" >/dev/null

work="$(mktemp -d "${TMPDIR:-/var/tmp}/chainio-fuzz-XXXXXX")"
cleanup() { [ "${FUZZ_KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/corpus" "$artifacts"
cp "$seeds"/* "$work/corpus/"

echo "fuzzing parse_header for ${seconds} s ($(ls "$work/corpus" | wc -l) seeds, log: $log)"
rc=0
ASAN_OPTIONS="detect_leaks=1:symbolize=1:${ASAN_OPTIONS:-}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}" \
    "$fuzzer" "$work/corpus" \
    -dict="$dict" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -detect_leaks=1 -print_final_stats=1 \
    -artifact_prefix="$artifacts/safetensors-" >"$log" 2>&1 || rc=$?

found="$(ls "$artifacts" | grep '^safetensors-' || true)"
execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
last="$(grep -E '^#[0-9]+' "$log" | tail -1 || true)"
cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
corp="$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")"
if [ "$rc" -ne 0 ] || [ -n "$found" ] || grep -qE 'ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|runtime error:|check failed' "$log"; then
    [ "${FUZZ_KEEP:-0}" != 1 ] || echo "corpus kept in $work/corpus" >&2
    echo "safetensors_fuzz: FAILED (exit $rc) after ${execs:-?} execs; see $log" >&2
    grep -E 'ERROR:|SUMMARY:|runtime error:|check failed|Test unit written' "$log" | head -20 >&2 || true
    [ -z "$found" ] || echo "reproducer(s) in $artifacts: $found (run: $fuzzer <file>)" >&2
    exit 1
fi
rmdir "$artifacts" 2>/dev/null || true
[ "${FUZZ_KEEP:-0}" != 1 ] || echo "corpus kept in $work/corpus"
echo "safetensors_fuzz: OK ${seconds} s, ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
