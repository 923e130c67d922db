"""A Llama-style tensor-parallel decoder with TokenWeave overlap, in four communication modes.

Modes (same weights, same inputs):
  nccl    : torch.distributed all-reduce, then torch add + RMSNorm
  fused   : weave_nvshmem.fused_allreduce_rmsnorm, no split
  weave   : the batch split in two (overlap planner), each half's fused collective on a side stream
            beside the other half's GEMMs
  no_comm : the all-reduces removed (add + RMSNorm only): the bound weave aims at

The norms are moved into the collectives: after attention, all-reduce + residual add + post-attention
RMSNorm; after the MLP, all-reduce + residual add + the *next* layer's input RMSNorm (the final norm
after the last layer). Weights are random, column-parallel (qkv, gate_up) and row-parallel (o_proj,
down) per rank.

Residual (fused and weave): "replicated" keeps every row on every rank; "sharded", as in TokenWeave,
keeps only this rank's rows of each fused call's tensor (``owned_rows``), so weave's two halves, being
separate calls, are each sharded within themselves. The normed output is replicated either way.

Run, one process per GPU:
  torchrun --nproc-per-node=N examples/tp_llama.py check [--out DIR]    # every mode vs nccl, graphs
  torchrun --nproc-per-node=N examples/tp_llama.py bench --out bench/ [--quick] [--budget-s N]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from weave_nvshmem.bench import _err, _git_commit, _slug, _versions  # noqa: E402
from weave_nvshmem.overlap.schedule import TwoStreams  # noqa: E402

MODES = ("nccl", "fused", "weave", "no_comm")
RESIDUAL_MODES = ("replicated", "sharded")
CHECK_TOKENS = (1, 3, 7, 1000, 2049)
GRAPH_TOKENS = (7, 1000)
#: bf16 tolerances vs nccl after the whole forward: normwise relative error, and the worst row's
#: (catches a few wrong rows, which a normwise figure averages away)
CHECK_TOL, CHECK_ROW_TOL = 3e-2, 6e-2


@dataclass(frozen=True)
class LlamaConfig:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int = 2
    head_dim: int = 128
    eps: float = 1e-5
    rope_theta: float = 500000.0


LLAMA3_70B = LlamaConfig(hidden=8192, intermediate=28672, heads=64, kv_heads=8)
QWEN25_72B = LlamaConfig(hidden=8192, intermediate=29568, heads=64, kv_heads=8, eps=1e-6, rope_theta=1e6)
SMALL = LlamaConfig(hidden=4096, intermediate=8192, heads=32, kv_heads=8)
CONFIGS = {"llama3-70b": LLAMA3_70B, "qwen2.5-72b": QWEN25_72B, "small": SMALL}


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


class Collective:
    """The layer's communication: ``fused(x, residual, w) -> (normed, residual)`` per mode.

    ``ctas``: CTAs of the fused op (None: its own choice); ``residual_mode``: see the module docstring
    (sharded needs the fused op, so only modes fused and weave take it); ``gemm_out``: a symmetric
    [max tokens, hidden] tensor (``weave_nvshmem.empty``, fused and weave modes) for the row-parallel
    GEMMs' outputs."""

    def __init__(self, mode: str, eps: float, comm=None, group=None, ctas=None, residual_mode: str = "replicated",
                 gemm_out=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES} (got {mode!r})")
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(f"residual_mode must be one of {RESIDUAL_MODES} (got {residual_mode!r})")
        if residual_mode == "sharded" and mode not in ("fused", "weave"):
            raise ValueError(f"residual_mode 'sharded' needs the fused collective (mode fused or weave, got {mode!r})")
        self.mode, self.eps, self.comm, self.group, self.ctas = mode, eps, comm, group, ctas
        self.residual_mode = residual_mode
        self.gemm_out = gemm_out if mode in ("fused", "weave") else None

    def gemm_target(self, start: int, n: int):
        """Where the row-parallel GEMM (o_proj, down) of tokens [start, start+n) writes: rows of the
        symmetric ``gemm_out`` (the fused op then reads them on the peers in place: zero copy), or
        None (a new tensor)."""
        return None if self.gemm_out is None else self.gemm_out[start:start + n]

    def fused(self, x, residual, w):
        if self.mode in ("fused", "weave"):
            return self.comm.fused_allreduce_rmsnorm(x, residual, w, self.eps, ctas=self.ctas,
                                                     residual_mode=self.residual_mode)
        if self.mode == "nccl" and torch.distributed.is_initialized():
            torch.distributed.all_reduce(x, group=self.group)
        s = x + residual
        return rms_norm(s, w, self.eps), s


