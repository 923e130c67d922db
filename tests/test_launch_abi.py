"""Host <-> kernel ABI without a GPU: the kernel table matches the PTX entry signatures of every
variant, and the Communicator's launches name entry points that exist and pass arguments whose
types match the entry's .param list, in order.

The Communicator is built without __init__ (no CUDA, no NVSHMEM) on a recording fabric: its kernel
library and launch record requests, tensors are CPU tensors (only their addresses and shapes
matter here).
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from weave_nvshmem.collectives import calls, communicator, plan  # noqa: E402
from weave_nvshmem.collectives.communicator import OP_IDS, CommOptions, Communicator  # noqa: E402
from weave_nvshmem.ptx import catalog, table  # noqa: E402

NP_TO_PTX = {np.uint64: "u64", np.uint32: "u32", np.int64: "s64", np.float32: "f32"}
TORCH_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def entry_signature(file, dtype, world, entry, names=False):
    """([param types] or [(name, type)], (min, max) threads per block) of ``entry`` in the rendered ``file``."""
    text = re.sub(r"//[^\n]*", "", catalog.render(file, dtype, world))  # comments may hold ')'
    m = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)\s*(\.(maxntid|reqntid)\s+(\d+))?", text, re.S)
    assert m, f"{file} ({dtype}, w{world}) has no entry {entry}"
    params = [(n, t) for t, n in re.findall(r"\.param\s+\.(\w+)\s+(\w+)", m.group(1))]
    n = int(m.group(4)) if m.group(4) else 1024
    return (params if names else [t for _, t in params]), ((n if m.group(3) == "reqntid" else 32), n)


def table_variants():
    """Every (spec, dtype, world, variant) the table can launch."""
    for spec in table.KERNELS:
        for world in (catalog.TEST_WORLDS if spec.per_world else (1,)):
            for dtype in (catalog.DTYPES if spec.dtyped else (None,)):
                for values in spec.variants:
                    yield spec, dtype, world, dict(zip(spec.axes, values))


def _tvid(v):
    spec, dtype, world, variant = v
    return f"{spec.op}-{spec.algorithm}-{spec.transport}-{dtype or 'untyped'}-w{world}-" + \
        "-".join(f"{k}{x}" for k, x in variant.items())


@pytest.mark.parametrize("v", list(table_variants()), ids=_tvid)
def test_table_matches_the_ptx_entry(v):
    """The table's entry name exists and its parameter list (names and types, channel block
    included) is the rendered entry's, for every variant of every spec."""
    spec, dtype, world, variant = v
    file, rdtype, rworld = spec.render_args(dtype, world)
    got, (lo, hi) = entry_signature(file, rdtype, rworld, spec.entry_name(dtype, world, variant), names=True)
    assert got == [(f"p_{n}", t) for n, t in spec.param_list(rworld)]
    if isinstance(spec.block, int):
        assert lo <= spec.block <= hi
    elif spec.block == "group":
        assert lo == hi == 32 * variant["group"]
    else:  # the row block: 32..512 threads
        assert (lo, hi) == (32, 512)
    # only the pull transport's kernels use dynamic shared memory (opted in by the loader above 48 KB)
    assert spec.smem == (table.PULL_SMEM if spec.algorithm in ("pull", "pull_q") else 0)
    assert (spec.flags is None) == ("p_flags" not in dict(got))


def test_flag_enums_name_every_bit():
    assert [int(f) for f in table.AllReduceFlags] == [1, 2, 4]  # NONE is the empty flag
    assert [int(f) for f in table.FusedFlags] == [1, 2, 4]
    assert [int(f) for f in table.CompressedFlags] == [1, 2, 4]
    assert [int(f) for f in table.CompressedFusedFlags] == [1, 2, 4]
    for spec in table.KERNELS:
        assert spec.flags is None or isinstance(spec.flags, (table.AllReduceFlags, table.FusedFlags,
                                                             table.CompressedFlags, table.CompressedFusedFlags))
        assert spec.status in ("", table.MULTICAST_STATUS)
        assert (spec.transport == "multicast") == (spec.status == table.MULTICAST_STATUS)


def test_pack_checks_names_and_orders_by_the_table():
    spec = table.spec("put", "copy")
    assert spec.pack(1, {"src": 2, "nbytes": 3, "dst": 1}) == (np.uint64(1), np.uint64(2), np.uint64(3))
    with pytest.raises(TypeError, match="missing"):
        spec.pack(1, {"src": 2, "dst": 1})
    with pytest.raises(TypeError, match="unexpected"):
        spec.pack(1, {"src": 2, "nbytes": 3, "dst": 1, "flags": 0})


