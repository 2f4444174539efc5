#!/bin/bash
# gpu_check.sh — the CUDA path proven and measured in one run on a bare GPU machine.
#
# Builds the CUDA configuration (service libraries, OpenBLAS and stb configured out; jansson and
# pkgconf unpacked from the .deb files scripts/gpu-carry.sh put in .device-debs/), runs every
# CUDA parity test and the GPU golden test (meson suite cuda), the per-kernel development harness
# (benchmarks/cuda_dev), and the FLUX.1-dev benchmarks (benchmarks/bench_flux_gpu.c, one process
# per phase so that a crash costs one phase), and writes one results file. Every stage has its own
# time limit; a failed stage is recorded and the next one runs.
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run] [--skip-build] [--phases LIST] [--jobs N]
#
#   --out DIR       where results.txt, bench.json and the logs go (default $OUT, else ./gpu-check)
#   --dry-run       on a machine without a GPU: the same stages, the CUDA tests skipping (exit 77)
#                   and the benchmarks on the CPU at a tiny configuration; proves this script
#   --skip-build    reuse build-gpu/ from an earlier run
#   --phases LIST   benchmark phases (default peak,forward,train512,train1024,generate,attach,mixed)
#   --jobs N        build parallelism (default: all cores)
#
# Files under DIR (at most 8, for the device tool): results.txt (the summary: environment, each
# stage's status and time, test counts, every benchmark line), bench.json (one JSON object per
# figure), build.log, tests.log, bench.log, dev.log.
set -u
set -o pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
out=${OUT:-$here/gpu-check}
dry=0
skip_build=0
phases=peak,forward,train512,train1024,generate,attach,mixed
jobs=$(nproc 2>/dev/null || echo 4)
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --skip-build) skip_build=1; shift ;;
    --phases) phases=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$jobs" in '' | *[!0-9]*) echo "gpu_check: --jobs needs a number" >&2; exit 2 ;; esac
for p in ${phases//,/ }; do
    case "$p" in peak | forward | train512 | train1024 | generate | attach | mixed) ;;
    *) echo "gpu_check: unknown phase $p" >&2; exit 2 ;; esac
done
mkdir -p "$out" || exit 1
results=$out/results.txt
: >"$results"
for f in bench.json build.log tests.log bench.log dev.log; do : >"$out/$f"; done
t_start=$(date +%s)
failed=0

