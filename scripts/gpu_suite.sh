#!/usr/bin/env bash
# On a GPU machine without network access: install the carried nvshmem4py wheel, then run
# the multi-GPU test suite (with >= 2 GPUs), the emulated suite (SKIP_EMULATED=1 skips it), (RUN_TUNE=1)
# the tuning command, (unless SKIP_BENCH=1) the benchmark. Logs and JSON go to ${OUT:-bench}.
# NVLink multicast stays off: NVSHMEM_DISABLE_NVLS defaults to 1 and any other value is refused.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${OUT:-bench}
mkdir -p "$OUTDIR"
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}  # set only when unset, never overridden
if [ "$NVSHMEM_DISABLE_NVLS" != "1" ]; then
  echo "refusing to run: NVSHMEM_DISABLE_NVLS must be 1 here (got '$NVSHMEM_DISABLE_NVLS')"; exit 2
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
# the tree travels without .git: record the commit the caller passes (bench JSON)
export WEAVE_NVSHMEM_COMMIT=${WEAVE_NVSHMEM_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
nvidia-smi -L
rc=0
if [ "${SKIP_TESTS:-0}" != "1" ] && [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  timeout "${TEST_TIMEOUT:-480}" bash tests/gpu/run.sh ${PYTEST_ARGS:-} 2>&1 | tee "$OUTDIR/gpu-tests.log"; rc=${PIPESTATUS[0]}
  echo "gpu suite exit code: $rc"
fi
if [ "${SKIP_EMULATED:-0}" != "1" ]; then  # world sizes 2/4/8 emulated on GPU 0, one process
  CUDA_DEVICE_MAX_CONNECTIONS=32 timeout "${EMULATED_TIMEOUT:-600}" python3 -m pytest tests/emulated -q -p no:cacheprovider \
    2>&1 | tee "$OUTDIR/emulated-tests.log" | tail -5; erc=${PIPESTATUS[0]}
  echo "emulated suite exit code: $erc"; [ "$erc" -ne 0 ] && rc=$erc
fi
if [ "${RUN_TUNE:-0}" = "1" ]; then  # measure and install this device's tuning table before the bench
  NGPU=$(nvidia-smi -L | wc -l)
  timeout "${TUNE_TIMEOUT:-480}" torchrun --nproc-per-node="$NGPU" -m weave_nvshmem.bench tune ${TUNE_ARGS:-} --out "$OUTDIR" 2>&1 | tee "$OUTDIR/tune.log" | tail -30
  echo "tune exit code: ${PIPESTATUS[0]}"
fi
if [ "${SKIP_BENCH:-0}" != "1" ]; then
  # the world-1 norm suite (one process): our local kernel vs the fused add+RMSNorm baselines
  timeout "${NORM_TIMEOUT:-590}" python3 -m weave_nvshmem.bench norm ${NORM_ARGS:-} --out "$OUTDIR" 2>&1 | tee "$OUTDIR/norm.log" | tail -5
  echo "norm exit code: ${PIPESTATUS[0]}"
  NGPU=$(nvidia-smi -L | wc -l)
  timeout "${BENCH_TIMEOUT:-480}" torchrun --nproc-per-node="$NGPU" -m weave_nvshmem.bench ${BENCH_ARGS:-all} --out "$OUTDIR" 2>&1 | tee "$OUTDIR/bench.log" | tail -60
  echo "bench exit code: ${PIPESTATUS[0]}"
fi
# ---- examples (after the bench): TP Llama check + layer benchmark, CuPy pipeline ----------------
# SKIP_EXAMPLES=1 skips them; EXAMPLE_TIMEOUT bounds each command; LAYER_BENCH_ARGS go to the layer
# bench (e.g. --quick). Reports: $OUTDIR/tp_llama-check-*.json, $OUTDIR/bench/layer-*.{json,md,png}.
if [ "${SKIP_EXAMPLES:-0}" != "1" ]; then
  NGPU=$(nvidia-smi -L | wc -l)
  mkdir -p "$OUTDIR/bench"
  timeout "${EXAMPLE_TIMEOUT:-540}" torchrun --nproc-per-node="$NGPU" examples/tp_llama.py check --out "$OUTDIR" 2>&1 | tee "$OUTDIR/tp_llama-check.log" | tail -60
  echo "tp_llama check exit code: ${PIPESTATUS[0]}"
  timeout "${EXAMPLE_TIMEOUT:-540}" torchrun --nproc-per-node="$NGPU" examples/tp_llama.py bench --out "$OUTDIR/bench" ${LAYER_BENCH_ARGS:-} 2>&1 | tee "$OUTDIR/layer-bench.log" | tail -60
  echo "layer bench exit code: ${PIPESTATUS[0]}"
  timeout "${EXAMPLE_TIMEOUT:-540}" torchrun --nproc-per-node="$NGPU" examples/cupy_pipeline.py 2>&1 | tee "$OUTDIR/cupy-pipeline.log" | tail -20
  echo "cupy pipeline exit code: ${PIPESTATUS[0]}"
fi
exit $rc
