"""Launch planning: every rank must derive the same, valid launch from the same inputs."""
from __future__ import annotations

import json

import pytest

from weave_nvshmem.collectives import plan, tuning
from weave_nvshmem.collectives.plan import Launch, fused_block, owned_rows, plan_all_reduce, plan_fused
from weave_nvshmem.ptx import table
from weave_nvshmem.ptx.catalog import MAX_CTAS, MAX_WORLD, VEC_ELEMS

DTYPES = tuple(VEC_ELEMS)
WORLDS = (1, 2, 4, 8)
NELEMS = (1, 7, 8, 1000, 4096, 65537, 1 << 20, (1 << 24) + 3, 1 << 28)
ROWS = (0, 1, 3, 7, 16, 17, 64, 65, 1000, 8191)


@pytest.fixture(autouse=True)
def no_tuning_table(tmp_path, monkeypatch):
    """Plan from the built-in heuristics, not from a tuning.json a benchmark may have written."""
    monkeypatch.setenv("WEAVE_NVSHMEM_TUNING", str(tmp_path / "absent.json"))


def hiddens(dtype):
    ve = VEC_ELEMS[dtype]
    top = 4096 * ve
    return sorted({ve, 2 * ve, 33 * ve, 1024, 2048, 4096, 4104, 5120, 8192, top - ve, top})


