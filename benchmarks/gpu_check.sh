#!/usr/bin/env bash
# GPU checks for nnx: the GPU test suite (pytest -m gpu tests/) and the GPU benchmark
# (nnx-cuda vs torch-cuda vs a CuPy floor, python -m nnx.benchmarks --device cuda --quick).
#
# Without a usable GPU (no CuPy, no driver, no device, or the probe modules missing) it prints
# "no GPU: skipped" and exits 0. With one, the benchmark JSON and PNG go to benchmarks/results/
# and, when $OUT is set (the device machine's output folder), are copied there too, with the
# test log and a JUnit XML. Exit status: the first failure of the two steps (0 when both pass;
# "no GPU tests collected" is not a failure).
#
# Environment: PYTHON (interpreter, default: python, else python3), BENCH_ARGS (extra
# arguments for the benchmark, e.g. "--workloads A,B"), PYTEST_ARGS (extra pytest arguments).
set -u
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3

probe=$("$PY" -c 'import nnx.backends.cuda_probe as p; print(p.probe_cuda())' 2>/dev/null) || probe=""
case "$probe" in
    "(True,"*) ;;
    *)
        echo "no GPU: skipped${probe:+ ($probe)}"
        exit 0
        ;;
esac

echo "GPU: $probe"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    2>/dev/null || true

results=benchmarks/results
mkdir -p "$results"
log_dir=${OUT:-$results}
mkdir -p "$log_dir"
rc=0

echo "== GPU tests: pytest -m gpu tests/"
"$PY" -m pytest -m gpu tests/ -q -p no:cacheprovider --junitxml="$log_dir/gpu-tests.xml" \
    ${PYTEST_ARGS:-} 2>&1 | tee "$log_dir/gpu-tests.log"
t_rc=${PIPESTATUS[0]}
if [ "$t_rc" -eq 5 ]; then
    echo "(no GPU tests collected)"
elif [ "$t_rc" -ne 0 ]; then
    rc=$t_rc
fi

echo "== GPU benchmark: python -m nnx.benchmarks --device cuda --quick"
stamp=$(mktemp)
"$PY" -m nnx.benchmarks --device cuda --quick --out "$results" ${BENCH_ARGS:-} 2>&1 \
    | tee "$log_dir/gpu-bench.log"
b_rc=${PIPESTATUS[0]}
[ "$b_rc" -ne 0 ] && [ "$rc" -eq 0 ] && rc=$b_rc

if [ -n "${OUT:-}" ]; then
    # the files this run wrote (newer than the stamp)
    find "$results" -maxdepth 1 -newer "$stamp" \( -name '*.json' -o -name '*.png' \) \
        -exec cp {} "$OUT"/ \;
fi
rm -f "$stamp"
echo "gpu_check: exit $rc"
exit $rc
