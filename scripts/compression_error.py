"""Error of the compressed all-reduce per format x block size, against float64 (docs/compression.md).

    python scripts/compression_error.py [--out DIR] [--world 4] [--backend auto|emulated|model]
        [--model-worlds 2 4] [--model-hidden 512] [--model-tokens 128] [--layers 4]

Three data sets, each W ranks' partial sums [tokens, hidden] in bf16:
  (a) gaussian : standard normal partials;
  (b) outliers : LLM-like activations, a few channels (the same on every rank) 30-100x larger;
  (c) model    : examples/llama.py's TPModel (attention with RoPE and GQA, SwiGLU MLP; a small
                 config, --model-hidden, --layers) at each of --model-worlds ranks, every rank a
                 thread with its own weight shard (LockstepComm), replicated residual: each layer's
                 two all-reduce + residual add + RMSNorm calls through the backend's fused op,
                 compressed or not; the final output compared with the float64 model (the same
                 bf16 weights, exact sums) and with the uncompressed run, and every fused call
                 checked against quantize.fused_bound for its own inputs.
Backends: "emulated" runs the kernels on one GPU (EmulatedWorld(W)); "model" runs the float-exact
CPU model of the kernels (collectives/quantize.py; tests/emulated/test_compression.py checks the
kernels give its bits), so the report can be made without a GPU. Also bytes on the wire per token
and rank (``compression.wire_bytes``; the formula is in the JSON). Writes compression-error.{json,md},
stamped with the commit measured (``provenance.git_commit``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from examples.llama import Collective, LlamaConfig, TPModel  # noqa: E402
from weave_nvshmem.bench.provenance import git_commit  # noqa: E402
from weave_nvshmem.collectives import quantize, reference  # noqa: E402
from weave_nvshmem.collectives.compression import CompressionSpec, wire_bytes  # noqa: E402
from weave_nvshmem.ptx.table import COMPRESSED_VARIANTS  # noqa: E402
from weave_nvshmem.testing import reference_all_reduce, reference_fused  # noqa: E402

SPECS = [None] + [CompressionSpec(f, b, g) for f, b in COMPRESSED_VARIANTS for g in ("compressed", "input")]


def name(spec) -> str:
    return "none" if spec is None else f"{spec.format}/{spec.block}/{spec.gather}"


class Backend:
    """``all_reduce(xs, spec) -> [W tensors]``: the kernels on an EmulatedWorld, or the CPU model."""

    def __init__(self, kind: str, world: int, max_bytes: int):
        self.kind, self.world_size = kind, world
        self.ctas = min(32, 128 // world)  # every rank's grid resident at once (one 512-thread block an SM)
        self.device = "cuda" if kind == "emulated" else "cpu"
        self.emu = None
        if kind == "emulated":
            from weave_nvshmem.collectives.channel import workspace_bytes
            from weave_nvshmem.collectives.emulated import EmulatedWorld

            opts = {"channels": 1, "timeout_s": 20.0}
            self.emu = EmulatedWorld(world, arena_bytes=workspace_bytes(world, max_bytes) + (64 << 20), options=opts)
            self.emu.reserve(max_bytes)

    def all_reduce(self, xs, spec):
        if self.emu is None:
            if spec is None:  # the uncompressed two-shot: fp32 sum in rank order, rounded
                return [reference_all_reduce(xs)] * len(xs)
            return [quantize.compressed_all_reduce(xs, spec)] * len(xs)
        outs = [torch.empty_like(x) for x in xs]
        kw = {"compression": spec} if spec is not None else {"algorithm": "twoshot"}
        self.emu.run(lambda r, c: c.all_reduce(xs[r], out=outs[r], ctas=self.ctas, **kw))
        torch.cuda.synchronize()
        self.emu.check()
        return outs

    def fused(self, xs, residual, weight, spec, eps=1e-6):
        """``(out, new residual)`` of the fused AllReduce + residual add + RMSNorm (replicated)."""
        if self.emu is None:
            if spec is None:  # the uncompressed fused op, rounded as its kernels round
                return reference_fused(xs, residual, weight, eps)
            return quantize.compressed_fused(xs, residual, weight, eps, spec)
        res = [residual.clone() for _ in xs]
        outs = [torch.empty_like(x) for x in xs]
        kw = {"compression": spec} if spec is not None else {"algorithm": "twoshot"}
        self.emu.run(lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, eps, out=outs[r], ctas=self.ctas,
                                                            **kw))
        torch.cuda.synchronize()
        self.emu.check()
        return outs[0], res[0]

    def close(self):
        if self.emu is not None:
            self.emu.close()


def errors(got, exact) -> dict:
    """Normwise relative error and the worst row's, against float64 ``exact`` [rows, hidden]."""
    d = got.double() - exact
    row = d.norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-300)
    return {"normwise": float(d.norm() / exact.norm()), "worst_row": float(row.max())}


