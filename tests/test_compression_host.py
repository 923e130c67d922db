"""Compressed collectives without a GPU: the format references (round trips within their bounds,
scale edge cases, the NaN/Inf policy, e2m1 rounding), CompressionSpec and its errors, the
validation of ``compression=`` before any launch, planning and staging, and the launches against
compressed.ptx's entries (docs/compression.md)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_launch_abi import check_launch, make_comm  # noqa: E402,F401  (the recording-communicator fixture)

from weave_nvshmem.collectives import compression, plan, quantize  # noqa: E402
from weave_nvshmem.collectives.compression import CompressionSpec  # noqa: E402
from weave_nvshmem.ptx import catalog, table  # noqa: E402

SPECS = [CompressionSpec(f, b) for f, b in table.COMPRESSED_VARIANTS]


def _sid(s):
    return f"{s.format}-b{s.block}"


# ---- the references -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 3e4])
def test_roundtrip_within_the_element_bound(spec, scale):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64 * 256, generator=g) * scale
    x[::97] *= 50.0  # outliers inside blocks
    err = (quantize.roundtrip(x, spec).double() - x.double()).abs()
    bound = quantize.element_bound(x, spec)
    assert bool((err <= bound).all()), float((err - bound).max())
    rel = float(err.norm() / x.double().norm())
    assert 0 < rel < {"fp8": 0.07, "int8": 0.03, "mxfp4": 0.3}[spec.format]


@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_all_zero_and_tiny_blocks_are_zero(spec):
    x = torch.zeros(4 * spec.block)
    x[spec.block:2 * spec.block] = 1e-39  # subnormal fp32: the scale underflows
    got = quantize.roundtrip(x, spec)
    assert torch.isfinite(got).all()
    assert float(got[:spec.block].abs().max()) == 0.0
    assert float(got[spec.block:2 * spec.block].abs().max()) <= 2e-39


@pytest.mark.parametrize("spec", SPECS, ids=_sid)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_value_makes_its_block_nan_and_only_its_block(spec, bad):
    x = torch.randn(3 * spec.block)
    x[spec.block + 5] = bad
    got = quantize.roundtrip(x, spec)
    assert torch.isnan(got[spec.block:2 * spec.block]).all()
    assert torch.isfinite(got[:spec.block]).all() and torch.isfinite(got[2 * spec.block:]).all()


@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_the_block_maximum_is_exact(spec):
    """fp8/int8 put amax on the top code (448 or 127 times its scale, up to fp32 rounding);
    mxfp4's power-of-two scale keeps a power-of-two amax exact."""
    x = torch.rand(8 * spec.block) * 0.2
    x[::spec.block] = torch.tensor([4.0, -2.0, 0.5, 64.0, -1.0, 8.0, 0.25, 1024.0])
    got = quantize.roundtrip(x, spec).view(-1, spec.block)
    amax = x.view(-1, spec.block).abs().amax(1)
    assert torch.allclose(got.abs().amax(1), amax, rtol=2 ** -20, atol=0)


def test_e2m1_rounds_to_nearest_even_and_saturates():
    spec = CompressionSpec("mxfp4")
    vals = [0.0, 0.25, 0.26, 0.75, 1.25, 1.3, 1.75, 2.5, 2.6, 3.5, 5.0, 5.1, 6.0, -0.75, -7.9]
    x = torch.tensor(vals + [0.0] * (31 - len(vals)) + [7.9])  # amax 7.9: scale 2^0
    got = quantize.roundtrip(x, spec)[:len(vals)].tolist()
    assert got == [0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 2.0, 2.0, 3.0, 4.0, 4.0, 6.0, 6.0, -1.0, -6.0]
    codes, scales = quantize.quantize(x, spec)
    assert codes.dtype == torch.uint8 and int(scales[0]) == 127 and int(codes.max()) <= 15


def test_fp8_and_int8_codes_and_scales():
    x = torch.linspace(-1, 1, 128)
    c, s = quantize.quantize(x, CompressionSpec("fp8"))
    assert c.dtype == torch.float8_e4m3fn and float(s[0]) == pytest.approx(1 / 448)
    c, s = quantize.quantize(x, CompressionSpec("int8"))
    assert c.dtype == torch.int8 and int(c.min()) == -127 and int(c.max()) == 127


