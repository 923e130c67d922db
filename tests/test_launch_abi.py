"""Host <-> kernel ABI without a GPU: the Communicator's launches name entry points that exist
and pass arguments whose types match the entry's .param list, in order.

The Communicator is built without __init__ (no CUDA, no NVSHMEM): its kernel library and the
``launch`` function are replaced by recorders, tensors are CPU tensors (only their addresses and
shapes matter here).
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from weave_nvshmem.collectives import communicator, plan  # noqa: E402
from weave_nvshmem.collectives.communicator import CommOptions, Communicator  # noqa: E402
from weave_nvshmem.ptx import catalog  # noqa: E402

NP_TO_PTX = {np.uint64: "u64", np.uint32: "u32", np.int64: "s64", np.float32: "f32"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def entry_signature(file, dtype, world, entry):
    """([param types], (min, max) threads per block) of ``entry`` in the rendered ``file``."""
    text = re.sub(r"//[^\n]*", "", catalog.render(file, dtype, world))  # comments may hold ')'
    m = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)\s*(\.(maxntid|reqntid)\s+(\d+))?", text, re.S)
    assert m, f"{file} ({dtype}, w{world}) has no entry {entry}"
    types = re.findall(r"\.param\s+\.(\w+)\s+\w+", m.group(1))
    n = int(m.group(4)) if m.group(4) else 1024
    return types, ((n if m.group(3) == "reqntid" else 32), n)


class Recorder:
    def __init__(self):
        self.requests = []
        self.launches = []

    def kernel(self, file, entry, dtype=None, world=1, *, shmem=0):
        key = (file, entry, dtype, world)
        self.requests.append(key)
        self.shmem_allowed = shmem
        return key

    def launch(self, stream, grid, block, kernel, *args, shmem=0):
        assert shmem <= self.shmem_allowed, "launch asks for more shared memory than the kernel was allowed"
        self.launches.append((grid, block, kernel, args, shmem))


@pytest.fixture
def make_comm(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(communicator, "launch", rec.launch)

    def _validate(self, op, xt):  # the real one, less its insistence on a CUDA tensor
        self._usable(op)
        dt = plan.ptx_dtype(xt.dtype, op)
        communicator._check_contiguous(op, x=xt)
        return dt

    monkeypatch.setattr(Communicator, "_validate", _validate)
    monkeypatch.setenv("WEAVE_NVSHMEM_TUNING", "/nonexistent/tuning.json")

    def make(world, rank=0):
        comm = object.__new__(Communicator)
        comm.options = CommOptions(timeout_s=1.5)
        comm.rank, comm.world, comm.device_id = rank, world, 0
        comm._kernels = rec
        comm._err = SimpleNamespace(words=np.zeros(4, np.uint32), device_ptr=0x7000)
        comm._channels = [SimpleNamespace(cap=1 << 30, ws=0x10_0000, mc_ws=0,
                                          deltas=tuple(np.int64(p << 32) for p in range(world)))]
        comm._broken = None
        return comm, rec

    return make


def check_launch(rec):
    assert len(rec.launches) == 1
    grid, block, (file, entry, dtype, world), args, shmem = rec.launches[0]
    # an H100/H200 block has 227 KB of shared memory; the kernels' static part is ~1 KB
    assert 0 <= shmem <= 226 * 1024 and (shmem > 0) == (file == "bulk.ptx")
    types, (lo, hi) = entry_signature(file, dtype, world, entry)
    got = [NP_TO_PTX.get(type(a), type(a).__name__) for a in args]
    assert got == types, f"{entry}: host passes {got}, kernel declares {types}"
    assert 1 <= grid <= catalog.MAX_CTAS
    assert lo <= block <= hi and block % 32 == 0
    rec.launches.clear()
    return entry, args


WORLDS = (1, 2, 4, 8)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
@pytest.mark.parametrize("algorithm", ["auto", "oneshot", "twoshot"])
def test_all_reduce_launch(make_comm, world, dt, algorithm):
    comm, rec = make_comm(world, rank=world - 1)
    for n in (1, 13, 4096):
        x = torch.zeros(n, dtype=TORCH_DTYPES[dt])
        out = comm.all_reduce(x, algorithm=algorithm)
        entry, args = check_launch(rec)
        assert entry.startswith("wn_allreduce_") and entry.endswith(f"_{dt}_w{world}")
        assert int(args[0]) == out.data_ptr() and int(args[2]) == n and int(args[3]) == 0
        assert int(args[6]) == world - 1  # rank
        assert int(args[7]) == 1_500_000_000  # timeout in ns


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_bulk_launches(make_comm, world, dt):
    """The bulk-copy kernels: (out, inp, n, chunk, smem) and the fused head + (chunk, smem); stages
    for two chunks of every phase fit the shared memory asked for."""
    comm, rec = make_comm(world)
    tdt, ve = TORCH_DTYPES[dt], catalog.VEC_ELEMS[dt]
    for n in (ve, 1000 * ve, (1 << 20) * ve):
        comm.all_reduce(torch.zeros(n, dtype=tdt), algorithm="bulk")
        entry, args = check_launch(rec)
        assert entry == f"wn_allreduce_bulk_{dt}_w{world}" and int(args[2]) == n
        chunk, smem = int(args[3]), int(args[4])
        assert chunk >= 1 and 2 * world * chunk * 16 <= smem
    with pytest.raises(ValueError, match="bulk"):
        comm.all_reduce(torch.zeros(ve + 1, dtype=tdt), algorithm="bulk")
    for rows, hidden in ((1, 1024), (3, 4096), (1000, 8 * ve)):
        row_bytes = hidden * (16 // ve)
        if 2 * (world + 1) * row_bytes > plan.BULK_SMEM:
            with pytest.raises(ValueError, match="bulk"):
                comm.fused_allreduce_rmsnorm(torch.zeros(rows, hidden, dtype=tdt), None,
                                             torch.ones(hidden, dtype=tdt), algorithm="bulk")
            continue
        for mode in ("replicated", "sharded"):
            comm.fused_allreduce_rmsnorm(torch.zeros(rows, hidden, dtype=tdt), torch.zeros(rows, hidden, dtype=tdt),
                                         torch.ones(hidden, dtype=tdt), residual_mode=mode, algorithm="bulk")
            entry, args = check_launch(rec)
            assert entry == f"wn_fused_bulk_{dt}_w{world}"
            chunk, smem = int(args[8]), int(args[9])
            assert chunk >= 1 and 2 * chunk * row_bytes <= smem and 2 * (world + 1) * row_bytes <= smem


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("op,flag", [("reduce_scatter", 1), ("all_gather", 2)])
def test_scatter_gather_launch(make_comm, world, op, flag):
    comm, rec = make_comm(world)
    x = torch.zeros(world * 4, 8, dtype=torch.float16)
    out = getattr(comm, op)(x)
    entry, args = check_launch(rec)
    assert entry == f"wn_allreduce_twoshot_f16_w{world}"
    assert int(args[3]) == flag
    assert int(args[2]) == (x.numel() if op == "reduce_scatter" else x.numel() * world)
    assert tuple(out.shape) == ((4, 8) if op == "reduce_scatter" else (world * world * 4, 8))


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
@pytest.mark.parametrize("algorithm", ["lamport", "oneshot"])
def test_fused_launch_every_vpt(make_comm, world, dt, algorithm):
    comm, rec = make_comm(world)
    ve = catalog.VEC_ELEMS[dt]
    seen = set()
    for hidden in (ve, 512 * ve, 512 * ve + ve, 1024 * ve + ve, 4096 * ve):
        tdt = TORCH_DTYPES[dt]
        x = torch.zeros(5, hidden, dtype=tdt)
        for residual in (torch.zeros(5, hidden, dtype=tdt), None):
            comm.fused_allreduce_rmsnorm(x, residual, torch.ones(hidden, dtype=tdt), 1e-5, algorithm=algorithm)
            entry, args = check_launch(rec)
            assert entry.startswith(f"wn_fused_{algorithm}_{dt}_w{world}_v")
            seen.add(entry.rsplit("_v", 1)[1])
            assert int(args[7]) == (2 if residual is not None else 0)
            assert int(args[4]) == 5 and int(args[5]) == hidden and float(args[6]) == pytest.approx(1e-5)
    assert seen == {"1", "2", "4", "8"}


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_fused_twoshot_launch_every_group(make_comm, world, dt):
    """The two-shot kernel: 512 threads, a row group per rows-per-block, both residual modes."""
    comm, rec = make_comm(world)
    tdt = TORCH_DTYPES[dt]
    hidden = 1024 * catalog.VEC_ELEMS[dt]
    seen = set()
    for rows, ctas in ((1, None), (2 * world, 1), (5 * world, 1), (8 * world, 1), (40 * world, 2), (5000, None)):
        x = torch.zeros(rows, hidden, dtype=tdt)
        for residual, mode in ((torch.zeros(rows, hidden, dtype=tdt), "replicated"), (None, "sharded")):
            comm.fused_allreduce_rmsnorm(x, residual, torch.ones(hidden, dtype=tdt), 1e-5,
                                         residual_mode=mode, algorithm="twoshot", ctas=ctas)
            grid, block = rec.launches[0][:2]
            entry, args = check_launch(rec)
            group = int(entry.rsplit("_g", 1)[1])
            assert entry == f"wn_fused_twoshot_{dt}_w{world}_g{group}" and block == 512
            assert group == plan.row_group(-(-(-(-rows // world)) // grid))
            seen.add(group)
            assert int(args[7]) == (1 if mode == "sharded" else 0) | (2 if residual is not None else 0)
            assert int(args[8]) == plan.fused_block(hidden, dt)[0]  # the reduction order to follow
    assert seen == {1, 2, 4, 8, 16}


@pytest.mark.parametrize("world", WORLDS)
def test_barrier_launch(make_comm, world):
    comm, rec = make_comm(world)
    comm.barrier()
    entry, args = check_launch(rec)
    assert entry == f"wn_barrier_w{world}"
    assert int(args[5]) == communicator.OP_IDS["barrier"]


def test_copy_kernel_signature():
    types, _ = entry_signature("copy.ptx", None, 1, "wn_copy")
    assert types == ["u64", "u64", "u64"]  # Communicator.put: remote, src, nbytes


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_multimem_signatures_extend_the_p2p_ones(world, dt):
    """multimem entries take the P2P twins' parameters plus p_mc_ws before the common block."""
    common, _ = entry_signature("barrier.ptx", None, world, f"wn_barrier_w{world}")
    ar, _ = entry_signature("allreduce.ptx", dt, world, f"wn_allreduce_twoshot_{dt}_w{world}")
    mm, _ = entry_signature("multimem.ptx", dt, world, f"wn_allreduce_multimem_{dt}_w{world}")
    n = len(ar) - len(common)
    assert mm == ar[:n] + ["u64"] + common
    for vpt in (1, 2, 4, 8):
        fu, _ = entry_signature("fused_rmsnorm.ptx", dt, world, f"wn_fused_oneshot_{dt}_w{world}_v{vpt}")
        f2, _ = entry_signature("fused_twoshot.ptx", dt, world, f"wn_fused_twoshot_{dt}_w{world}_g1")
        fm, (_, maxntid) = entry_signature("multimem.ptx", dt, world, f"wn_fused_multimem_{dt}_w{world}_v{vpt}")
        n = len(fu) - len(common)
        assert fm == fu[:n] + ["u64"] + common and f2 == fu[:n] + ["u32"] + common
        assert maxntid >= 512