# ---- all-reduce ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("algorithm", plan.ALLREDUCE_ALGORITHMS)
def test_plan_all_reduce_valid_and_deterministic(dtype, world, algorithm):
    for nelem in NELEMS:
        if algorithm == "lamport" and -(-nelem // VEC_ELEMS[dtype]) * 16 > plan.LAMPORT_SLOT:
            with pytest.raises(ValueError, match="all_reduce: algorithm 'lamport'"):
                plan_all_reduce(nelem, dtype, world, algorithm)
            continue
        p = plan_all_reduce(nelem, dtype, world, algorithm)
        assert p == plan_all_reduce(nelem, dtype, world, algorithm)
        assert isinstance(p, Launch) and p.reason
        if world == 1 and algorithm == "auto":  # one rank: a device copy, no kernel
            assert p.algorithm == "copy" and p.kernel is None and p.entry is None
            continue
        assert p.algorithm in ("lamport", "oneshot", "twoshot", "pull", "copyengine")
        if algorithm != "auto":
            assert p.algorithm == algorithm
        assert p.kernel is plan.table.spec("all_reduce", p.algorithm) and p.entry.endswith(f"_{dtype}_w{world}")
        assert 1 <= p.grid <= MAX_CTAS and isinstance(p.grid, int)
        assert 32 <= p.block <= 1024 and p.block % 32 == 0
        assert p.vpt == 1
        assert p.smem == (plan.table.PULL_SMEM if p.algorithm == "pull" else 0)  # only pull.ptx uses smem


def test_plan_all_reduce_zero_elements_still_launchable():
    p = plan_all_reduce(0, "bf16", 4)
    assert p.grid >= 1


@pytest.mark.parametrize("ctas", [1, 5, MAX_CTAS])
def test_plan_all_reduce_explicit_ctas(ctas):
    for algorithm in plan.ALLREDUCE_ALGORITHMS:
        assert plan_all_reduce(1 << 16, "f16", 8, algorithm, ctas).grid == ctas


def test_bulk_is_retired():
    assert "bulk" not in plan.ALLREDUCE_ALGORITHMS + plan.FUSED_ALGORITHMS
    for fn in (lambda: plan_all_reduce(1024, "bf16", 2, "bulk"), lambda: plan_fused(4, 1024, "bf16", 2, "bulk")):
        with pytest.raises(ValueError, match="algorithm must be one of"):
            fn()


def test_plan_all_reduce_auto_picks_lamport_then_oneshot_for_small_inputs():
    assert plan_all_reduce(1024, "bf16", 8).algorithm == "lamport"
    assert plan_all_reduce(plan.LAMPORT_SLOT // 2, "bf16", 8).algorithm == "lamport"
    assert plan_all_reduce(plan.LAMPORT_SLOT // 2 + 1, "bf16", 8).algorithm == "oneshot"
    assert plan_all_reduce(1 << 26, "bf16", 8).algorithm == "twoshot"


# ---- fused -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_block_covers_the_row(dtype):
    ve = VEC_ELEMS[dtype]
    for hidden in list(hiddens(dtype)) + list(range(ve, 4096 * ve + 1, 7 * ve)):
        threads, vpt = fused_block(hidden, dtype)
        assert (threads, vpt) == fused_block(hidden, dtype)
        assert vpt in (1, 2, 4, 8)
        assert threads % 32 == 0 and 32 <= threads <= 512
        assert threads * vpt * ve >= hidden, (hidden, threads, vpt)
        # the smallest VPT that fits: one VPT step down would need more than 512 threads
        if vpt > 1:
            assert hidden // ve > 512 * (vpt // 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_block_rejects_too_large_rows(dtype):
    with pytest.raises(ValueError, match="fused_allreduce_rmsnorm"):
        fused_block(4096 * VEC_ELEMS[dtype] + VEC_ELEMS[dtype], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("algorithm", plan.FUSED_ALGORITHMS)
def test_plan_fused_valid_and_deterministic(dtype, world, algorithm):
    ve = VEC_ELEMS[dtype]
    if algorithm == "local" and world != 1:
        with pytest.raises(ValueError, match="algorithm 'local' runs only at world size 1"):
            plan_fused(8, 1024, dtype, world, algorithm)
        return
    for rows in ROWS:
        for hidden in hiddens(dtype):
            row_bytes = hidden * 16 // ve
            if algorithm == "lamport" and rows * row_bytes > plan.LAMPORT_SLOT:
                with pytest.raises(ValueError, match="algorithm 'lamport'"):
                    plan_fused(rows, hidden, dtype, world, algorithm)
                continue
            p = plan_fused(rows, hidden, dtype, world, algorithm)
            assert p == plan_fused(rows, hidden, dtype, world, algorithm)
            assert p.algorithm in ("lamport", "oneshot", "twoshot", "local", "pull", "copyengine")
            assert (p.algorithm == "local") == (world == 1 and algorithm in ("auto", "local"))
            if algorithm != "auto":
                assert p.algorithm == algorithm
            assert p.smem == (plan.table.PULL_SMEM if p.algorithm == "pull" else 0) and p.reason
            if p.algorithm == "pull":  # fused_pull.ptx: 512 threads, one CTA per own row, at most PULL_CTAS
                assert p.block == 512 and p.grid == max(1, min(plan.PULL_CTAS, -(-rows // world)))
                assert p.entry == f"wn_fused_pull_{dtype}_w{world}" and "fused_pull.ptx" in p.reason
                continue
            if p.algorithm == "local":  # world 1: one CTA per row, the one-row block
                # no residual here: at VPT > 1 a CTA takes LOCAL_PREFETCH_ROWS rows (prefetching)
                per = 1 if p.vpt == 1 else plan.LOCAL_PREFETCH_ROWS
                want = min(max(1, rows), max(plan.LOCAL_PREFETCH_GRID if per > 1 else 1, -(-rows // per)))
                assert p.grid == want and (p.block, p.vpt) == fused_block(hidden, dtype)
                assert plan_fused(rows, hidden, dtype, world, algorithm, residual=True).grid == max(1, rows)
                assert p.entry == f"wn_fused_local_{dtype}_v{p.vpt}"
                continue
            assert 1 <= p.grid <= MAX_CTAS
            if p.algorithm in ("twoshot", "copyengine"):  # 16 warps, a group of them per row
                assert p.block == plan.TWOSHOT_BLOCK and p.group == plan.row_group(-(-(-(-rows // world)) // p.grid))
                continue
            assert p.block % 32 == 0 and 32 <= p.block <= 512
            assert p.vpt in (1, 2, 4, 8)
            assert p.block * p.vpt * ve >= hidden
            assert (p.block, p.vpt) == fused_block(hidden, dtype)


@pytest.mark.parametrize("rows", ROWS)
def test_plan_fused_sharded_is_twoshot(rows):
    assert plan_fused(rows, 4096, "bf16", 8, sharded=True).algorithm == "twoshot"
    assert plan_fused(rows, 4096, "bf16", 8, "twoshot", sharded=True).algorithm == "twoshot"
    with pytest.raises(ValueError, match="fused_allreduce_rmsnorm: algorithm 'oneshot'"):
        plan_fused(rows, 4096, "bf16", 8, "oneshot", sharded=True)


def test_plan_fused_explicit_ctas():
    assert plan_fused(1000, 4096, "bf16", 8, "twoshot", 77).grid == 77


@pytest.mark.parametrize("rows_per_block, group", [(1, 16), (2, 8), (3, 8), (4, 4), (7, 4), (8, 2), (15, 2),
                                                    (16, 1), (1000, 1)])
def test_row_group_keeps_the_warps_busy(rows_per_block, group):
    assert plan.row_group(rows_per_block) == group


def test_plan_fused_auto_decode_vs_prefill():
    assert plan_fused(8, 4096, "bf16", 8).algorithm == "lamport"
    assert plan_fused(64, 8192, "bf16", 2).algorithm == "oneshot"  # 1 MB: beyond the Lamport slot
    assert plan_fused(4096, 4096, "bf16", 8).algorithm == "twoshot"


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("rows", [1, 16, 8191])
def test_plan_fused_world_one_is_local(rows, sharded):
    """World 1: auto runs the local kernel for any rows and both residual modes; explicit other
    algorithms still plan their own kernels; the sharded bit means nothing there (masked)."""
    p = plan_fused(rows, 8192, "bf16", 1, sharded=sharded, residual=True)
    assert p.algorithm == "local" and p.transport == "local" and "world 1" in p.reason
    assert p.flags == plan.FusedFlags.RESIDUAL
    assert plan_fused(rows, 8192, "bf16", 1, "twoshot", sharded=sharded).algorithm == "twoshot"
    assert plan_fused(rows, 8192, "bf16", 1, "oneshot").algorithm == "oneshot"


def test_flags_are_what_the_kernel_honours():
    F, A = plan.FusedFlags, plan.AllReduceFlags
    two = plan_fused(4096, 4096, "bf16", 4, "twoshot", sharded=True, residual=True, zero_copy=True)
    assert two.flags == F.SHARDED | F.RESIDUAL | F.ZERO_COPY and two.transport == "p2p"
    mc = plan_fused(4096, 4096, "bf16", 4, "twoshot", sharded=True, residual=True, zero_copy=True, multicast=True)
    assert mc.flags == F.SHARDED | F.RESIDUAL and mc.entry.startswith("wn_fused_multimem_")  # no zero copy there
    assert mc.block == fused_block(4096, "bf16")[0] and mc.kernel.status == plan.table.MULTICAST_STATUS
    one = plan_fused(8, 4096, "bf16", 4, "oneshot", residual=True, zero_copy=True)
    assert one.flags == F.RESIDUAL
    assert plan_all_reduce(1 << 24, "bf16", 4, "twoshot", zero_copy=True).flags == A.ZERO_COPY
    assert plan_all_reduce(1 << 24, "bf16", 4, "oneshot", zero_copy=True).flags == A.NONE
    assert plan_all_reduce(1 << 24, "bf16", 4, "twoshot", zero_copy=True, multicast=True).flags == A.NONE
    rs = plan.plan_scatter_gather("reduce_scatter", 1 << 20, "bf16", 4, zero_copy=True)
    ag = plan.plan_scatter_gather("all_gather", 1 << 20, "bf16", 4, zero_copy=True)
    assert rs.flags == A.REDUCE_SCATTER | A.ZERO_COPY and ag.flags == A.ALL_GATHER
    assert rs.grid == ag.grid == plan_all_reduce(1 << 20, "bf16", 4, "twoshot").grid
    assert plan.plan_scatter_gather("all_gather", 1 << 20, "bf16", 1).algorithm == "copy"


# ---- tuning table ----------------------------------------------------------------------------

def test_tuning_table_is_honoured(tmp_path, monkeypatch):
    table = {"all_reduce": {"4": [{"bytes": 4096, "algorithm": "twoshot", "ctas": 3},
                                  {"bytes": 1024, "algorithm": "oneshot", "ctas": 5}]},
             "fused_allreduce_rmsnorm": {"2": [{"bytes": 1 << 30, "algorithm": "twoshot", "ctas": 9}]}}
    heuristic = {args: plan_all_reduce(*args) for args in [(1 << 20, "f32", 4), (256, "f32", 2)]}
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("WEAVE_NVSHMEM_TUNING", str(path))
    # smallest measured size >= the input's bytes; the reason names the row and the file
    assert _agb(plan_all_reduce(256, "f32", 4)) == ("oneshot", 5, 512)
    assert _agb(plan_all_reduce(257, "f32", 4)) == ("twoshot", 3, 512)
    assert "bytes <= 4096" in plan_all_reduce(257, "f32", 4).reason and str(path) in plan_all_reduce(257, "f32", 4).reason
    # explicit ctas win over the table; explicit algorithms ignore it
    assert plan_all_reduce(257, "f32", 4, ctas=2).grid == 2
    assert plan_all_reduce(257, "f32", 4, "oneshot").algorithm == "oneshot"
    # beyond the largest measured size, or another world size: the heuristics
    for args, launch in heuristic.items():
        assert plan_all_reduce(*args) == launch
    p = plan_fused(8, 4096, "bf16", 2)
    assert (p.algorithm, p.grid) == ("twoshot", 9)


def _agb(p):
    return p.algorithm, p.grid, p.block


# ---- owned rows ------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [0, 1, 3, 7, 1000, 8191])
@pytest.mark.parametrize("world", WORLDS)
def test_owned_rows_partition(rows, world):
    ranges = [owned_rows(rows, r, world) for r in range(world)]
    seen = [i for rg in ranges for i in rg]
    assert seen == list(range(rows))  # every row exactly once, in rank order
    sizes = [len(rg) for rg in ranges]
    assert max(sizes) - min(sizes) <= 1
    for r, rg in enumerate(ranges):
        assert isinstance(rg, range) and rg.step == 1
        assert rg == owned_rows(rows, r, world)


def test_owned_rows_fewer_rows_than_ranks():
    got = [list(owned_rows(3, r, 8)) for r in range(8)]
    assert sum(got, []) == [0, 1, 2]
    assert sum(1 for g in got if not g) == 5


def test_owned_rows_is_exported_at_top_level():
    import weave_nvshmem

    assert weave_nvshmem.owned_rows is owned_rows


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("fn,op", [
    (lambda **kw: plan_all_reduce(1024, "bf16", 2, **kw), "all_reduce"),
    (lambda **kw: plan_fused(16, 1024, "bf16", 2, **kw), "fused_allreduce_rmsnorm"),
])
def test_bad_algorithm_and_ctas(fn, op):
    for algorithm in ("multimem-ish", "", None, "ONESHOT"):
        with pytest.raises(ValueError, match=f"{op}: algorithm"):
            fn(algorithm=algorithm)
    for ctas in (0, -1, MAX_CTAS + 1, 2.0, "4"):
        with pytest.raises(ValueError, match=f"{op}: ctas"):
            fn(ctas=ctas)


@pytest.mark.parametrize("bad", ["f64", "bfloat16", "int8", None])
def test_bad_dtype(bad):
    with pytest.raises(TypeError, match="all_reduce"):
        plan_all_reduce(1024, bad, 2)
    with pytest.raises(TypeError, match="fused_allreduce_rmsnorm"):
        plan_fused(16, 1024, bad, 2)
    with pytest.raises(TypeError, match="fused_allreduce_rmsnorm"):
        fused_block(1024, bad)


def test_ptx_dtype_maps_torch_dtypes():
    torch = pytest.importorskip("torch")
    assert plan.ptx_dtype(torch.bfloat16, "op") == "bf16"
    assert plan.ptx_dtype(torch.float16, "op") == "f16"
    assert plan.ptx_dtype(torch.float32, "op") == "f32"
    for bad in (torch.float64, torch.int32, torch.uint8):
        with pytest.raises(TypeError, match="my_op: unsupported dtype"):
            plan.ptx_dtype(bad, "my_op")


def test_staging_bytes_rounds_to_vectors():
    assert plan.staging_bytes(0) == 0
    assert plan.staging_bytes(1) == 16
    assert plan.staging_bytes(32) == 32


def test_world_limit_matches_catalog():
    assert MAX_WORLD == 8


def test_tuning_table_per_device_and_stale_rows(tmp_path, monkeypatch):
    """Without $WEAVE_NVSHMEM_TUNING the planner reads the tune command's table for this device
    model under $WEAVE_NVSHMEM_CACHE; rows naming unknown algorithms or bad CTA counts are ignored."""
    monkeypatch.delenv("WEAVE_NVSHMEM_TUNING")
    monkeypatch.setenv("WEAVE_NVSHMEM_CACHE", str(tmp_path))
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H200")
    tuning.clear_cache()
    assert tuning.own_path() == tmp_path / "tuning" / "nvidia-h200.json"
    heuristic = {n: plan_all_reduce(n, "f32", 4) for n in (256, 1000)}  # no table yet
    tuning.own_path().parent.mkdir(parents=True)
    tuning.own_path().write_text(json.dumps({"all_reduce": {"4": [
        {"bytes": 1024, "algorithm": "fourshot", "ctas": 3},
        {"bytes": 4096, "algorithm": "twoshot", "ctas": 0},
        {"bytes": 1 << 20, "algorithm": "twoshot", "ctas": 6}]}}))
    tuning.clear_cache()
    assert plan_all_reduce(256, "f32", 4) == heuristic[256]     # unknown algorithm: built-in rules
    assert plan_all_reduce(1000, "f32", 4) == heuristic[1000]   # ctas out of range: built-in rules
    assert _agb(plan_all_reduce(100_000, "f32", 4)) == ("twoshot", 6, 512)
    tuning.clear_cache()


def test_shipped_table_under_the_own_one(tmp_path, monkeypatch):
    """On a device model the package has measured, auto follows the shipped table; the tune
    command's own table wins per (op, world); $WEAVE_NVSHMEM_TUNING replaces both."""
    shipped = json.loads(tuning.SHIPPED.read_text())
    rows = shipped["nvidia-h200"]["fused_allreduce_rmsnorm"]["2"]
    assert rows == sorted(rows, key=lambda r: r["bytes"]) and all(
        r["algorithm"] in plan.FUSED_ALGORITHMS[1:] and 1 <= r["ctas"] <= MAX_CTAS for r in rows)
    monkeypatch.delenv("WEAVE_NVSHMEM_TUNING")
    monkeypatch.setenv("WEAVE_NVSHMEM_CACHE", str(tmp_path))
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H200")
    tuning.clear_cache()
    first = rows[0]  # the smallest size the tune measured: 1 token x 8192 (16 KB)
    p = plan_fused(1, 8192, "bf16", 2)
    assert first["bytes"] == 16384 and (p.algorithm, p.grid) == (first["algorithm"], first["ctas"])
    own = {"fused_allreduce_rmsnorm": {"2": [{"bytes": 1 << 40, "algorithm": "twoshot", "ctas": 5}]}}
    tuning.own_path().parent.mkdir(parents=True)
    tuning.own_path().write_text(json.dumps(own))
    tuning.clear_cache()
    assert (plan_fused(1, 8192, "bf16", 2).algorithm, plan_fused(1, 8192, "bf16", 2).grid) == ("twoshot", 5)
    assert _agb(plan_all_reduce(8192, "bf16", 2)) == (*_tuned_all_reduce(shipped, 8192 * 2), 512)
    assert "shipped table nvidia-h200" in plan_all_reduce(8192, "bf16", 2).reason
    assert tuning.read()["fused_allreduce_rmsnorm"]["2"] == own["fused_allreduce_rmsnorm"]["2"]
    monkeypatch.setenv("WEAVE_NVSHMEM_TUNING", str(tmp_path / "absent.json"))
    assert plan_fused(1, 8192, "bf16", 2).algorithm == "lamport"  # built-in rules
    tuning.clear_cache()


def _tuned_all_reduce(shipped, nbytes):
    row = next(r for r in shipped["nvidia-h200"]["all_reduce"]["2"] if nbytes <= r["bytes"])
    return row["algorithm"], row["ctas"]


def test_tuning_merge_and_install(tmp_path, monkeypatch):
    """The merge rule keeps other world sizes, replaces this one's rows (sorted, errors skipped);
    install writes the merge into own_path() and the planner reads it at once."""
    rows = [{"op": "all_reduce", "bytes": 8, "algorithm": "lamport", "ctas": 2, "us": 1.0},
            {"op": "all_reduce", "bytes": 4, "algorithm": "oneshot", "ctas": 4},
            {"op": "fused_allreduce_rmsnorm", "bytes": 4, "error": "no configuration ran"}]
    previous = {"all_reduce": {"2": [{"bytes": 1, "algorithm": "twoshot", "ctas": 1}],
                               "4": [{"bytes": 4, "algorithm": "twoshot", "ctas": 9}]}}
    table = tuning.merge(previous, rows, 4)
    assert table == {"all_reduce": {"2": [{"bytes": 1, "algorithm": "twoshot", "ctas": 1}],
                                    "4": [{"bytes": 4, "algorithm": "oneshot", "ctas": 4},
                                          {"bytes": 8, "algorithm": "lamport", "ctas": 2}]}}
    path = tmp_path / "own.json"
    path.write_text(json.dumps(previous))
    monkeypatch.setenv("WEAVE_NVSHMEM_TUNING", str(path))
    tuning.clear_cache()
    assert _agb(plan_all_reduce(1, "f32", 4)) == ("twoshot", 9, 512)
    assert tuning.install(rows, 4) == path and json.loads(path.read_text()) == table
    assert _agb(plan_all_reduce(1, "f32", 4)) == ("oneshot", 4, 512)
    tuning.clear_cache()


# ---- the pull transport (pull.ptx) ----------------------------------------------------------------
@pytest.mark.parametrize("op", ["all_reduce", "reduce_scatter", "all_gather"])
@pytest.mark.parametrize("world", [2, 4, 8])
def test_pull_is_selectable_by_name_on_few_ctas(op, world):
    total = 8192 * 8192
    for zero_copy in (False, True):
        if op == "all_reduce":
            p = plan_all_reduce(total, "bf16", world, "pull", zero_copy=zero_copy)
        else:
            p = plan.plan_scatter_gather(op, total, "bf16", world, zero_copy=zero_copy, algorithm="pull")
        assert p.algorithm == "pull" and p.kernel is plan.table.spec(op, "pull")
        assert p.entry == f"wn_pull_bf16_w{world}" and p.block == 512
        assert 1 <= p.grid <= plan.PULL_CTAS == 8  # the default footprint
        assert p.smem == plan.table.PULL_SMEM and "algorithm='pull' given" in p.reason
        want = {"all_reduce": table.AllReduceFlags.NONE, "reduce_scatter": table.AllReduceFlags.REDUCE_SCATTER,
                "all_gather": table.AllReduceFlags.ALL_GATHER}[op]
        if zero_copy and op != "all_gather":  # all_gather never reads a peer's input in place
            want |= table.AllReduceFlags.ZERO_COPY
        assert p.flags == want
    # any grid 1..MAX_CTAS when asked for
    for ctas in (1, 2, 8, 32, MAX_CTAS):
        q = (plan_all_reduce(total, "bf16", world, "pull", ctas) if op == "all_reduce"
             else plan.plan_scatter_gather(op, total, "bf16", world, ctas, algorithm="pull"))
        assert q.grid == ctas and "ctas given" in q.reason


def test_pull_default_grid_follows_the_chunks():
    # one CTA per chunk of a rank's segment: 1 for tiny inputs, PULL_CTAS for large ones
    assert plan_all_reduce(7, "bf16", 4, "pull").grid == 1
    chv = plan.pull_chunk_vectors(4)
    assert plan_all_reduce(3 * chv * 4 * 8, "bf16", 4, "pull").grid == 3
    assert plan_all_reduce(1 << 26, "f32", 8, "pull").grid == plan.PULL_CTAS


def test_pull_chunks_fit_three_stages_of_shared_memory():
    from weave_nvshmem.ptx import catalog, loader

    assert loader.DEFAULT_SHMEM < plan.table.PULL_SMEM <= loader.MAX_SHMEM
    for world in range(1, catalog.MAX_WORLD + 1):
        chv = plan.pull_chunk_vectors(world)
        assert chv & (chv - 1) == 0 and 3 * world * chv * 16 <= plan.table.PULL_SMEM
        text = catalog.render("pull.ptx", "bf16", world)
        assert f"mad.lo.u32 %sst, %st, {world * chv * 16}, %sbuf;" in text  # the kernel's stage size


def test_auto_does_not_pick_pull():
    for world in (2, 4, 8):
        for nelem in (1, 1 << 16, 1 << 26):
            assert plan_all_reduce(nelem, "bf16", world, zero_copy=True).algorithm != "pull"
            assert plan_all_reduce(nelem, "bf16", world, ctas=4, zero_copy=True).algorithm != "pull"
        for op in ("reduce_scatter", "all_gather"):
            assert plan.plan_scatter_gather(op, 1 << 20, "bf16", world).algorithm == "twoshot"


@pytest.mark.parametrize("world", [2, 4, 8])
def test_fused_pull_is_selectable_by_name_on_few_ctas(world):
    """fused_pull.ptx by name: every flag honoured, one CTA per own row up to PULL_CTAS, any grid
    when asked for."""
    assert "pull" in plan.FUSED_ALGORITHMS
    for rows, grid in ((1, 1), (7, min(8, -(-7 // world))), (1000, 8), (8191, 8)):
        for sharded, residual, zero_copy in ((False, True, False), (True, True, True), (False, False, True),
                                             (True, False, False)):
            p = plan_fused(rows, 8192, "bf16", world, "pull", sharded=sharded, residual=residual,
                           zero_copy=zero_copy)
            assert p.kernel is plan.table.spec("fused_allreduce_rmsnorm", "pull") and p.transport == "p2p"
            assert p.entry == f"wn_fused_pull_bf16_w{world}" and (p.block, p.grid) == (512, grid)
            assert p.smem == plan.table.PULL_SMEM and "algorithm='pull' given" in p.reason
            want = table.FusedFlags.NONE
            for on, bit in ((sharded, table.FusedFlags.SHARDED), (residual, table.FusedFlags.RESIDUAL),
                            (zero_copy, table.FusedFlags.ZERO_COPY)):
                want |= bit if on else table.FusedFlags.NONE
            assert p.flags == want
    for ctas in (1, 2, 8, 32, MAX_CTAS):
        q = plan_fused(1000, 4096, "f32", world, "pull", ctas, True)
        assert q.grid == ctas and "ctas given" in q.reason


def test_fused_pull_stage_fits_three_stages_of_shared_memory():
    """fused_pull.ptx's column chunk is pull_chunk_vectors(world): W of them fill one 64 KB stage."""
    from weave_nvshmem.ptx import catalog

    for world in range(1, catalog.MAX_WORLD + 1):
        text = catalog.render("fused_pull.ptx", "bf16", world)
        chv = plan.pull_chunk_vectors(world)
        assert f"min.u32 %n, %n, {chv};" in text and f"mad.lo.u32 %sst, %st, {64 * 1024}, %sbuf;" in text
        assert 3 * 64 * 1024 == plan.table.PULL_SMEM


def test_auto_never_picks_fused_pull(monkeypatch):
    """Not by rule, and not from a tuning row naming it."""
    seen = []

    def pick(op, world, nbytes, allowed):
        seen.append(allowed)
        return None

    monkeypatch.setattr(plan.tuning, "pick", pick)
    for world in (2, 4, 8):
        for rows in (1, 64, 1000, 8191):
            for sharded in (False, True):
                p = plan_fused(rows, 8192, "bf16", world, sharded=sharded, zero_copy=True, ctas=4)
                assert p.algorithm != "pull"
    assert seen and all("pull" not in a for a in seen)


def test_scatter_gather_refuses_unknown_algorithms():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        plan.plan_scatter_gather("reduce_scatter", 1 << 20, "bf16", 4, algorithm="oneshot")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        plan.plan_scatter_gather("all_gather", 1 << 20, "bf16", 4, algorithm="lamport")
