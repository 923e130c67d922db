# Sourced by scripts/test.sh and scripts/bench.sh: create or reuse the venv at .venv and install
# weave_nvshmem into it (editable) with the extras named in $1 ("test" or "bench").
# torch is pinned and installed first, on its own: on CPU-only machines torch==2.13.0 resolves to
# the CPU build already on disk, where a bare "torch" requirement could pull a multi-GB CUDA build.

TORCH_VERSION=2.13.0
VENV=.venv
PY="$VENV/bin/python"

weave_venv() {
    local extras="$1"
    if [ ! -x "$PY" ]; then
        echo "weave_nvshmem: creating venv at $VENV" >&2
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    local pip=("$PY" -m pip install --quiet --disable-pip-version-check)
    if ! "$PY" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
        echo "weave_nvshmem: installing torch==$TORCH_VERSION" >&2
        "${pip[@]}" "torch==$TORCH_VERSION"
    fi
    # reinstall the package only when pyproject.toml changed (the install is editable)
    local stamp
    stamp="$VENV/.weave_nvshmem-$extras-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -e "$stamp" ]; then
        echo "weave_nvshmem: installing .[$extras]" >&2
        "${pip[@]}" -e ".[$extras]"
        touch "$stamp"
    fi
}

# number of NVIDIA GPUs nvidia-smi lists (0 when there is no driver or no nvidia-smi)
gpu_count() {
    { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true
}