def partials(kind, world, tokens, hidden, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    xs = [torch.randn(tokens, hidden, generator=g) for _ in range(world)]
    if kind == "outliers":
        cols = torch.randperm(hidden, generator=g)[:8]
        gains = torch.linspace(30, 100, 8)
        for x in xs:
            x[:, cols] *= gains
    return [x.to(torch.bfloat16).to(device) for x in xs]


def rmsnorm(x, w, eps=1e-6):
    """RMSNorm of ``x`` with no all-reduce: the fused op's reference at one rank (float64 for a
    float64 ``x``, else rounded as the kernels round)."""
    if x.dtype == torch.float64:
        return reference.fused_allreduce_rmsnorm([x], None, w, eps)[0]
    return reference_fused([x], None, w, eps)[0]


class LockstepComm:
    """The fused op shared by W rank threads of one process, each running its own ``TPModel``.

    ``comm(r)`` is rank r's communicator for ``examples.llama.Collective``: its
    ``fused_allreduce_rmsnorm`` waits for all W ranks' calls, then one call of ``fused(xs,
    residual, weight, eps) -> (out, residual)`` gives every rank the same result (the residual is
    replicated: the ranks' copies must be equal). ``calls``: per call ``(xs, residual, weight,
    out, new residual)``, kept when ``record``.
    """

    def __init__(self, world: int, fused, record: bool = False):
        self.world, self.fused, self.record = world, fused, record
        self.slots, self.result, self.calls, self.error = [None] * world, None, [], None
        self.barrier = threading.Barrier(world, action=self._reduce)

    def _reduce(self):
        xs = [s[0] for s in self.slots]
        res, weight, eps = self.slots[0][1:]
        if any(not torch.equal(s[1], res) for s in self.slots):
            raise RuntimeError("LockstepComm: the ranks' residuals differ")
        self.result = self.fused(xs, res, weight, eps)
        if self.record:
            self.calls.append((xs, res, weight) + tuple(self.result))

    def comm(self, rank: int):
        lock = self

        class Rank:
            def fused_allreduce_rmsnorm(self, x, residual, weight, eps, ctas=None, residual_mode="replicated"):
                lock.slots[rank] = (x.contiguous(), residual, weight, eps)
                lock.barrier.wait()
                return lock.result
        return Rank()

    def run(self, fn) -> list:
        """``[fn(r, comm(r)) for r]``, every rank in its own thread; the first error is raised."""
        out = [None] * self.world

        def body(r):
            try:
                out[r] = fn(r, self.comm(r))
            except BaseException as e:  # noqa: BLE001  (re-raised below, in the caller's thread)
                self.error = self.error or e
                self.barrier.abort()
        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error
        return out


def exact_fused(xs, residual, weight, eps):
    """The fused op in float64 (``collectives.reference``): exact sum, residual add, RMSNorm."""
    out, s = reference.fused_allreduce_rmsnorm([x.cpu().numpy() for x in xs], residual.cpu().numpy(),
                                               weight.cpu().numpy(), eps)
    return torch.from_numpy(out).to(xs[0].device), torch.from_numpy(s).to(xs[0].device)


def as_float64(model: TPModel) -> TPModel:
    """``model`` with its weights (bf16) exactly in float64."""
    ref = copy.copy(model)
    ref.dtype = torch.float64
    ref.layers = [{k: v.double() for k, v in layer.items()} for layer in model.layers]
    ref.final_norm = model.final_norm.double()
    return ref


def llama_forward(cfg: LlamaConfig, world: int, x, fused, record: bool = False):
    """examples.llama's TPModel at ``world`` ranks (seed 0, replicated residual, mode "fused"): the
    final-normed hidden [T, hidden] of embedding output ``x`` and the LockstepComm (its calls).

    ``fused`` is every layer's all-reduce + residual add + RMSNorm (``LockstepComm``); a float64
    ``x`` runs the float64 copy of the bf16 weights (``as_float64``; RoPE is fp32 in the model).
    The first norm is the one-rank reference (the same in every run)."""
    lock = LockstepComm(world, fused, record)

    def first_norm(h, residual, w, eps):
        return rmsnorm(h, w, eps), h

    def rank(r, comm):
        model = TPModel(cfg, world, r, x.device)
        if x.dtype == torch.float64:
            model = as_float64(model)
        return model.forward(x, Collective("fused", cfg.eps, comm=comm, norm=first_norm))
    outs = lock.run(rank)
    if any(not torch.equal(o, outs[0]) for o in outs):
        raise RuntimeError("llama_forward: the ranks' outputs differ")
    return outs[0], lock


def model_errors(backend, cfg: LlamaConfig, tokens: int, seed: int = 3) -> dict:
    """Set (c) at ``backend.world_size`` ranks: per spec name, the TP Llama's final output against the
    float64 model and the uncompressed run (``errors``), and ``calls_within_bound``: every fused
    call's new residual and output within ``quantize.fused_bound`` of the float64 result of that
    call's own inputs (``worst_call``: the largest error / bound ratio)."""
    w = backend.world_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(tokens, cfg.hidden, generator=g).to(torch.bfloat16).to(backend.device)
    ref, _ = llama_forward(cfg, w, x.double(), exact_fused)
    base, _ = llama_forward(cfg, w, x, lambda xs, r, wt, eps: backend.fused(xs, r, wt, None, eps))
    rows = {}
    for spec in SPECS:
        def fused(xs, r, wt, eps, spec=spec):
            return backend.fused(xs, r, wt, spec, eps)
        out, lock = llama_forward(cfg, w, x, fused, record=spec is not None)
        e = {"out_vs_float64": errors(out, ref), "out_vs_uncompressed": errors(out, base.double())}
        if spec is not None:
            ratio = 0.0
            for xs, res, wt, o, s in lock.calls:
                bs, bo = quantize.fused_bound(xs, res, wt, spec)
                want_o, want_s = exact_fused([p.double() for p in xs], res.double(), wt.double(), cfg.eps)
                ratio = max(ratio, errors(s, want_s)["normwise"] / bs, errors(o, want_o)["normwise"] / bo)
            e["worst_call"], e["calls_within_bound"] = ratio, ratio <= 1.0
        rows[name(spec)] = e
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench"))
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--model-worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--model-tokens", type=int, default=128)
    ap.add_argument("--model-hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--backend", choices=("auto", "emulated", "model"), default="auto")
    args = ap.parse_args(argv)
    kind = args.backend if args.backend != "auto" else ("emulated" if torch.cuda.is_available() else "model")
    w, t, hdim = args.world, args.tokens, args.hidden
    cfg = model_config(args.model_hidden, args.layers)
    t0 = time.time()
    report = {"backend": kind, "commit": git_commit(), "world": w, "tokens": t, "hidden": hdim, "dtype": "bf16",
              "llama": {"tokens": args.model_tokens, **dataclasses.asdict(cfg)}, "data": {}, "model": {}, "wire": {}}
    backend = Backend(kind, w, t * hdim * 2)
    try:
        for data in ("gaussian", "outliers"):
            xs = partials(data, w, t, hdim, backend.device, seed=1 if data == "gaussian" else 2)
            exact = sum(x.double() for x in xs)
            rows = {}
            for spec in SPECS:
                outs = backend.all_reduce(xs, spec)
                e = errors(outs[0], exact)
                if spec is not None:
                    e["bound"] = quantize.all_reduce_bound([x.cpu() for x in xs], spec)
                    e["within_bound"] = e["normwise"] <= e["bound"]
                e["rank_identical"] = all(torch.equal(o, outs[0]) for o in outs)
                rows[name(spec)] = e
            report["data"][data] = rows
            print(f"{data}: {len(rows)} formats done ({time.time() - t0:.0f} s)", flush=True)
    finally:
        backend.close()
    for mw in args.model_worlds:
        backend = Backend(kind, mw, args.model_tokens * cfg.hidden * 2)
        try:
            report["model"][str(mw)] = model_errors(backend, cfg, args.model_tokens)
        finally:
            backend.close()
        print(f"TP Llama at {mw} ranks done ({time.time() - t0:.0f} s)", flush=True)
    for spec in SPECS:
        report["wire"][name(spec)] = wire_bytes(spec, hdim, 2, w)
    report["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression-error.json").write_text(json.dumps(report, indent=1))
    (args.out / "compression-error.md").write_text(markdown(report))
    print(markdown(report))
    bad = [f"{d}/{k}" for d, rows in report["data"].items() for k, e in rows.items()
           if not e["rank_identical"] or not e.get("within_bound", True)]
    bad += [f"llama W={mw}/{k}" for mw, rows in report["model"].items() for k, e in rows.items()
            if not e.get("calls_within_bound", True)]
    if bad:
        print("FAILED (above the bound or ranks differ):", ", ".join(bad))
        return 1
    return 0


def model_config(hidden: int, layers: int) -> LlamaConfig:
    """The small Llama of set (c): ``hidden`` (a multiple of 256), MLP 3x, heads of 64, 2 query
    heads per key/value head."""
    heads = hidden // 64
    return LlamaConfig(hidden=hidden, intermediate=3 * hidden, heads=heads, kv_heads=heads // 2, layers=layers,
                       head_dim=64, eps=1e-6)


def markdown(rep) -> str:
    lines = [f"# Compressed all-reduce error ({rep['backend']}, code of commit {rep['commit']})", "",
             f"(a) gaussian and (b) outliers: W={rep['world']}, {rep['tokens']} x {rep['hidden']} bf16 partials. "
             "Normwise relative error vs the float64 sum, the worst row's, the documented bound "
             "(quantize.all_reduce_bound), and bytes on the wire per token and rank.", "",
             "| format/block/gather | gaussian | worst row | bound | outliers | worst row | bound | bytes/token |",
             "|---|---|---|---|---|---|---|---|"]
    for k in rep["wire"]:
        g, o = rep["data"]["gaussian"][k], rep["data"]["outliers"][k]
        lines.append(f"| {k} | {g['normwise']:.3g} | {g['worst_row']:.3g} | {g.get('bound', 0):.3g} | "
                     f"{o['normwise']:.3g} | {o['worst_row']:.3g} | {o.get('bound', 0):.3g} | "
                     f"{rep['wire'][k]['total']:.0f} |")
    lines += ["", "Wire formula: " + "; ".join(sorted({v["formula"] for v in rep["wire"].values()}))]
    m = rep["llama"]
    worlds = list(rep["model"])
    lines += ["", f"(c) examples/llama.py's TPModel, {m['layers']} layers (hidden {m['hidden']}, intermediate "
              f"{m['intermediate']}, {m['heads']} heads / {m['kv_heads']} kv heads of {m['head_dim']}), "
              f"{m['tokens']} tokens bf16, replicated residual: every layer's two all-reduce + residual add + RMSNorm "
              "calls through the compressed fused op. The final output's normwise error and worst row's against the "
              "float64 model (the same bf16 weights) and against the uncompressed run; 'worst call': the largest "
              "error / bound ratio (quantize.fused_bound) over the model's fused calls, each against the float64 "
              "result of its own inputs (<= 1: within the bound).", "",
              "| format/block/gather | " + " | ".join(
                  f"W={mw} vs f64 | worst row | vs uncompressed | worst call" for mw in worlds) + " |",
              "|---|" + "---|---|---|---|" * len(worlds)]
    for k in rep["wire"]:
        cells = []
        for mw in worlds:
            e = rep["model"][mw][k]
            f, u = e["out_vs_float64"], e["out_vs_uncompressed"]
            cells += [f"{f['normwise']:.3g}", f"{f['worst_row']:.3g}", f"{u['normwise']:.3g}",
                      f"{e['worst_call']:.2f}" if "worst_call" in e else "-"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "With gather 'compressed' the residual stream itself is re-quantized at every fused call, so its "
              "error grows with depth; gather 'input' quantizes only the partial sums.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
