#!/usr/bin/env bash
# Benchmark weave_nvshmem on every local GPU: torchrun one process per GPU, results in bench/;
# then the one-GPU norm suite (fused add+RMSNorm at world 1 vs every fused baseline).
# Extra arguments go to `weave-bench all` (python -m weave_nvshmem.bench all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/_venv.sh

NGPU=$(gpu_count)
if [ "$NGPU" -lt 1 ]; then
    echo "weave_nvshmem bench needs NVIDIA GPUs (Hopper, sm_90); none found" >&2
    exit 1
fi

weave_venv bench

mkdir -p bench
"$VENV/bin/torchrun" --nproc-per-node="$NGPU" -m weave_nvshmem.bench all --out bench/ "$@"
exec "$VENV/bin/python" -m weave_nvshmem.bench norm --out bench/