class Recorder:
    """A fabric that records kernel requests and launches (no GPU)."""

    def __init__(self, world, rank):
        self.rank, self.world, self.device_id = rank, world, 0
        self.kernels = self
        self.requests = []
        self.launches = []

    def kernel(self, spec, dtype, world, variant):
        key = (spec, dtype, world, spec.entry_name(dtype, world, variant))
        self.requests.append(key)
        return key

    def zero_copy(self, channel, t):
        return False

    def launch(self, stream, grid, block, kernel, args, shmem=0):
        self.launches.append((grid, block, kernel, args, shmem))


@pytest.fixture
def make_comm(monkeypatch):
    monkeypatch.setattr(calls, "_check_device", lambda op, t, device_id: None)  # CPU tensors stand in
    monkeypatch.setenv("WEAVE_NVSHMEM_TUNING", "/nonexistent/tuning.json")

    def make(world, rank=0):
        rec = Recorder(world, rank)
        comm = object.__new__(Communicator)
        comm.options = CommOptions(timeout_s=1.5)
        comm._fabric = rec
        comm.rank, comm.world, comm.device_id = rank, world, 0
        comm._err = SimpleNamespace(words=np.zeros(4, np.uint32), device_ptr=0x7000)
        comm._channels = [SimpleNamespace(cap=1 << 30, ws=0x10_0000, mc_ws=0,
                                          deltas=tuple(np.int64(p << 32) for p in range(world)))]
        comm._channels[0].values = lambda ch=comm._channels[0]: {
            "ws": ch.ws, "cap": ch.cap, **{f"dl{p}": d for p, d in enumerate(ch.deltas)}}
        comm._broken = None
        comm.multicast_reason = "not requested"
        return comm, rec

    return make


def check_launch(rec):
    assert len(rec.launches) == 1
    grid, block, (spec, dtype, world, entry), args, shmem = rec.launches[0]
    assert shmem == spec.smem == (table.PULL_SMEM if spec.algorithm in ("pull", "pull_q") else 0)
    types, (lo, hi) = entry_signature(*spec.render_args(dtype, world), entry)
    got = [NP_TO_PTX.get(type(a), type(a).__name__) for a in args]
    assert got == types, f"{entry}: host passes {got}, kernel declares {types}"
    assert 1 <= grid and (grid <= catalog.MAX_CTAS or not spec.channel)
    assert lo <= block <= hi and block % 32 == 0
    rec.launches.clear()
    return entry, args


WORLDS = (1, 2, 4, 8)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
@pytest.mark.parametrize("algorithm", ["auto", "oneshot", "twoshot", "pull"])
def test_all_reduce_launch(make_comm, world, dt, algorithm):
    comm, rec = make_comm(world, rank=world - 1)
    for n in (1, 13, 4096):
        x = torch.zeros(n, dtype=TORCH_DTYPES[dt])
        out = comm.all_reduce(x, algorithm=algorithm)
        if world == 1 and algorithm == "auto":  # one rank: a device copy, no kernel
            assert rec.launches == [] and comm.plan("all_reduce", x).algorithm == "copy"
            continue
        entry, args = check_launch(rec)
        assert entry.startswith("wn_pull_" if algorithm == "pull" else "wn_allreduce_")
        assert entry.endswith(f"_{dt}_w{world}")
        assert int(args[0]) == out.data_ptr() and int(args[2]) == n and int(args[3]) == 0
        assert int(args[6]) == world - 1  # rank
        assert int(args[7]) == 1_500_000_000  # timeout in ns


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("op,flag", [("reduce_scatter", 1), ("all_gather", 2)])
@pytest.mark.parametrize("algorithm", ["auto", "twoshot", "pull"])
def test_scatter_gather_launch(make_comm, world, op, flag, algorithm):
    comm, rec = make_comm(world)
    x = torch.zeros(world * 4, 8, dtype=torch.float16)
    out = getattr(comm, op)(x, algorithm=algorithm)
    entry, args = check_launch(rec)
    assert entry == (f"wn_pull_f16_w{world}" if algorithm == "pull" else f"wn_allreduce_twoshot_f16_w{world}")
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


