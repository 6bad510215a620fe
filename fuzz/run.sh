#!/usr/bin/env bash
# Runs every libFuzzer target of a build for DURATION seconds each, all at
# once. Builds nothing: configure with
# `CC=clang meson setup BUILD_DIR -Dfuzz=true` and build first.
#
# Each target starts from a fresh seed corpus (made by the encoder) plus
# fuzz/corpus-<target>/ when that directory exists, all copied to a
# temporary directory so the run leaves the tree untouched. Crash inputs are
# kept in BUILD_DIR/fuzz/artifacts/. Exits non-zero if any target fails.
#
# Usage: fuzz/run.sh BUILD_DIR DURATION
set -u

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR DURATION" >&2
  exit 2
fi
build=$1
duration=$2
case $duration in
  '' | *[!0-9]*)
    echo "DURATION must be whole seconds" >&2
    exit 2
    ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
bin="$build/fuzz"
targets="fuzz_decode fuzz_roundtrip fuzz_ws_handshake fuzz_tls_record"

for t in $targets fuzz_corpus_gen; do
  if [ ! -x "$bin/$t" ]; then
    echo "$bin/$t missing: build with -Dfuzz=true first" >&2
    exit 2
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin/fuzz_corpus_gen" "$tmp/seeds" || exit 1
artifacts="$build/fuzz/artifacts"
mkdir -p "$artifacts"

# Halt at the first report so a finding becomes a crash libFuzzer records.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# The targets run side by side (one core each), then report in order.
for t in $targets; do
  corpus="$tmp/corpus/$t"
  mkdir -p "$corpus"
  cp -R "$tmp/seeds/$t/." "$corpus/"
  if [ -d "$here/corpus-$t" ]; then
    cp -R "$here/corpus-$t/." "$corpus/"
  fi
  echo "== $t for ${duration}s ($(ls "$corpus" | wc -l) seed inputs)"
  "$bin/$t" -max_total_time="$duration" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$t-" "$corpus" >"$tmp/$t.log" 2>&1 &
  echo $! >"$tmp/$t.pid"
done

passed=0
failed=0
for t in $targets; do
  wait "$(cat "$tmp/$t.pid")"
  rc=$?
  log="$tmp/$t.log"
  if [ $rc -eq 0 ]; then
    echo "   $t:"
    grep -E '^stat::number_of_executed_units|^Done ' "$log" | sed 's/^/   /'
    passed=$((passed + 1))
  else
    echo "!! $t exited with status $rc; last lines of its log:"
    tail -n 60 "$log"
    echo "!! crash inputs, if any, are in $artifacts"
    failed=$((failed + 1))
  fi
done

echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