def _row_parallel(x, w, out=None):
    """``x @ w.T`` (a row-parallel GEMM: its output is this rank's partial sum), into ``out`` if given."""
    return x @ w.t() if out is None else torch.matmul(x, w.t(), out=out)


def _causal(lq: int, lk: int, device) -> dict:
    """SDPA arguments for queries at the last ``lq`` of ``lk`` positions (lower-right causal), in a
    form torch sends to its flash/efficient kernels; an explicit mask only on torch without it."""
    if lq == lk:
        return {"is_causal": True}
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        mask = torch.arange(lk, device=device)[None, :] <= torch.arange(lk - lq, lk, device=device)[:, None]
        return {"attn_mask": mask}
    return {"attn_mask": causal_lower_right(lq, lk)}


class TPModel:
    """``world``/``rank`` shard the weights; one rank's shard is built from ``seed`` + rank, the norm
    weights from ``seed`` alone."""

    def __init__(self, cfg: LlamaConfig, world: int, rank: int, device, dtype=torch.bfloat16, seed: int = 0):
        if cfg.heads % world or cfg.intermediate % world:
            raise ValueError(f"heads and intermediate must divide by world size {world}")
        self.cfg, self.world, self.rank, self.dtype, self.device = cfg, world, rank, dtype, torch.device(device)
        self.nh = cfg.heads // world
        self.nkv = max(1, cfg.kv_heads // world)
        # generated on the device (70B-size layers); the norm weights are replicated, as in TP, so
        # every rank normalises a row alike (a sharded residual has each row normalised by its owner)
        g = torch.Generator(device=self.device).manual_seed(seed * 1009 + rank)
        g_norm = torch.Generator(device=self.device).manual_seed(seed * 1009 + 1_000_003)

        def w(*shape, scale, gen=g):
            return (torch.randn(*shape, generator=gen, device=self.device) * scale).to(dtype)

        def norm(h):
            return 1 + w(h, scale=0.1, gen=g_norm)

        h, d, i = cfg.hidden, cfg.head_dim, cfg.intermediate // world
        self.layers = [dict(qkv=w((self.nh + 2 * self.nkv) * d, h, scale=h ** -0.5),
                            o=w(h, self.nh * d, scale=(cfg.heads * d) ** -0.5),
                            gate_up=w(2 * i, h, scale=h ** -0.5),
                            down=w(h, i, scale=cfg.intermediate ** -0.5),
                            in_norm=norm(h), post_norm=norm(h))
                       for _ in range(cfg.layers)]
        self.final_norm = norm(h)

    # ---- pieces ---------------------------------------------------------------------------
    def _rope(self, x, pos):
        d = x.shape[-1]
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
        ang = pos.float()[:, None] * inv[None, :]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        x1, x2 = x.float().chunk(2, -1)
        rot = torch.cat([-x2, x1], -1)
        return (x.float() * cos[:, None, :] + rot * sin[:, None, :]).to(x.dtype)

    def _qkv(self, layer, h, start):
        d = self.cfg.head_dim
        qkv = h @ layer["qkv"].t()
        q, k, v = qkv.split([self.nh * d, self.nkv * d, self.nkv * d], -1)
        pos = torch.arange(start, start + h.shape[0], device=h.device)
        q = self._rope(q.view(-1, self.nh, d), pos)
        k = self._rope(k.view(-1, self.nkv, d), pos)
        return q, k, v.view(-1, self.nkv, d)

    def _attend(self, layer, q, k, v, out=None):
        """Causal attention of queries at the last len(q) of the len(k) key positions."""
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, heads, len, d]: fused kernels
        o = F.scaled_dot_product_attention(q4, k4, v4, scale=1 / math.sqrt(self.cfg.head_dim),
                                           **_causal(q.shape[0], k.shape[0], q.device))
        return _row_parallel(o[0].transpose(0, 1).reshape(q.shape[0], -1), layer["o"], out)

    def _mlp(self, layer, h, out=None):
        gate, up = (h @ layer["gate_up"].t()).chunk(2, -1)
        return _row_parallel(F.silu(gate) * up, layer["down"], out)

    def _next_norm(self, li):
        return self.layers[li + 1]["in_norm"] if li + 1 < len(self.layers) else self.final_norm

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x, coll: Collective, split: int = 0):
        """``x``: [T, hidden] embedding output (replicated). Returns the final-normed hidden [T, hidden]
        (replicated in every mode and residual mode).

        ``split`` (weave mode only): first subset = tokens [0, split); 0 or T means no split.
        """
        T = x.shape[0]
        residual = x.clone()
        h = rms_norm(x, self.layers[0]["in_norm"], self.cfg.eps)
        if coll.mode != "weave" or not 0 < split < T:
            out = coll.gemm_target(0, T)
            for li, layer in enumerate(self.layers):
                q, k, v = self._qkv(layer, h, 0)
                h, residual = coll.fused(self._attend(layer, q, k, v, out), residual, layer["post_norm"])
                h, residual = coll.fused(self._mlp(layer, h, out), residual, self._next_norm(li))
            return h
        return self._woven(h, residual, coll, split)

    def _woven(self, h, residual, coll, a):
        """Two subsets A=[0,a), B=[a,T): each collective of one runs on the side stream beside the
        other's GEMMs. B's queries attend to A's keys too, so attention(B) follows qkv(A).
        A sharded residual stays sharded per subset: rA and rB are the tensors of separate calls."""
        st = TwoStreams(h.device)

        def on_side(x, r, w):
            """The fused collective of ``x`` on the side stream; (normed, residual, ready event)."""
            st.side_waits_main(x)
            with st.side():
                hx, r = coll.fused(x, r, w)
            return hx, r, st.record_side(hx)

        hA, hB = h[:a], h[a:]
        rA, rB = residual[:a], residual[a:]
        outA, outB = coll.gemm_target(0, a), coll.gemm_target(a, h.shape[0] - a)  # disjoint rows
        readyA = readyB = None  # events: this layer's inputs of A and B are ready
        for li, layer in enumerate(self.layers):
            st.main_waits(readyA)
            qA, kA, vA = self._qkv(layer, hA, 0)
            hA, rA, attnA = on_side(self._attend(layer, qA, kA, vA, outA), rA, layer["post_norm"])
            st.main_waits(readyB)
            qB, kB, vB = self._qkv(layer, hB, a)
            oB = self._attend(layer, qB, torch.cat([kA, kB]), torch.cat([vA, vB]), outB)
            hB, rB, attnB = on_side(oB, rB, layer["post_norm"])
            st.main_waits(attnA)
            hA, rA, readyA = on_side(self._mlp(layer, hA, outA), rA, self._next_norm(li))
            st.main_waits(attnB)
            hB, rB, readyB = on_side(self._mlp(layer, hB, outB), rB, self._next_norm(li))
        st.main_waits(readyA)
        st.main_waits(readyB)
        return torch.cat([hA, hB])


