#!/usr/bin/env bash
# Installs what the project needs, builds every configuration and runs every test:
#   1. build/       the release build; the CUDA backend is compiled and linked whenever nvcc
#                   exists (GPU tests skip with status 77 where no GPU is usable)
#   2. build-asan/  CPU-only, AddressSanitizer + UndefinedBehaviorSanitizer
#   3. build-fuzz/  clang + libFuzzer: each fuzz target runs for FUZZ_SECONDS (default 20), two
#                   targets at a time
# Ends with one line "N passed, N failed, N skipped" and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

bash scripts/install-deps.sh || { echo "dependency installation failed"; echo "0 passed, 1 failed"; exit 1; }

export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
fuzz_seconds=${FUZZ_SECONDS:-20}
passed=0
failed=0
skipped=0
failures=()

# configure DIR [meson options...]: (re)configure a build directory from scratch when its
# options changed, else keep it so repeated runs are incremental.
configure() {
  local dir=$1
  shift
  local stamp="$dir/.flashlora-options"
  if [ -f "$dir/build.ninja" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$*" ]; then
    return 0
  fi
  rm -rf "$dir"
  meson setup "$dir" "$@" && echo "$*" > "$stamp"
}

# tally DIR LABEL: add the results of DIR's last `meson test` run to the totals.
tally() {
  local counts
  counts=$(python3 - "$1/meson-logs/testlog.json" "$2" <<'PY'
import json, sys
ok = bad = skip = 0
names = []
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    lines = []
for line in lines:
    if not line.strip():
        continue
    r = json.loads(line)
    res = r.get("result")
    if res == "OK" or res == "EXPECTEDFAIL":
        ok += 1
    elif res == "SKIP":
        skip += 1
    else:
        bad += 1
        names.append(sys.argv[2] + ":" + r.get("name", "?"))
print(ok, bad, skip, " ".join(names))
PY
)
  read -r p f s names <<<"$counts"
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
  [ -n "${names:-}" ] && failures+=($names)
  return 0
}

step_failed() {
  failed=$((failed + 1))
  failures+=("$1")
}

echo "== release build (CUDA backend compiled when nvcc is present) =="
if configure build && meson compile -C build; then
  meson test -C build --print-errorlogs --num-processes 2
  tally build release
else
  step_failed "release:build"
fi

echo "== sanitizer build (ASan + UBSan, CPU backend) =="
if configure build-asan -Dcuda=disabled -Db_sanitize=address,undefined -Db_lundef=false \
     -Dbuildtype=debugoptimized && meson compile -C build-asan; then
  meson test -C build-asan --print-errorlogs --num-processes 2 --timeout-multiplier 4
  tally build-asan asan
else
  step_failed "asan:build"
fi

# fuzz_one TARGET: runs one fuzz target for fuzz_seconds from a copy of its corpus, logging to
# build-fuzz/NAME.log; its status is the fuzzer's.
fuzz_one() {
  local target=$1 name work rc
  name=$(basename "$target")
  work=$(mktemp -d)
  local corpus_src="$root/tests/fuzz/corpus/${name#fuzz_}"
  [ -d "$corpus_src" ] && cp -r "$corpus_src/." "$work/"
  "$target" -max_total_time="$fuzz_seconds" -max_len=65536 -print_final_stats=1 "$work" \
    > "build-fuzz/$name.log" 2>&1
  rc=$?
  rm -rf "$work"
  return $rc
}

echo "== fuzz build (clang + libFuzzer, ${fuzz_seconds}s per target, two at a time) =="
if command -v clang >/dev/null; then
  if CC=clang configure build-fuzz -Dcuda=disabled -Dfuzz=enabled -Dtests=true \
       -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized &&
     meson compile -C build-fuzz; then
    targets=()
    for target in build-fuzz/tests/fuzz/fuzz_*; do
      [ -f "$target" ] && [ -x "$target" ] && targets+=("$target")
    done
    # Two targets at a time (each fuzzer is one process on one core), reported in order.
    for ((i = 0; i < ${#targets[@]}; i += 2)); do
      pids=()
      for target in "${targets[@]:i:2}"; do
        fuzz_one "$target" &
        pids+=($!)
      done
      for k in "${!pids[@]}"; do
        name=$(basename "${targets[i + k]}")
        if wait "${pids[k]}"; then
          passed=$((passed + 1))
          echo "ok   $name: $(grep -o 'stat::number_of_executed_units: [0-9]*' "build-fuzz/$name.log")"
        else
          tail -40 "build-fuzz/$name.log"
          step_failed "fuzz:$name"
        fi
      done
    done
  else
    step_failed "fuzz:build"
  fi
else
  echo "clang not found: fuzz targets not run"
  step_failed "fuzz:clang-missing"
fi

echo
[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
