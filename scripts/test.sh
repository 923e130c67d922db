#!/usr/bin/env bash
# Run the weave_nvshmem tests: the CPU suite (PTX assembly, templates, planning, API) everywhere,
# with the emulated suite (tests/emulated: world sizes 2/4/8 on one GPU) when a GPU is present,
# then the multi-GPU suite (tests/gpu/run.sh, under torchrun) when >= 2 GPUs are present.
# Extra arguments go to pytest. Exits non-zero on any failure (pytest's own code for the CPU suite).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/_venv.sh

weave_venv test

"$PY" -m pytest tests -q "$@"

ngpu=$(gpu_count)
if [ "$ngpu" -ge 2 ]; then
    echo "weave_nvshmem: $ngpu GPUs found, running the multi-GPU suite" >&2
    if [ ! -f tests/gpu/run.sh ]; then
        echo "weave_nvshmem: tests/gpu/run.sh is missing" >&2
        exit 1
    fi
    PATH="$PWD/$VENV/bin:$PATH" bash tests/gpu/run.sh
else
    echo "weave_nvshmem: $ngpu GPU(s) found; the multi-GPU suite needs >= 2, skipped" >&2
fi