@pytest.mark.parametrize("spec", SPECS, ids=_sid)
@pytest.mark.parametrize("gather", compression.GATHERS)
@pytest.mark.parametrize("world", [2, 4, 8])
def test_compressed_all_reduce_model_within_its_bound(spec, gather, world):
    spec = CompressionSpec(spec.format, spec.block, gather)
    xs = [torch.randn(37, 256, generator=torch.Generator().manual_seed(r)).to(torch.bfloat16) for r in range(world)]
    got = quantize.compressed_all_reduce(xs, spec)
    exact = sum(x.double() for x in xs)
    err = float((got.double() - exact).norm() / exact.norm())
    bound = quantize.all_reduce_bound(xs, spec)
    assert err <= bound < 2.0, (err, bound)
    assert got.dtype == torch.bfloat16 and got.shape == xs[0].shape


def test_input_gather_is_closer_than_compressed_gather():
    xs = [torch.randn(4096, generator=torch.Generator().manual_seed(r)) for r in range(4)]
    exact = sum(x.double() for x in xs)
    errs = {g: float((quantize.compressed_all_reduce(xs, CompressionSpec("fp8", 128, g)).double() - exact).norm())
            for g in compression.GATHERS}
    assert errs["input"] < errs["compressed"]


# ---- the spec -----------------------------------------------------------------------------------------
def test_spec_defaults_parse_and_sizes():
    assert CompressionSpec.of(None) is None
    assert CompressionSpec.of("fp8") == CompressionSpec("fp8", 128, "compressed")
    assert CompressionSpec.of("int8:64:input") == CompressionSpec("int8", 64, "input")
    assert CompressionSpec.of({"format": "mxfp4"}).block == 32
    spec = CompressionSpec("fp8")
    assert CompressionSpec.parse(str(spec)) == spec
    assert spec.bits_per_element == 8.25 and CompressionSpec("mxfp4").bits_per_element == 4.25
    assert CompressionSpec("int8", 256).bits_per_element == 8.125


@pytest.mark.parametrize("bad, match", [
    (("int4",), "format must be one of"), (("fp8", 96), "block for fp8 must be one of"),
    (("mxfp4", 64), r"block for mxfp4 must be one of \(32,\)"), (("int8", 128, "fp8"), "gather must be one of")])
def test_spec_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        CompressionSpec(*bad)


@pytest.mark.parametrize("bad", ["", "fp8:x", "a:b:c:d"])
def test_parse_errors(bad):
    with pytest.raises(ValueError, match="compression"):
        CompressionSpec.parse(bad)


def test_of_rejects_other_types():
    with pytest.raises(TypeError, match="compression: expected"):
        CompressionSpec.of(8)