def test_empty_inputs_launch_nothing(make_comm):
    comm, rec = make_comm(2)
    comm.all_reduce(torch.zeros(0, dtype=torch.float32))
    comm.fused_allreduce_rmsnorm(torch.zeros(0, 8, dtype=torch.bfloat16), None, torch.ones(8, dtype=torch.bfloat16))
    assert rec.launches == []


@pytest.mark.parametrize("call,match", [
    (lambda c: c.all_reduce(torch.zeros(4, dtype=torch.float64)), "all_reduce: unsupported dtype"),
    (lambda c: c.all_reduce(torch.zeros(4), algorithm="nope"), "all_reduce: algorithm"),
    (lambda c: c.all_reduce(torch.zeros(4), ctas=0), "all_reduce: ctas"),
    (lambda c: c.reduce_scatter(torch.zeros(3, 4)), "reduce_scatter: x.shape"),
    (lambda c: c.all_gather(torch.zeros(1, 2)), "all_gather: each rank's chunk"),
    (lambda c: c.fused_allreduce_rmsnorm(torch.zeros(2, 12, dtype=torch.bfloat16), None,
                                         torch.ones(12, dtype=torch.bfloat16)), "hidden size"),
    (lambda c: c.fused_allreduce_rmsnorm(torch.zeros(2, 16), None, torch.ones(16),
                                         residual_mode="halved"), "residual_mode"),
    (lambda c: c.fused_allreduce_rmsnorm(torch.zeros(2, 16), None, torch.ones(8)), "weight must be"),
    (lambda c: c.fused_allreduce_rmsnorm(torch.zeros(2, 16), torch.zeros(3, 16), torch.ones(16)), "residual must be"),
    (lambda c: c.fused_allreduce_rmsnorm(torch.zeros(16), None, torch.ones(16)), "must be 2-D"),
    (lambda c: c.fused_allreduce_rmsnorm(torch.zeros(2, 16), None, torch.ones(16), residual_mode="sharded",
                                         algorithm="oneshot"), "oneshot"),
    (lambda c: c.all_reduce(torch.zeros(4, 4).t()), "contiguous"),
    (lambda c: c.all_reduce([1.0, 2.0]), "torch tensor or CuPy array"),
])
def test_bad_input_names_the_op(make_comm, call, match):
    comm, rec = make_comm(2)
    with pytest.raises((ValueError, TypeError), match=match):
        call(comm)
    assert rec.launches == []


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_multicast_channel_selects_multimem_kernels_only_for_two_shot(make_comm, world, dt):
    """With a multicast address bound, two-shot ops take the multimem twins (ABI checked); one-shot,
    reduce-scatter and all-gather stay P2P. Without one (the default), nothing multimem launches."""
    comm, rec = make_comm(world)
    tdt = TORCH_DTYPES[dt]
    x = torch.zeros(world * 64, 8, dtype=tdt)
    comm.all_reduce(x, algorithm="twoshot")
    assert check_launch(rec)[0].startswith("wn_allreduce_twoshot_")
    comm._channels[0].mc_ws = 0x99_0000
    entry, args = check_launch(rec) if comm.all_reduce(x, algorithm="twoshot") is not None else None
    assert entry == f"wn_allreduce_multimem_{dt}_w{world}" and int(args[4]) == 0x99_0000
    comm.all_reduce(x, algorithm="oneshot")
    assert check_launch(rec)[0].startswith("wn_allreduce_oneshot_")
    comm.reduce_scatter(x)
    assert check_launch(rec)[0].startswith("wn_allreduce_twoshot_")
    h = 1024
    comm.fused_allreduce_rmsnorm(torch.zeros(33, h, dtype=tdt), torch.zeros(33, h, dtype=tdt),
                                 torch.ones(h, dtype=tdt), algorithm="twoshot", residual_mode="sharded")
    entry, args = check_launch(rec)
    assert entry.startswith(f"wn_fused_multimem_{dt}_w{world}_v") and int(args[8]) == 0x99_0000


def test_multicast_unavailable_falls_back_to_p2p_with_reason(make_comm):
    from weave_nvshmem.errors import MulticastUnavailable

    comm, rec = make_comm(4)

    def refuse():
        raise MulticastUnavailable("NVLink SHARP/multicast disabled by NVSHMEM_DISABLE_NVLS=1")

    comm._channels[0].map_multicast = refuse
    with pytest.warns(UserWarning, match="NVSHMEM_DISABLE_NVLS"):
        comm._map_multicast()
    assert "NVSHMEM_DISABLE_NVLS" in comm.multicast_reason and comm._channels[0].mc_ws == 0
    comm.all_reduce(torch.zeros(4096, dtype=torch.bfloat16), algorithm="twoshot")
    assert check_launch(rec)[0] == "wn_allreduce_twoshot_bf16_w4"