say() { echo "$*" | tee -a "$results"; }
elapsed() { echo $(($(date +%s) - t_start)); }
# stage NAME LIMIT_S LOG command...: runs with a time limit, appends its output to LOG, records
# the status and the time in results.txt.
stage() {
    local name=$1 limit=$2 log=$3 t0 rc
    shift 3
    t0=$(date +%s)
    echo "=== $name ($(date -u +%H:%M:%S))" >>"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then say "stage $name: ok (${took} s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then say "stage $name: TIMED OUT after ${limit} s"; failed=1
    else say "stage $name: FAILED, status $rc (${took} s; see $(basename "$log"))"; failed=1
    fi
    return $rc
}

say "flashlora gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$( [ $dry = 1 ] && echo ', DRY RUN (no GPU expected)')"

# ---- environment -------------------------------------------------------------------------------
{
    echo "--- environment"
    uname -srm
    (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")
    echo "cores: $(nproc)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
    command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1
    gcc --version | head -n 1
} 2>&1 | tee -a "$results"

# Build dependencies carried as .deb files, unpacked outside / (scripts/gpu-carry.sh).
deps=/tmp/fl-deps
if ls .device-debs/*.deb >/dev/null 2>&1; then
    mkdir -p "$deps"
    for deb in .device-debs/*.deb; do
        dpkg-deb -x "$deb" "$deps" 2>/dev/null || dpkg -x "$deb" "$deps" 2>/dev/null ||
            (cd "$deps" && ar p "$here/$deb" "$(ar t "$here/$deb" | grep '^data.tar')" | tar -x -f - -J 2>/dev/null ||
             ar p "$here/$deb" "$(ar t "$here/$deb" | grep '^data.tar')" | tar -x -f - -z) ||
            say "could not unpack $deb"
    done
    multi=$(ls -d "$deps"/usr/lib/*-linux-gnu 2>/dev/null | head -n 1)
    export PATH="$deps/usr/bin:$PATH"
    export PKG_CONFIG_LIBDIR="$multi/pkgconfig"
    export PKG_CONFIG_SYSROOT_DIR="$deps"
    export LD_LIBRARY_PATH="$multi${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    [ -x "$deps/usr/bin/pkgconf" ] && [ ! -e "$deps/usr/bin/pkg-config" ] && ln -s pkgconf "$deps/usr/bin/pkg-config"
    say "carried packages: $(cd .device-debs && ls *.deb | paste -sd' ' -)"
else
    say "no .device-debs/ (scripts/gpu-carry.sh): using the machine's own libraries"
fi

# CUDA toolkit: nvcc's tree must hold cuBLASLt; where it does not, a merged tree links in the
# cuBLAS of the machine's Python packages (nvidia-cublas).
nvcc_bin=$(command -v nvcc || true)
if [ -z "$nvcc_bin" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_bin=/usr/local/cuda/bin/nvcc; export PATH="/usr/local/cuda/bin:$PATH"; fi
if [ -n "$nvcc_bin" ]; then
    cuda_root=$(cd "$(dirname "$(readlink -f "$nvcc_bin")")/.." && pwd)
    if [ ! -e "$cuda_root/include/cublasLt.h" ]; then
        pyinc=$(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__))' 2>/dev/null || true)
        if [ -n "$pyinc" ] && [ -e "$pyinc/include/cublasLt.h" ]; then
            merged=/tmp/fl-cuda
            rm -rf "$merged"
            mkdir -p "$merged/include" "$merged/lib64"
            ln -s "$cuda_root/bin" "$merged/bin"
            for f in "$cuda_root"/include/* "$pyinc"/include/*; do ln -sf "$f" "$merged/include/"; done
            for f in "$cuda_root"/lib64/* "$cuda_root"/targets/*/lib/* "$pyinc"/lib/*; do [ -e "$f" ] && ln -sf "$f" "$merged/lib64/"; done
            for so in "$merged"/lib64/libcublas*.so.*; do b=${so%%.so.*}.so; [ -e "$b" ] || ln -s "$(basename "$so")" "$b"; done
            export CUDA_PATH=$merged PATH="$merged/bin:$PATH" LD_LIBRARY_PATH="$pyinc/lib:${LD_LIBRARY_PATH:-}"
            say "cuBLASLt not in $cuda_root: merged with $pyinc into $merged"
        else
            say "cuBLASLt headers not found (nvcc at $nvcc_bin); the configure step will say what is missing"
        fi
    fi
    say "CUDA toolkit: ${CUDA_PATH:-$cuda_root}"
fi
meson_cmd=(meson)
command -v meson >/dev/null || meson_cmd=(python3 -m mesonbuild.mesonmain)
command -v ninja >/dev/null || export PATH="$(python3 -c 'import ninja, os; print(ninja.BIN_DIR)' 2>/dev/null):$PATH"

# ---- build -------------------------------------------------------------------------------------
build=build-gpu
if [ $skip_build = 0 ] || [ ! -d $build ]; then
    rm -rf $build
    stage configure 180 "$out/build.log" "${meson_cmd[@]}" setup $build -Dcuda=enabled -Dservice=disabled \
        -Dopenblas=disabled -Dfuzz=disabled -Dbuildtype=release
    # Only what the check runs: an unrelated target cannot stop it.
    stage build 420 "$out/build.log" "${meson_cmd[@]}" compile -C $build -j "$jobs" test_cuda_basics test_cuda_ops \
        test_cuda_attention test_cuda_text test_cuda_conv test_flux_golden_device bench_flux_gpu attention_dev
fi
grep -E "CUDA +:|warning:" "$out/build.log" | sort | uniq -c | sort -rn | head -n 12 | tee -a "$results"
# Which instructions the attention kernels compiled to (HMMA: tensor cores), and their resources.
flash_obj=$(find $build -name '*cuda_flash.cu.o' | head -n 1)
if [ -n "$flash_obj" ] && command -v cuobjdump >/dev/null; then
    say "cuda_flash.cu SASS: $(cuobjdump --dump-sass "$flash_obj" | grep -oE '(HMMA|LDS|LDG|STS|STG|MUFU)[.A-Z0-9]*' | sort | uniq -c | sort -rn | head -n 8 | awk '{printf "%s %s, ", $2, $1}')"
    cuobjdump --dump-resource-usage "$flash_obj" 2>/dev/null | grep -E "Function|REG" | paste - - | sed 's/ \+/ /g' | head -n 6 | tee -a "$results"
fi

# ---- tests -------------------------------------------------------------------------------------
if [ -x $build/tests/cuda/test_cuda_basics ]; then
    stage "tests (suite cuda)" 300 "$out/tests.log" "${meson_cmd[@]}" test -C $build --suite cuda --no-rebuild \
        --print-errorlogs --num-processes 1 --timeout-multiplier 2
    cat $build/meson-logs/testlog.txt >>"$out/tests.log" 2>/dev/null
    grep -E "^ *[0-9]+/[0-9]+ .*(OK|FAIL|SKIP|TIMEOUT)" "$out/tests.log" | tail -n 12 | tee -a "$results"
    grep -hE "^(ok|FAIL) |passed, .* failed|skipped:" "$out/tests.log" | grep -vE "^ok " | head -n 20 | tee -a "$results"
    grep -hE "\[(F32|BF16)\].*(max \|err\||loss)" "$out/tests.log" | tee -a "$results"
else
    say "tests: not built"; failed=1
fi

# ---- per-kernel harness ------------------------------------------------------------------------
if [ -x $build/benchmarks/cuda_dev/attention_dev ]; then
    if [ $dry = 1 ]; then dev_args=(--dry-run); else dev_args=(); fi
    stage "cuda_dev attention" 120 "$out/dev.log" $build/benchmarks/cuda_dev/attention_dev "${dev_args[@]}"
    grep -v "^===" "$out/dev.log" | tail -n 16 | tee -a "$results"
fi

# ---- benchmarks --------------------------------------------------------------------------------
bench=$build/benchmarks/bench_flux_gpu
if [ -x $bench ]; then
    if [ $dry = 1 ]; then bargs=(--device cpu --config tiny --reps 2); limit=120; else bargs=(--device cuda --reps 3); limit=150; fi
    for p in ${phases//,/ }; do
        lim=$limit
        [ "$p" = generate ] && [ $dry = 0 ] && lim=240
        stage "bench $p" "$lim" "$out/bench.log" $bench "${bargs[@]}" --only "$p" --json "$out/bench.json"
    done
    # The previous attention kernels for comparison (when the default is the tensor-core one).
    if [ $dry = 0 ] && [[ ,$phases, == *,forward,* ]]; then
        FLASHLORA_CUDA_ATTENTION=simt stage "bench forward (CUDA-core attention)" "$limit" "$out/bench.log" \
            $bench "${bargs[@]}" --only forward --json "$out/bench.json"
    fi
    grep -E "^[a-zA-Z].*(ms|FAILED)|memory after|loss " "$out/bench.log" | grep -v "^===" | tee -a "$results"
else
    say "benchmarks: not built"; failed=1
fi

say "gpu_check: $( [ $failed = 0 ] && echo 'every stage ok' || echo 'SOME STAGES FAILED') in $(elapsed) s; files in $out"
exit $failed