# ---- check: every mode against nccl ------------------------------------------------------------
def odd_split(tokens: int) -> int:
    """An odd split (so never a multiple of 8 or 16) near a third of the batch; 0 below 2 tokens."""
    return (tokens // 3) | 1 if tokens >= 2 else 0


def check_cases(tokens: int, planned: int = 0) -> list[tuple[str, str, int]]:
    """(mode, residual_mode, split) compared with nccl at ``tokens``: fused unsplit, weave at the odd
    split and at the planner's split ``planned`` (unsplit when neither fits), each residual mode."""
    splits = sorted({s for s in (odd_split(tokens), planned) if 0 < s < tokens}) or [0]
    return [(mode, rm, s) for mode, ss in (("fused", [0]), ("weave", splits)) for s in ss for rm in RESIDUAL_MODES]


def errors(out, ref) -> tuple[float, float]:
    """(normwise relative error, worst row's relative error) of ``out`` vs ``ref``; inf if not finite."""
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        return math.inf, math.inf
    diff, norm = (o - r).norm(dim=-1), r.norm(dim=-1)
    return (diff.norm() / norm.norm()).item(), (diff / norm.clamp_min(1e-30)).max().item()


def _agree(err):
    """Every rank's error text -> the first one, prefixed by its rank (None when all succeeded)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return err
    got = [None] * dist.get_world_size()
    dist.all_gather_object(got, err)
    return next((f"rank {r}: {e}" for r, e in enumerate(got) if e), None)


def _same_on_ranks(t) -> bool:
    """``t`` holds the same bits on every rank (collective)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return True
    ref = t.clone()
    dist.broadcast(ref, 0)
    flag = torch.tensor([int(torch.equal(t, ref))], device=t.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _input(model, tokens: int):
    """The embedding output at ``tokens``: the same on every rank (seeded on the host)."""
    x = torch.randn(tokens, model.cfg.hidden, generator=torch.Generator().manual_seed(tokens))
    return x.to(model.device, model.dtype)


def check_modes(model, comm, tokens_list=CHECK_TOKENS, *, ctas=8, tol=CHECK_TOL, row_tol=CHECK_ROW_TOL,
                log=None, gemm_out=None) -> list[dict]:
    """Every ``check_cases`` case vs the nccl forward at each of ``tokens_list``. Collective; a failing
    case becomes an error string (agreed by all ranks) in its row. ``ctas``: weave's collectives;
    ``gemm_out``: Collective's symmetric GEMM output buffer (zero copy) for fused and weave."""
    from weave_nvshmem.overlap import LayerShape, candidates

    cfg = model.cfg
    shape = LayerShape(cfg.hidden, cfg.intermediate, cfg.heads, cfg.kv_heads, model.world, cfg.head_dim)
    sms = torch.cuda.get_device_properties(model.device).multi_processor_count
    comm.reserve(max(tokens_list) * cfg.hidden * model.dtype.itemsize)
    rows = []
    for tokens in tokens_list:
        x = _input(model, tokens)
        ref = model.forward(x, Collective("nccl", cfg.eps))
        planned = next((c.split for c in candidates(shape, tokens, sms=sms, comm_ctas=ctas) if c.mode == "weave"), 0)
        for mode, rm, split in check_cases(tokens, planned):
            row = {"tokens": tokens, "mode": mode, "residual_mode": rm, "split": split, "error": None,
                   "zero_copy": gemm_out is not None and mode in ("fused", "weave")}
            out, err = None, None
            try:
                coll = Collective(mode, cfg.eps, comm=comm, ctas=ctas if mode == "weave" else None, residual_mode=rm,
                                  gemm_out=gemm_out)
                out = model.forward(x, coll, split)
                comm.synchronize()
            except Exception as exc:  # noqa: BLE001 - recorded in the row, agreed by all ranks
                err = _err(exc)
            row["error"] = _agree(err)
            if row["error"] is None:
                row["rel_err"], row["max_row_rel_err"] = errors(out, ref)
                row["replicated"] = _same_on_ranks(out)
                row["ok"] = row["rel_err"] <= tol and row["max_row_rel_err"] <= row_tol and row["replicated"]
            else:
                row["ok"] = False
            rows.append(row)
            if log:
                log(_describe(row))
    return rows


def check_graph(model, comm, tokens: int, split: int, residual_mode: str, *, ctas=8, tol=CHECK_TOL,
                row_tol=CHECK_ROW_TOL, gemm_out=None) -> dict:
    """Capture the woven forward in one CUDA graph and replay it twice: the replays must be bitwise
    equal and match the eager forward (``eager_bitwise`` says whether exactly). Collective."""
    cfg = model.cfg
    row = {"tokens": tokens, "mode": "weave-graph", "residual_mode": residual_mode, "split": split, "error": None}
    x = _input(model, tokens)
    coll = Collective("weave", cfg.eps, comm=comm, ctas=ctas, residual_mode=residual_mode, gemm_out=gemm_out)
    comm.reserve(tokens * cfg.hidden * model.dtype.itemsize)  # no workspace growth inside the capture
    graph = torch.cuda.CUDAGraph()
    got = {}

    def warm_up():
        got["eager"] = model.forward(x, coll, split)
        side = torch.cuda.Stream()  # warm up off the capture's stream too, as torch recommends
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model.forward(x, coll, split)
        torch.cuda.current_stream().wait_stream(side)
        comm.synchronize()

    def capture():
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            got["static"] = model.forward(x, coll, split)
        torch.cuda.synchronize()

    def replay():
        got["replays"] = []
        for _ in range(2):
            graph.replay()
            comm.synchronize()
            got["replays"].append(got["static"].clone())

    try:
        for stage, fn in (("warm-up", warm_up), ("capture", capture), ("replay", replay)):
            err = None
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - recorded in the row, agreed by all ranks
                err = f"{stage}: {_err(exc)}"
            row["error"] = _agree(err)
            if row["error"]:
                row["ok"] = False
                return row
    finally:
        graph.reset()
    first, second = got["replays"]
    row["replays_equal"] = torch.equal(first, second)
    row["eager_bitwise"] = torch.equal(first, got["eager"])
    row["rel_err"], row["max_row_rel_err"] = errors(first, got["eager"])
    row["ok"] = row["replays_equal"] and row["rel_err"] <= tol and row["max_row_rel_err"] <= row_tol
    return row


def _describe(row: dict) -> str:
    what = f"tokens={row['tokens']:<5} {row['mode']:11s} {row['residual_mode']:10s} split={row['split']:<4}" \
           f"{' zero-copy' if row.get('zero_copy') else ''}"
    if row.get("error"):
        return f"{what} FAIL {row['error']}"
    extra = (f" replays equal {row['replays_equal']}, eager bitwise {row['eager_bitwise']}"
             if "replays_equal" in row else f" replicated {row['replicated']}")
    return (f"{what} {'ok  ' if row['ok'] else 'FAIL'} rel err {row['rel_err']:.2e}, "
            f"worst row {row['max_row_rel_err']:.2e},{extra}")


def _single_process_env() -> None:
    """Defaults that let a plain ``python`` run act as one rank (torchrun sets them all)."""
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", "29518")):
        os.environ.setdefault(k, v)


def check(args) -> int:
    """``check``: every mode vs nccl and the woven forward's CUDA graph; exit status 1 on any failure."""
    import torch.distributed as dist

    import weave_nvshmem as wn

    _single_process_env()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    rank, world = dist.get_rank(), dist.get_world_size()
    wn.init()
    comm = wn.Communicator(wn.CommOptions(timeout_s=args.timeout_s, channels=1))  # one collective at a time
    log = print if rank == 0 else None
    gemm_out = None
    try:
        cfg = dataclasses.replace(CONFIGS[args.config], layers=args.layers)
        model = TPModel(cfg, world, rank, torch.device("cuda", local))
        opts = dict(ctas=args.ctas, tol=args.tol, row_tol=args.row_tol)
        # the GEMMs write straight into symmetric memory (zero copy), as an engine would; one size
        # also with ordinary GEMM outputs (the fused op then pushes them)
        gemm_out = wn.empty((max(CHECK_TOKENS + GRAPH_TOKENS), cfg.hidden), model.dtype)
        rows = check_modes(model, comm, CHECK_TOKENS, log=log, gemm_out=gemm_out, **opts)
        rows += check_modes(model, comm, (1000,), log=log, **opts)
        graphs = []
        for tokens in GRAPH_TOKENS:
            for rm in RESIDUAL_MODES:
                graphs.append(check_graph(model, comm, tokens, odd_split(tokens), rm, gemm_out=gemm_out, **opts))
                if log:
                    log(_describe(graphs[-1]))
        flag = torch.tensor([int(all(r["ok"] for r in rows + graphs))], device="cuda")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item())
        if rank == 0:
            name = torch.cuda.get_device_name(local)
            doc = {"schema": "weave_nvshmem.tp_llama_check/1", "device": name, "world_size": world,
                   "git_commit": _git_commit(), "versions": _versions(), "config": dataclasses.asdict(cfg),
                   "weave_ctas": args.ctas, "tol": args.tol, "row_tol": args.row_tol, "ok": ok,
                   "cases": rows, "graphs": graphs}
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"tp_llama-check-{_slug(name)}-w{world}.json"
            path.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"{'PASS' if ok else 'FAIL'}: {sum(not r['ok'] for r in rows + graphs)} of {len(rows + graphs)} "
                  f"checks failed; wrote {path}", flush=True)
    finally:
        if gemm_out is not None:
            wn.free(gemm_out)
        comm.close()
        wn.finalize()
        dist.destroy_process_group()
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    import bench_layer

    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node=N examples/tp_llama.py",
                                description="TP Llama decoder with TokenWeave overlap: correctness check of every "
                                            "mode against nccl, or the end-to-end layer benchmark.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="every mode vs nccl (tokens 1, 3, 7, 1000, 2049; odd and planned splits; "
                                     "replicated and sharded residual) and CUDA-graph replays of the woven forward",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--out", default="bench", help="directory of the JSON report (rank 0)")
    c.add_argument("--config", choices=sorted(CONFIGS), default="llama3-70b")
    c.add_argument("--layers", type=int, default=2)
    c.add_argument("--ctas", type=int, default=8, help="CTAs of weave's fused collectives")
    c.add_argument("--tol", type=float, default=CHECK_TOL, help="normwise relative error bound vs nccl")
    c.add_argument("--row-tol", type=float, default=CHECK_ROW_TOL, help="worst row's relative error bound")
    c.add_argument("--timeout-s", type=float, default=30.0, help="weave_nvshmem cross-rank wait timeout")
    b = sub.add_parser("bench", help="graph-timed forward of every mode at Llama-3-70B shapes (see bench_layer.py)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench_layer.add_arguments(b)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return check(args)
    import bench_layer

    return bench_layer.run(args)


if __name__ == "__main__":
    sys.exit(main())