@pytest.mark.parametrize("spec", SPECS, ids=_sid)
@pytest.mark.parametrize("gather", compression.GATHERS)
@pytest.mark.parametrize("world", [2, 3, 8])
def test_staging_holds_the_layout_and_is_below_the_uncompressed_slot(spec, gather, world):
    spec = CompressionSpec(spec.format, spec.block, gather)
    for nblk in (1, world - 1, world, 7 * world + 3, 4096):
        numel = nblk * spec.block
        got = compression.staging_bytes(spec, numel, 2, world)
        jn = -(-nblk // world)
        payload_end = -(-jn * spec.payload_bytes // 16) * 16
        assert got >= payload_end + jn * spec.scale_bytes and got % 16 == 0
        if gather == "input":
            assert got >= jn * spec.block * 2
        assert got <= plan.staging_bytes(numel * 2)


def test_wire_bytes_formula():
    n, w = 8192, 4
    plain = compression.wire_bytes(None, n, 2, w)
    fp8 = compression.wire_bytes(CompressionSpec("fp8"), n, 2, w)
    mx = compression.wire_bytes(CompressionSpec("mxfp4"), n, 2, w)
    assert plain["total"] == 2 * 0.75 * n * 2
    assert fp8["total"] == pytest.approx(plain["total"] * 8.25 / 16)
    assert mx["total"] == pytest.approx(plain["total"] * 4.25 / 16)
    half = compression.wire_bytes(CompressionSpec("fp8", gather="input"), n, 2, w)
    assert half["gather"] == plain["gather"] and half["push"] == fp8["push"]


# ---- validation, planning, launches ------------------------------------------------------------------
def test_twoshot_q_is_not_an_algorithm_name():
    assert "twoshot_q" not in plan.ALLREDUCE_ALGORITHMS
    assert table.spec("all_reduce", "twoshot_q").file == "compressed.ptx"


@pytest.mark.parametrize("call, match", [
    (lambda c, x: c.all_reduce(x[:100], compression="fp8"), "multiple of 128"),
    (lambda c, x: c.all_reduce(x, compression="fp4"), "format must be one of"),
    (lambda c, x: c.all_reduce(x, compression=CompressionSpec("int8", 64), algorithm="oneshot"), "algorithm='auto'"),
    (lambda c, x: c.all_reduce(x, compression="fp8:100"), "block for fp8"),
    (lambda c, x: c.reduce_scatter(x[:768], compression="fp8:256"), "chunk"),
    (lambda c, x: c.all_gather(x, compression="fp8:128:input"), "gather must be 'compressed'"),
    (lambda c, x: c.all_reduce(x.to(torch.int32), compression="fp8"), "unsupported dtype"),
])
def test_bad_compression_raises_before_any_launch(make_comm, call, match):
    comm, rec = make_comm(2)
    x = torch.zeros(4096, dtype=torch.bfloat16)
    with pytest.raises((ValueError, TypeError), match=match):
        call(comm, x)
    assert rec.launches == []


@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("dt", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_compressed_launches_name_their_entry(make_comm, world, dt, spec):
    torch_dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dt]
    comm, rec = make_comm(world)
    n = world * spec.block * 5
    x = torch.zeros(n, dtype=torch_dt)
    want = f"wn_allreduce_q_{spec.format}_{dt}_w{world}_b{spec.block}"
    for op, arg, flag in (("all_reduce", x, 0), ("reduce_scatter", x, 1), ("all_gather", x[:n // world], 2)):
        for gather in (("compressed", "input") if op == "all_reduce" else ("compressed",)):
            q = CompressionSpec(spec.format, spec.block, gather)
            p = comm.plan(op, arg, compression=q)
            assert p.algorithm == "twoshot_q" and p.entry == want and p.block == 512
            assert (p.fmt, p.qblock) == (spec.format, spec.block)
            out = getattr(comm, op)(arg, compression=q)
            entry, args = check_launch(rec)
            assert entry == want
            assert int(args[3]) == flag | (4 if gather == "input" else 0)
            assert int(args[2]) == n
            assert out.numel() == {"all_reduce": n, "reduce_scatter": n // world, "all_gather": n}[op]


def test_world_one_and_empty_inputs_launch_nothing(make_comm):
    comm, rec = make_comm(1)
    x = torch.ones(256, dtype=torch.bfloat16)
    assert comm.plan("all_reduce", x, compression="fp8").algorithm == "copy"
    assert torch.equal(comm.all_reduce(x, compression="fp8"), x) and rec.launches == []
    comm, rec = make_comm(4)
    assert comm.plan("all_reduce", torch.zeros(0, dtype=torch.bfloat16), compression="int8").algorithm == "none"


def test_compressed_grid_rule(make_comm):
    spec = CompressionSpec("fp8")
    assert plan.plan_compressed("all_reduce", 128 * 4, "bf16", 4, spec).grid == 1
    assert plan.plan_compressed("all_reduce", 8192 * 8192, "bf16", 4, spec).grid == 32
    assert plan.plan_compressed("all_reduce", 8192 * 8192, "bf16", 4, spec, ctas=7).grid == 7
    with pytest.raises(ValueError, match="ctas"):
        plan.plan_compressed("all_reduce", 1024, "bf16", 4, spec, ctas=0)
    # the fused kernel: one CTA per row a rank owns (its 16 warps share the row), at most 32
    assert plan.plan_compressed_fused(5, 4096, "bf16", 4, spec).grid == 2
    assert plan.plan_compressed_fused(4 * 20, 4096, "bf16", 4, spec).grid == 20
    assert plan.plan_compressed_fused(1024, 8192, "bf16", 4, spec).grid == 32
    assert plan.plan_compressed_fused(1024, 8192, "bf16", 4, spec, ctas=5).grid == 5


def test_staging_grows_to_the_compressed_size(make_comm):
    comm, rec = make_comm(4)
    grown = []
    comm._channels[0].cap = 16
    comm.reserve = lambda nbytes, channel=None: grown.append(nbytes) or setattr(comm._channels[0], "cap", nbytes)
    x = torch.zeros(4 * 128 * 10, dtype=torch.bfloat16)
    comm.all_reduce(x, compression="fp8")
    assert grown == [compression.staging_bytes(CompressionSpec("fp8"), x.numel(), 2, 4)]
    assert grown[0] < plan.staging_bytes(x.numel() * 2)


def test_every_compressed_entry_is_rendered():
    text = catalog.render("compressed.ptx", "bf16", 4)
    for f, b in table.COMPRESSED_VARIANTS:
        assert f".entry wn_allreduce_q_{f}_bf16_w4_b{b}(" in text
    assert "cvt.rn.satfinite.e4m3x2.f32" in text and "cvt.rni.sat.s8.f32" in text


# ---- the fused op ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 4, 8])
@pytest.mark.parametrize("dt", ["bf16", "f16", "f32"])
@pytest.mark.parametrize("spec", SPECS, ids=_sid)
def test_compressed_fused_launches_name_their_entry(make_comm, world, dt, spec):
    torch_dt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dt]
    comm, rec = make_comm(world)
    hidden = 3 * spec.block
    x = torch.zeros(5, hidden, dtype=torch_dt)
    for mode, sharded in (("replicated", 0), ("sharded", 1)):
        for residual in (torch.zeros(5, hidden, dtype=torch_dt), None):
            for gather in compression.GATHERS:
                q = CompressionSpec(spec.format, spec.block, gather)
                p = comm.plan("fused_allreduce_rmsnorm", x, residual, torch.ones(hidden, dtype=torch_dt),
                              residual_mode=mode, compression=q)
                assert p.algorithm == "twoshot_q" and p.block == 512
                comm.fused_allreduce_rmsnorm(x, residual, torch.ones(hidden, dtype=torch_dt), 1e-5,
                                             residual_mode=mode, compression=q)
                entry, args = check_launch(rec)
                assert entry == f"wn_fused_q_{spec.format}_{dt}_w{world}_b{spec.block}"
                flags = sharded | (2 if residual is not None else 0) | (4 if gather == "input" else 0)
                assert int(args[7]) == flags and int(args[4]) == 5 and int(args[5]) == hidden


def test_compressed_fused_errors_and_world_one(make_comm):
    comm, rec = make_comm(2)
    x = torch.zeros(4, 192, dtype=torch.bfloat16)
    w = torch.ones(192, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="hidden size to be a multiple of 128"):
        comm.fused_allreduce_rmsnorm(x, None, w, compression="fp8")
    with pytest.raises(ValueError, match="algorithm='auto'"):
        comm.fused_allreduce_rmsnorm(x, None, w, algorithm="twoshot", compression="fp8:64")
    assert rec.launches == []
    comm, rec = make_comm(1)
    assert comm.plan("fused_allreduce_rmsnorm", x, None, w, compression="fp8:64").algorithm == "local"


def test_fused_staging_holds_whole_rows():
    spec = CompressionSpec("fp8", 64)
    rows, hidden, world = 5, 640, 4  # ceil(5/4) = 2 rows of 10 blocks a slot
    got = compression.staging_bytes(spec, rows * hidden, 2, world, row=hidden)
    assert got >= 2 * 10 * 64 + 2 * 10 * 4
    assert got > compression.staging_bytes(spec, rows * hidden, 2, world)  # flat blocks would not fit


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
@pytest.mark.parametrize("spec", [CompressionSpec("fp8"), CompressionSpec("int8", 64, "input"),
                                  CompressionSpec("mxfp4")], ids=_sid)
def test_compressed_fused_model(mode, spec):
    """The model's residual is the compressed sum (replicated: re-quantized with a compressed
    gather), its out the normalised residual; both near float64."""
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(9, 512, generator=g).to(torch.bfloat16) for _ in range(4)]
    res = torch.randn(9, 512, generator=g).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(512, generator=g)).to(torch.bfloat16)
    out, s = quantize.compressed_fused(xs, res, w, 1e-6, spec, mode)
    exact = sum(x.double() for x in xs) + res.double()
    s_spec = spec if mode == "replicated" else CompressionSpec(spec.format, spec.block, "input")
    assert float((s.double() - exact).norm() / exact.norm()) <= quantize.all_reduce_bound(xs + [res], s_spec)
    sf = s.float()
    plain = torch.nn.functional.rms_norm(sf, (sf.shape[-1],), w.float(), 1e-6)
    if mode == "sharded" and spec.gather == "compressed":
        plain = quantize.roundtrip(plain, spec).view_as(plain)
    assert float((out.float() - plain).norm() / plain.norm()) < 2 ** -7


def test_fused_rstd_follows_the_kernels_order():
    """compressed_fused.ptx's sum of squares replayed scalar by scalar: lane l of warp w chains fma
    over elements 256t+8l..256t+8l+7 of tiles t = w, w+16, ... (H = 4160: warp 0 has a second,
    partial tile), each warp's butterfly, then the 16 warps' sums in warp order; the model's rstd
    has those bits."""
    np = pytest.importorskip("numpy")
    f32, f64 = np.float32, np.float64
    hidden, eps = 4160, 1e-6
    g = torch.Generator().manual_seed(11)
    s = torch.randn(3, hidden, generator=g) * torch.logspace(-2, 2, hidden)
    got = quantize._group_rstd(s, eps)
    assert got.shape == (3, 1)
    for r in range(3):
        row = s[r].numpy()
        warp_sums = []
        for w in range(16):
            lanes = [f32(0.0)] * 32
            for t in range(w, -(-hidden // 256), 16):
                for lane in range(32):
                    for i in range(256 * t + 8 * lane, min(256 * t + 8 * lane + 8, hidden)):
                        lanes[lane] = f32(f64(row[i]) * f64(row[i]) + f64(lanes[lane]))
            for m in (16, 8, 4, 2, 1):
                lanes = [f32(lanes[lane] + lanes[lane ^ m]) for lane in range(32)]
            assert len({float(v) for v in lanes}) == 1  # every lane holds the warp's sum
            warp_sums.append(lanes[0])
        tot = warp_sums[0]
        for p in warp_sums[1:]:
            tot = f32(tot + p)
        want = f32(1) / np.sqrt(f32(tot / f32(hidden)) + f32(eps))
        assert float(got[r, 0]) == float(want), r


def test_cpu_reference_op_takes_compression():
    import weave_nvshmem.collectives.ops  # noqa: F401  (registers torch.ops.weave_nvshmem)

    x = torch.randn(4, 256)
    got = torch.ops.weave_nvshmem.all_reduce(x, "auto", 0, "fp8")
    assert torch.equal(got, x)  # one rank: nothing to compress
    res = torch.zeros(4, 256)
    out = torch.ops.weave_nvshmem.fused_allreduce_rmsnorm(x, res, torch.ones(256), 1e-6, "replicated", "auto", 0,
                                                          "int8")
    assert out.shape == x.shape and torch.equal(res, x)


# ---- the error report's data set (c): the TP Llama example ------------------------------------------------
def test_error_report_on_the_tp_llama_is_within_the_fused_bound(tmp_path):
    """scripts/compression_error.py on the CPU model, small: every fused call of examples/llama.py's
    TPModel (2 and 4 ranks) within quantize.fused_bound of its inputs, the input gather closer to
    float64 after the layers than the compressed one, the report stamped with its commit."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "compression_error.py"
    mod_spec = importlib.util.spec_from_file_location("compression_error", path)
    script = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(script)
    rc = script.main(["--backend", "model", "--out", str(tmp_path), "--tokens", "4", "--hidden", "512",
                      "--model-worlds", "2", "4", "--model-hidden", "256", "--model-tokens", "8", "--layers", "2"])
    rep = json.loads((tmp_path / "compression-error.json").read_text())
    assert rc == 0 and rep["commit"] and rep["commit"] in (tmp_path / "compression-error.md").read_text()
    assert set(rep["model"]) == {"2", "4"} and rep["llama"]["layers"] == 2
    for rows in rep["model"].values():
        assert rows["none"]["out_vs_float64"]["normwise"] < 2 ** -6
        for f, b in table.COMPRESSED_VARIANTS:
            for gather in compression.GATHERS:
                e = rows[f"{f}/{b}/{gather}"]
                assert e["calls_within_bound"], (f, b, gather, e["worst_call"])
            assert (rows[f"{f}/{b}/input"]["out_vs_float64"]["normwise"]
                    < rows[f"{f}/{b}/compressed"]["out_vs_float64"]["normwise"])