@pytest.mark.parametrize("dt", list(TORCH_DTYPES))
def test_fused_local_launch_at_world_one(make_comm, dt):
    """World 1: auto runs fused_local.ptx, one CTA per row of the one-row kernels' block (vthreads
    threads), or without a residual at VPT > 1 LOCAL_PREFETCH_ROWS rows per CTA but at least
    LOCAL_PREFETCH_GRID CTAs; "local" is refused at other worlds."""
    comm, rec = make_comm(1)
    tdt, ve = TORCH_DTYPES[dt], catalog.VEC_ELEMS[dt]
    seen = set()
    for hidden in (ve, 512 * ve, 512 * ve + ve, 1024 * ve + ve, 4096 * ve):
        threads, vpt = plan.fused_block(hidden, dt)
        for rows, residual, mode in ((3, True, "replicated"), (300, False, "sharded"), (5000, True, "replicated"),
                                     (5000, False, "replicated")):
            x = torch.zeros(rows, hidden, dtype=tdt)
            res = torch.zeros(rows, hidden, dtype=tdt) if residual else None
            for algorithm in ("auto", "local"):
                comm.fused_allreduce_rmsnorm(x, res, torch.ones(hidden, dtype=tdt), 1e-5, residual_mode=mode,
                                             algorithm=algorithm)
                grid, block = rec.launches[0][:2]
                entry, args = check_launch(rec)
                want = rows if residual or vpt == 1 else max(plan.LOCAL_PREFETCH_GRID, -(-rows // plan.LOCAL_PREFETCH_ROWS))
                assert entry == f"wn_fused_local_{dt}_v{vpt}" and (grid, block) == (min(rows, want), threads)
                assert int(args[7]) == (2 if residual else 0) and int(args[8]) == threads
                seen.add(vpt)
    assert seen == {1, 2, 4, 8}
    for vpt in (1, 2, 4, 8):  # launch_local: the same entry on the grid asked for
        hidden = 512 * vpt * ve
        communicator.launch_local(comm, torch.zeros(7, hidden, dtype=tdt), None, torch.ones(hidden, dtype=tdt), grid=3)
        grid, block = rec.launches[0][:2]
        entry, args = check_launch(rec)
        assert entry == f"wn_fused_local_{dt}_v{vpt}" and grid == 3
        assert block == 512 and int(args[8]) == 512
    with pytest.raises(ValueError, match="grid must be an int >= 1"):
        communicator.launch_local(comm, torch.zeros(7, 64 * ve, dtype=tdt), None, torch.ones(64 * ve, dtype=tdt),
                                  grid=0)
    two, _ = make_comm(2)
    with pytest.raises(ValueError, match="algorithm 'local' runs only at world size 1"):
        two.fused_allreduce_rmsnorm(torch.zeros(2, 16), None, torch.ones(16), algorithm="local")


@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather"])
def test_world_one_collectives_are_copies(make_comm, op):
    """At world 1 the data ops are a device copy (none in place) and launch no kernel."""
    comm, rec = make_comm(1)
    x = torch.arange(64, dtype=torch.float32).view(8, 8)
    y = getattr(comm, op)(x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr() and rec.launches == []
    out = torch.empty_like(x)
    assert getattr(comm, op)(x, out=out) is out and torch.equal(out, x)
    assert getattr(comm, op)(x, out=x) is x
    p = comm.plan(op, x)
    assert p.algorithm == "copy" and p.kernel is None and "world 1" in p.reason


def test_plan_says_what_runs_and_why(make_comm):
    comm, rec = make_comm(4)
    x = torch.zeros(4096, 8192, dtype=torch.bfloat16)
    r = torch.zeros_like(x)
    w = torch.ones(8192, dtype=torch.bfloat16)
    p = comm.plan("fused_allreduce_rmsnorm", x, r, w, 1e-6, residual_mode="sharded")
    assert (p.algorithm, p.transport, p.block) == ("twoshot", "p2p", 512)
    assert p.entry == f"wn_fused_twoshot_bf16_w4_g{p.group}" and p.kernel is table.spec(p.op, "twoshot")
    assert p.flags == table.FusedFlags.SHARDED | table.FusedFlags.RESIDUAL and "sharded" in p.reason
    assert "twoshot" in str(p) and p.entry in str(p)
    small = comm.plan("all_reduce", torch.zeros(1024, dtype=torch.bfloat16), ctas=3)
    assert (small.algorithm, small.grid) == ("lamport", 3) and "Lamport slot" in small.reason
    assert "ctas given" in small.reason
    assert comm.plan("all_reduce", torch.zeros(0)).algorithm == "none"
    assert comm.plan("barrier").entry == "wn_barrier_w4"
    assert rec.launches == []  # planning launches nothing
    with pytest.raises(ValueError, match="plan: op must be one of"):
        comm.plan("all_to_all", x)
    with pytest.raises(ValueError, match="fused_allreduce_rmsnorm: residual_mode"):
        comm.plan("fused_allreduce_rmsnorm", x, r, w, residual_mode="halved")


@pytest.mark.parametrize("world", WORLDS)
def test_barrier_launch(make_comm, world):
    comm, rec = make_comm(world)
    comm.barrier()
    entry, args = check_launch(rec)
    assert entry == f"wn_barrier_w{world}"
    assert int(args[5]) == OP_IDS["barrier"]


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
