"""Compression on the pull transport without a GPU (algorithm="pull" with compression=,
compressed_pull.ptx): validation, planning and its grid, the launches against the rendered
entries, staging, and the chunk geometry the kernel's bulk loads rely on (docs/compression.md,
docs/transport.md)."""
from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from test_launch_abi import check_launch, make_comm  # noqa: E402,F401  (the recording-communicator fixture)

from weave_nvshmem.collectives import compression, plan  # noqa: E402
from weave_nvshmem.collectives.compression import CompressionSpec  # noqa: E402
from weave_nvshmem.ptx import catalog, table  # noqa: E402

SPECS = [CompressionSpec(f, b) for f, b in table.COMPRESSED_VARIANTS]
TORCH = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def _sid(s):
    return f"{s.format}-b{s.block}"


def test_pull_q_is_not_an_algorithm_name():
    assert compression.ALGORITHMS == {"auto": "twoshot_q", "pull": "pull_q"}
    for names in (plan.ALLREDUCE_ALGORITHMS, plan.SCATTER_GATHER_ALGORITHMS, plan.FUSED_ALGORITHMS):
        assert "pull" in names and not set(names) & set(compression.ALGORITHMS.values())
    assert compression.algorithms("all_gather") == ("auto", "pull")
    assert compression.algorithms("fused_allreduce_rmsnorm") == ("auto", "pull")
    assert table.spec("fused_allreduce_rmsnorm", "pull_q").file == "compressed_fused_pull.ptx"
    for op in ("all_reduce", "reduce_scatter", "all_gather"):
        assert table.spec(op, "pull_q").file == "compressed_pull.ptx"
        assert table.spec(op, "pull_q").smem == table.PULL_SMEM


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("dt", list(TORCH))
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_pull_launches_name_their_entry(make_comm, world, dt, spec):
    comm, rec = make_comm(world, rank=world - 1)
    n = world * spec.block * 5
    x = torch.zeros(n, dtype=TORCH[dt])
    want = f"wn_pull_q_{spec.format}_{dt}_w{world}_b{spec.block}"
    for op, arg, flag in (("all_reduce", x, 0), ("reduce_scatter", x, 1), ("all_gather", x[:n // world], 2)):
        for gather in (("compressed", "input") if op == "all_reduce" else ("compressed",)):
            q = CompressionSpec(spec.format, spec.block, gather)
            p = comm.plan(op, arg, compression=q, algorithm="pull")
            assert p.algorithm == "pull_q" and p.entry == want and (p.block, p.smem) == (512, table.PULL_SMEM)
            assert (p.fmt, p.qblock) == (spec.format, spec.block) and p.grid == 1
            out = getattr(comm, op)(arg, compression=q, algorithm="pull")
            entry, args = check_launch(rec)
            assert entry == want
            assert int(args[3]) == flag | (4 if gather == "input" else 0) and int(args[2]) == n
            assert out.numel() == {"all_reduce": n, "reduce_scatter": n // world, "all_gather": n}[op]
            # the same op without algorithm= runs the two-shot push kernel
            assert comm.plan(op, arg, compression=q).algorithm == "twoshot_q"


def test_pull_grid_rule():
    """One CTA per chunk (a pull.ptx chunk's bytes in the input dtype) a rank reduces, at most PULL_CTAS."""
    spec = CompressionSpec("fp8")  # bf16 at 4 ranks: 16 KB chunks = 64 blocks of 128
    assert plan.plan_compressed("all_reduce", 128 * 64 * 4, "bf16", 4, spec, algorithm="pull").grid == 1
    assert plan.plan_compressed("all_reduce", 128 * 65 * 4, "bf16", 4, spec, algorithm="pull").grid == 2
    big = plan.plan_compressed("all_reduce", 8192 * 8192, "bf16", 4, spec, algorithm="pull")
    assert big.grid == plan.PULL_CTAS and "at most 8" in big.reason
    assert plan.plan_compressed("all_reduce", 8192 * 8192, "bf16", 4, spec, ctas=20, algorithm="pull").grid == 20
    assert plan.plan_compressed("all_reduce", 8192 * 8192, "bf16", 4, spec).grid == 32  # the two-shot's rule
    assert plan.plan_compressed("all_reduce", 128, "bf16", 1, spec, algorithm="pull").algorithm == "copy"


@pytest.mark.parametrize("call, match", [
    (lambda c, x, w: c.all_reduce(x, compression="fp8", algorithm="twoshot"), "algorithm='auto' or 'pull'"),
    (lambda c, x, w: c.reduce_scatter(x, compression="fp8", algorithm="oneshot"), "algorithm='auto' or 'pull'"),
    (lambda c, x, w: c.fused_allreduce_rmsnorm(x.view(8, 512), None, w, compression="fp8", algorithm="twoshot"),
     "algorithm='auto' or 'pull'"),
    (lambda c, x, w: c.all_gather(x, compression="fp8:128:input", algorithm="pull"), "gather must be 'compressed'"),
    (lambda c, x, w: c.all_reduce(x[:100], compression="fp8", algorithm="pull"), "multiple of 128"),
])
def test_unsupported_combinations_raise_before_any_launch(make_comm, call, match):
    comm, rec = make_comm(2)
    x = torch.zeros(4096, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=match):
        call(comm, x, torch.ones(512, dtype=torch.bfloat16))
    assert rec.launches == []


def test_staging_grows_to_the_compressed_size(make_comm):
    """The pull form needs compressed.ptx's slots: W of them, each a segment's compressed blocks."""
    comm, rec = make_comm(4)
    grown = []
    comm._channels[0].cap = 16
    comm.reserve = lambda nbytes, channel=None: grown.append(nbytes) or setattr(comm._channels[0], "cap", nbytes)
    x = torch.zeros(4 * 128 * 10, dtype=torch.bfloat16)
    for gather in compression.GATHERS:
        comm.all_reduce(x, compression=CompressionSpec("int8", 128, gather), algorithm="pull")
    assert grown == [compression.staging_bytes(CompressionSpec("int8", 128, g), x.numel(), 2, 4)
                     for g in compression.GATHERS]


@pytest.mark.parametrize("world", range(1, 9))
@pytest.mark.parametrize("dt", list(TORCH))
def test_chunk_geometry_keeps_bulk_loads_aligned(world, dt):
    """The kernel's chunk of CB blocks (its ``div.u32 %nch, %nch, CB``) is the planner's; a chunk's
    scales are a multiple of 16 bytes (every chunk's scale load starts 16-byte aligned), its
    payload and scales fit a region of the stage, and a warp's 256/B blocks never straddle chunks."""
    text = catalog.render("compressed_pull.ptx", dt, world)
    ve = catalog.VEC_ELEMS[dt]
    region = plan.pull_chunk_vectors(world) * 16
    assert world * region <= table.PULL_SMEM // 3
    for spec in SPECS:
        body = text.split(f".entry wn_pull_q_{spec.format}_{dt}_w{world}_b{spec.block}(")[1].split(".entry")[0]
        cb = int(re.search(r"div\.u32 %nch, %nch, (\d+);", body).group(1))
        assert cb == plan.pull_chunk_vectors(world) * ve // spec.block
        assert cb * spec.scale_bytes % 16 == 0 and cb % (256 // spec.block) == 0
        assert cb * spec.payload_bytes + cb * spec.scale_bytes <= region
        assert cb * spec.block * (16 // ve) == region  # an input-gather chunk fills its region


def test_fragments_take_shared_memory():
    """qload/qunpack read shared memory where the pull kernel dequantizes its stages, global
    memory elsewhere (compressed.ptx and compressed_fused.ptx render as before)."""
    pull = catalog.render("compressed_pull.ptx", "bf16", 4)
    assert "ld.shared.f32 %zs, [%qs]" in pull and "ld.global.f32 %zs, [%qs]" in pull
    assert re.search(r"ld\.shared\.v4\.b32 \{%zq0", pull)  # an input-gather chunk, from its stage
    for name in ("compressed.ptx", "compressed_fused.ptx"):
        # (the fused kernel's warp-group rstd reads its partials, %zt, from shared memory)
        assert not re.search(r"ld\.shared\.\S+ (%zs|\{%zq)", catalog.render(name, "bf16", 4))


# ---- the fused op on the pull transport (compressed_fused_pull.ptx) ----------------------------------
@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("dt", list(TORCH))
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_fused_pull_launches_name_their_entry(make_comm, world, dt, spec):
    comm, rec = make_comm(world, rank=world - 1)
    hidden = 3 * spec.block
    x = torch.zeros(5, hidden, dtype=TORCH[dt])
    w = torch.ones(hidden, dtype=TORCH[dt])
    want = f"wn_fused_pull_q_{spec.format}_{dt}_w{world}_b{spec.block}"
    for mode, sharded in (("replicated", 0), ("sharded", 1)):
        for residual in (torch.zeros(5, hidden, dtype=TORCH[dt]), None):
            for gather in compression.GATHERS:
                q = CompressionSpec(spec.format, spec.block, gather)
                p = comm.plan("fused_allreduce_rmsnorm", x, residual, w, residual_mode=mode, compression=q,
                              algorithm="pull")
                assert p.algorithm == "pull_q" and p.entry == want and (p.block, p.smem) == (512, table.PULL_SMEM)
                assert p.grid == min(plan.PULL_CTAS, -(-5 // world))  # one CTA per own row
                comm.fused_allreduce_rmsnorm(x, residual, w, 1e-5, residual_mode=mode, compression=q,
                                             algorithm="pull")
                entry, args = check_launch(rec)
                flags = sharded | (2 if residual is not None else 0) | (4 if gather == "input" else 0)
                assert entry == want and int(args[7]) == flags and int(args[4]) == 5 and int(args[5]) == hidden
                assert comm.plan("fused_allreduce_rmsnorm", x, residual, w, residual_mode=mode,
                                 compression=q).algorithm == "twoshot_q"


def test_fused_pull_grid_rule_and_stage_limit(make_comm):
    spec = CompressionSpec("fp8")
    fused = plan.plan_compressed_fused
    assert fused(1024, 8192, "bf16", 4, spec, algorithm="pull").grid == plan.PULL_CTAS
    assert fused(1024, 8192, "bf16", 4, spec).grid == 32  # the two-shot's rule
    assert fused(6, 8192, "bf16", 4, spec, algorithm="pull").grid == 2
    assert fused(1024, 8192, "bf16", 4, spec, ctas=20, algorithm="pull").grid == 20
    assert fused(4, 512, "bf16", 1, spec, algorithm="pull").algorithm == "local"
    # a row's 7 peer rows of 16384 fp8 elements are 112 KB: more than a 64 KB stage
    assert not plan.pull_fused_fits(spec, 16384, 2, 8) and plan.pull_fused_fits(spec, 16384, 2, 4)
    assert plan.pull_fused_fits(CompressionSpec("mxfp4"), 16384, 2, 8)
    assert not plan.pull_fused_fits(CompressionSpec("fp8", 128, "input"), 32768, 4, 2)  # a 128 KB f32 row
    comm, rec = make_comm(8)
    x = torch.zeros(8, 16384, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="64 KB pipeline stage.*algorithm='auto'"):
        comm.fused_allreduce_rmsnorm(x, None, torch.ones(16384, dtype=torch.bfloat16), compression=spec,
                                     algorithm="pull")
    assert rec.launches == []


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_fused_pull_row_geometry_keeps_bulk_loads_aligned(world, spec):
    """The kernel's region (its ``mad.lo.u32 %rsz, %nbr, SB, 30``): a row's payload and scale span
    load from 16-byte aligned addresses in whole 16s, never past the slot, and fit the region; the
    W-1 regions fit a stage wherever ``pull_fused_fits`` lets the plan through."""
    text = catalog.render("compressed_fused_pull.ptx", "bf16", world)
    body = text.split(f".entry wn_fused_pull_q_{spec.format}_bf16_w{world}_b{spec.block}(")[1].split(".entry")[0]
    assert f"mad.lo.u32 %rsz, %nbr, {spec.scale_bytes}, 30;" in body
    for rows, hidden in ((1, 256), (7, 768), (37, 1280), (300, 4096), (9, 8192)):
        nbr, pb, sb = hidden // spec.block, spec.payload_bytes, spec.scale_bytes
        jn = -(-rows // world)
        soff = (jn * nbr * pb + 15) // 16 * 16
        slot = compression.staging_bytes(spec, rows * hidden, 2, world, row=hidden)
        region = nbr * pb + (nbr * sb + 30) // 16 * 16
        assert nbr * pb % 16 == 0 and region % 16 == 0
        for j in range(jn):
            d = j * nbr * sb % 16
            size = (d + nbr * sb + 15) // 16 * 16
            start = soff + j * nbr * sb - d
            assert start % 16 == 0 and start + size <= slot and nbr * pb + size <= region
        if plan.pull_fused_fits(spec, hidden, 2, world):
            assert (world - 1) * region <= table.PULL_SMEM // 3
