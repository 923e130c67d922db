"""The copy-engine transport without a GPU: its plans (selectable by name, never by ``auto``), its
segments, the channel slots it uses, and the exact sequence of copies, flag writes and launches a
rank enqueues (recorded: the loader's driver calls and the fabric's launches are stand-ins)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from weave_nvshmem.collectives import channel, copyengine, plan, signature  # noqa: E402
from weave_nvshmem.collectives.plan import owned_rows, plan_all_reduce, plan_fused  # noqa: E402
from weave_nvshmem.ptx import catalog, loader, table  # noqa: E402
from test_launch_abi import entry_signature, make_comm  # noqa: E402,F401  (the recording communicator)

WORLDS = (2, 4, 8)


# ---- plans -------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", WORLDS)
def test_selectable_by_name_on_few_ctas(world):
    assert "copyengine" in plan.ALLREDUCE_ALGORITHMS and "copyengine" in plan.FUSED_ALGORITHMS
    assert "copyengine" not in plan.SCATTER_GATHER_ALGORITHMS
    for nelem, grid in ((1, 1), (1 << 12, 1), (1 << 26, plan.CE_CTAS)):
        p = plan_all_reduce(nelem, "bf16", world, "copyengine", zero_copy=True)
        assert p.kernel is table.spec("all_reduce", "copyengine") and p.entry == f"wn_ce_sum_bf16_w{world}"
        assert (p.grid, p.block, p.smem, p.transport) == (grid, 512, 0, "p2p")
        assert p.flags == table.AllReduceFlags.NONE  # a symmetric input is copied all the same
    for rows, grid in ((1, 1), (7, min(8, -(-7 // world))), (8191, plan.CE_CTAS)):
        for sharded, residual in ((False, True), (True, False)):
            p = plan_fused(rows, 8192, "bf16", world, "copyengine", sharded=sharded, residual=residual,
                           zero_copy=True, multicast=True)
            assert p.kernel is table.spec("fused_allreduce_rmsnorm", "copyengine") and p.grid == grid
            assert p.entry == f"wn_ce_fused_bf16_w{world}_g{p.group}" and p.transport == "p2p"
            assert p.group == plan.row_group(-(-(-(-rows // world)) // grid))
            want = (table.FusedFlags.SHARDED if sharded else table.FusedFlags.NONE) | (
                table.FusedFlags.RESIDUAL if residual else table.FusedFlags.NONE)
            assert p.flags == want
    for ctas in (1, 3, 32):
        assert plan_all_reduce(1 << 20, "f32", world, "copyengine", ctas).grid == ctas
        assert plan_fused(1000, 4096, "f16", world, "copyengine", ctas).grid == ctas


def test_auto_never_picks_copyengine(monkeypatch):
    """Not by rule, and not from a tuning row naming it."""
    seen = []

    def pick(op, world, nbytes, allowed):
        seen.append(allowed)
        return None

    monkeypatch.setattr(plan.tuning, "pick", pick)
    for world in WORLDS:
        for n in (1, 64, 1000, 8191):
            assert plan_fused(n, 8192, "bf16", world).algorithm != "copyengine"
            assert plan_all_reduce(n << 12, "bf16", world).algorithm != "copyengine"
    assert seen and all("copyengine" not in a for a in seen)


# ---- segments and slots ------------------------------------------------------------------------

class _Call:
    def __init__(self, op, shape, dtype, sharded=False):
        self.op, self.x, self.sharded = op, torch.empty(shape, dtype=dtype), sharded
        self.numel = self.x.numel()


@pytest.mark.parametrize("world", WORLDS)
def test_segments_are_twoshots_and_fit_a_slot(world):
    for dt in (torch.bfloat16, torch.float32):
        es = torch.empty((), dtype=dt).element_size()
        for n in (1, 7, 8, 13 * 5, 4096 * 1000 + 3):
            segs = copyengine.segments(_Call("all_reduce", (n,), dt), world)
            assert sum(b for _, b in segs) == n * es and segs[0][0] == 0
            assert all(a + b == c for (a, b), (c, _) in zip(segs, segs[1:]) if b)
            nvec = -(-n * es // 16)
            assert [a for a, b in segs if b] == [nvec * r // world * 16 for r in range(world) if segs[r][1]]
            cap = plan.staging_bytes(n * es)
            assert max(b for _, b in segs) <= channel.ce_slot(world, channel.channel_layout(world, cap)[0])
        for rows, hidden in ((1, 4096), (7, 5120), (1000, 8192), (3, 4096 * 16 // es)):
            segs = copyengine.segments(_Call("fused_allreduce_rmsnorm", (rows, hidden), dt), world)
            rowb = hidden * es
            assert segs == [(o.start * rowb, len(o) * rowb) for o in (owned_rows(rows, r, world) for r in range(world))]
            cap = channel.channel_layout(world, plan.staging_bytes(rows * rowb))[0]
            assert max(b for _, b in segs) <= channel.ce_slot(world, cap)


def test_channel_places_the_slots_after_the_lamport_buffers():
    for world in (1, 2, 8):
        cap, lamport, total = channel.channel_layout(world, 1000)
        ce = lamport + 3 * world * catalog.LAMPORT_SLOT
        assert total == ce + (world + 1) * channel.ce_slot(world, cap) and total % 256 == 0
    assert 36 <= catalog.CE_ARRIVE_OFF < catalog.CE_READY_OFF and catalog.CE_READY_OFF + 32 <= catalog.PAD_OFF


# ---- the enqueued sequence ---------------------------------------------------------------------

@pytest.fixture
def driver_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(loader, "copy_async", lambda stream, dst, src, n: calls.append(("copy", dst, src, n)))
    monkeypatch.setattr(loader, "write_value32", lambda stream, addr, v: calls.append(("write", addr, v)))
    return calls


def _attach(comm, rec, calls):
    """Record launches in order with the driver calls; the channel gets its copy-engine slots."""
    ch = comm._channels[0]
    ch.ce, ch.ce_slot = 0x900_0000, 1 << 20
    rec.launch = lambda stream, grid, block, kernel, args, shmem=0: calls.append(("launch", kernel, args))


def _check_sequence(comm, calls, segs, out, res, replicated, entry):
    ch, w, r = comm._channels[0], comm.world, comm.rank
    peers = [s for s in range(w) if s != r]
    dl = [int(d) for d in ch.deltas]
    value = None
    it = iter(calls)
    if comm.options.call_signature:  # our descriptor words where each peer's wait reads them
        for s in peers:
            for i in range(5):
                kind, addr, v = next(it)
                assert (kind, addr) == ("write", ch.ws + catalog.DESC_OFF + s * catalog.DESC_BYTES + 4 * i)
                assert v == signature.UNKNOWN if i >= 3 else v >= 0
    for s in peers:  # 1: our share of every other segment into its owner's slot [r]
        if segs[s][1]:
            assert next(it)[:2] == ("copy", ch.ce + r * ch.ce_slot + dl[s])
    for phase, off in (("arrive", catalog.CE_ARRIVE_OFF), ("ready", catalog.CE_READY_OFF)):
        for s in peers:
            kind, addr, v = next(it)
            assert (kind, addr) == ("write", ch.ws + dl[s] + off + 4 * r) and v != 0
            assert value in (None, v)
            value = v
        kind, (spec, _, _, name), args = next(it)
        assert (kind, name) == ("launch", f"wn_ce_wait_w{w}")
        types, _ = entry_signature("cewait.ptx", None, w, name)
        assert len(args) == len(types)
        assert [int(a) for a in args[:4]] == [off, value, ch.ws, ch.cap] and int(args[4]) == r
        if phase == "arrive":  # 3: the reduce kernel, on the slots
            kind, (spec, dt, _, name), args = next(it)
            assert (kind, name) == ("launch", entry)
            names = [n for n, _ in spec.param_list(w)]
            assert int(args[names.index("land")]) == ch.ce and int(args[names.index("slot")]) == ch.ce_slot
    for s in peers:  # 4: every owner's result slot (and s slot) into our rows
        start, n = segs[s]
        if n:
            assert next(it) == ("copy", out + start, ch.ce + w * ch.ce_slot + dl[s], n)
            if replicated:
                assert next(it) == ("copy", res + start, ch.ce + s * ch.ce_slot + dl[s], n)
    assert next(it, None) is None


@pytest.mark.parametrize("world", (1, 2, 4, 8))
def test_all_reduce_sequence(make_comm, driver_calls, world):
    for n in (1, 13, 4096 * 3 + 5):
        comm, rec = make_comm(world, rank=world - 1)
        _attach(comm, rec, driver_calls)
        driver_calls.clear()
        x = torch.zeros(n, dtype=torch.bfloat16)
        out = comm.all_reduce(x, algorithm="copyengine")
        segs = copyengine.segments(_Call("all_reduce", (n,), torch.bfloat16), world)
        if world == 1:  # no peers: the kernel alone
            assert [c[0] for c in driver_calls] == ["launch"]
            continue
        _check_sequence(comm, driver_calls, segs, out.data_ptr(), None, False, f"wn_ce_sum_bf16_w{world}")


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_fused_sequence(make_comm, driver_calls, world, mode):
    comm, rec = make_comm(world, rank=1)
    _attach(comm, rec, driver_calls)
    for rows in (1, 7, 300):
        driver_calls.clear()
        x, res = torch.zeros(rows, 4096, dtype=torch.float16), torch.zeros(rows, 4096, dtype=torch.float16)
        out, res_back = comm.fused_allreduce_rmsnorm(x, res, torch.ones(4096, dtype=torch.float16), 1e-6,
                                                     residual_mode=mode, algorithm="copyengine")
        assert res_back is res
        p = comm.plan("fused_allreduce_rmsnorm", x, res, torch.ones(4096, dtype=torch.float16), 1e-6,
                      residual_mode=mode, algorithm="copyengine")
        segs = copyengine.segments(_Call("fused_allreduce_rmsnorm", (rows, 4096), torch.float16), world)
        _check_sequence(comm, driver_calls, segs, out.data_ptr(), res.data_ptr(), mode == "replicated", p.entry)


def test_flag_value_is_the_call_signature_or_one(make_comm, driver_calls):
    comm, rec = make_comm(4)
    _attach(comm, rec, driver_calls)
    x = torch.zeros(1000, dtype=torch.float32)
    comm.all_reduce(x, algorithm="copyengine")
    desc = comm._channels[0].ws + catalog.DESC_OFF  # our descriptor words (local) are not flags
    signed = {c[2] for c in driver_calls if c[0] == "write" and not 0 <= c[1] - desc < catalog.DATA_OFF - catalog.DESC_OFF}
    driver_calls.clear()
    comm.options = type(comm.options)(timeout_s=1.5, call_signature=False)
    comm.all_reduce(x, algorithm="copyengine")
    assert {c[2] for c in driver_calls if c[0] == "write"} == {1} and len(signed) == 1 and signed != {1}  # no descriptor
    assert np.uint32(next(iter(signed))) != 0
