#!/usr/bin/env bash
# The whole multi-GPU suite: one process per local GPU under torchrun. NVLink multicast stays off.
set -euo pipefail
cd "$(dirname "$0")/../.."
NGPU=${NGPU:-$(nvidia-smi -L | wc -l)}
export PYTHONUNBUFFERED=1
exec torchrun --nproc-per-node="$NGPU" -m pytest tests/gpu -q -x -p no:cacheprovider "$@"
