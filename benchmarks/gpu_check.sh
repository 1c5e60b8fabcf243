#!/usr/bin/env bash
# GPU checks for nnx: the GPU test suite (pytest -m gpu tests/), the GPU benchmark
# (nnx-cuda vs torch-cuda vs a CuPy floor, python -m nnx.benchmarks --device cuda --quick),
# workload D (mnist-cnn) nnx-cuda vs torch-cuda, and the CNN kernels' bandwidth
# (python -m nnx.benchmarks.gpu_kernels).
#
# Without a usable GPU (no CuPy, no driver, no device, or the probe modules missing) it prints
# "no GPU: skipped" and exits 0. With one, the benchmark JSON and PNG go to benchmarks/results/
# and, when $OUT is set (the device machine's output folder), are copied there too, with the
# test log and a JUnit XML. Exit status: the first failure of the steps (0 when all pass;
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

# issue 10: workload D (mnist-cnn) on its own, more rounds: nnx-cuda (CuPy, NVRTC im2col/col2im
# and pooling kernels, cuBLAS GEMMs) vs torch-cuda (cuDNN); bar nnx/torch <= 1.0. The CNN
# floor is NumPy only (skipped on cuda).
echo "== GPU D (mnist-cnn): python -m nnx.benchmarks --device cuda --workloads D"
"$PY" -m nnx.benchmarks --device cuda --workloads D --rounds 21 --no-micro --no-memory \
    --out "$results" --name "$(date -u +%Y-%m-%d)-gpu-D" 2>&1 | tee "$log_dir/gpu-bench-D.log"
d_rc=${PIPESTATUS[0]}
[ "$d_rc" -ne 0 ] && [ "$rc" -eq 0 ] && rc=$d_rc

# issue 10: bandwidth of the im2col/col2im and max-pool kernels at D's shapes against the
# device's copy bandwidth (bar >= 0.70 each; MISS lines are reported, not an exit status)
echo "== GPU CNN kernels: python -m nnx.benchmarks.gpu_kernels"
"$PY" -m nnx.benchmarks.gpu_kernels --json "$log_dir/gpu-cnn-kernels.json" 2>&1 \
    | tee "$log_dir/gpu-cnn-kernels.log"
k_rc=${PIPESTATUS[0]}
[ "$k_rc" -ne 0 ] && [ "$rc" -eq 0 ] && rc=$k_rc

if [ -n "${OUT:-}" ]; then
    # the files this run wrote (newer than the stamp)
    find "$results" -maxdepth 1 -newer "$stamp" \( -name '*.json' -o -name '*.png' \) \
        -exec cp {} "$OUT"/ \;
fi
rm -f "$stamp"
echo "gpu_check: exit $rc"
exit $rc
