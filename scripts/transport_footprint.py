"""SM footprint of the transports on one GPU, ranks emulated: the pull transport (pull.ptx: TMA bulk
loads from the peers, every byte written once locally) and the copy-engine transport (ce.ptx: device
copies move the bytes, the SMs only reduce the own segment) against the two-shot kernels, by CTA count.

What it shows: time per call, CTAs x time (SM-microseconds a call occupies), and the bytes each SM
reads and writes per call, computed from each algorithm's traffic (``traffic``), next to the
per-SM rates that motivate pull: an SM reads up to ~199 GB/s with TMA bulk loads (~128 GB/s with
16-byte vector loads) but writes only ~48 GB/s. One GPU's HBM is not NVLink: these are
kernel / SM-footprint figures, never link figures.

    python scripts/transport_footprint.py [--out DIR] [--quick]
    python scripts/transport_footprint.py --replot DIR/transport-footprint-<device>.json   # no GPU

EmulatedWorld(4); all_reduce and the fused op (replicated residual), each pull (pull.ptx,
fused_pull.ptx), copyengine (staged only: it copies every input) and twoshot, at 1024 and 8192
tokens x hidden 8192 bf16, zero copy and staged, 2/4/8/16/32 CTAs per rank. On one GPU the
copyengine's device copies run on SMs beside its CTAs: its time per call includes them, so its
"CTAs x us" understates the SMs it took here (on NVLink the copy engines would do that work). Timed by the public harness: a CUDA graph of STEPS calls on SETS input sets per
rank, inputs regenerated and L2 evicted before every replay, median of REPLAYS. < 120 s on one H200.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # before CUDA starts: see emulated.py
os.environ.setdefault("CUDA_MODULE_LOADING", "EAGER")  # no lazy load inside world.run: see emulated.py

WORLD, HIDDEN = 4, 8192
TOKENS = (1024, 8192)
CTAS = (2, 4, 8, 16, 32)
#: (op, algorithm) rows ("fused": fused_allreduce_rmsnorm, replicated residual)
CASES = (("all_reduce", "pull"), ("all_reduce", "copyengine"), ("all_reduce", "twoshot"), ("fused", "pull"),
         ("fused", "copyengine"), ("fused", "twoshot"))
STEPS, SETS, REPLAYS = 4, 2, 10
#: per-SM rates on one H200 (scripts/sm_bandwidth_probe.py and the project's earlier measurements)
RATES_GB_S = {"read_tma": 199.0, "read_vector": 128.0, "write": 48.0}


def traffic(op: str, algorithm: str, zero_copy: bool, n: int, w: int, sharded: bool = False) -> dict:
    """Bytes one rank's SMs read and write per call for an input of ``n`` bytes at ``w`` ranks.

    all_reduce, both algorithms (segments of n/w):
      reduce: the owner reads its segment from all w ranks: n; writes result + out: 2n/w.
      gather: reads the w-1 other segments: (w-1)n/w; writes them to out: (w-1)n/w.
      staged (not zero copy): + a copy of the w-1 other segments of x -- pull: into our own
      staging (local read + local write), twoshot: pushed into the owners' staging (local read,
      REMOTE write): (w-1)n/w read, (w-1)n/w written.
    fused (residual given; pull and twoshot write the same bytes): all_reduce's reduce reads plus
    the own residual rows n/w; writes residual + result + out of the own rows: 3n/w; twoshot
    re-reads s n/w for the norm, pull reads it back from shared memory (a row fits one stage:
    hidden x world x 2 bytes <= 64 KB, as at this script's hidden 8192, 4 ranks). Gather,
    replicated residual: pulls s (w-1)n/w, writes residual and out 2(w-1)n/w; twoshot re-reads s
    (w-1)n/w, pull normalises it from the stage; sharded (``sharded``): pulls the out rows
    (w-1)n/w and writes them to out (w-1)n/w.
    ``remote_write``: bytes of the writes that go to a peer (pull: none).
    copyengine (always staged): the SMs run only the reduce -- all_reduce: reads n, writes out +
    result 2n/w; fused: reads n + the residual rows n/w + s again n/w, writes residual + out +
    result 3n/w (replicated: + the s slot, 4n/w). ``copied``: bytes its device copies move per
    rank, (w-1)n/w in and (w-1)n/w out (replicated fused: 2(w-1)n/w out); no SM writes remotely.
    """
    seg, other = n / w, (w - 1) * n / w
    if algorithm == "copyengine":
        if op == "all_reduce":
            return {"read": n, "written": 2 * seg, "remote_write": 0.0, "copied": 2 * other}
        gather = 1 if sharded else 2
        return {"read": n + 2 * seg, "written": (3 if sharded else 4) * seg, "remote_write": 0.0,
                "copied": (1 + gather) * other}
    if op == "all_reduce":
        read, written = n + other, 2 * seg + other
    else:
        gather = 1 if sharded else 2
        reread = 0.0 if algorithm == "pull" else seg + (gather - 1) * other  # s again for the norm
        read, written = n + seg + other + reread, 3 * seg + gather * other
    remote = 0.0
    if not zero_copy:
        read, written = read + other, written + other
        remote = other if algorithm == "twoshot" else 0.0
    return {"read": read, "written": written, "remote_write": remote}


def step_fn(op, algorithm, xs, res, weight, outs, ctas):
    if op == "fused":
        return lambda r, c: c.fused_allreduce_rmsnorm(xs[r], res[r], weight, 1e-6, algorithm=algorithm, ctas=ctas,
                                                      out=outs[r])
    return lambda r, c: c.all_reduce(xs[r], out=outs[r], algorithm=algorithm, ctas=ctas)


def measure(args) -> dict:
    import torch

    from weave_nvshmem import CommOptions
    from weave_nvshmem.bench import provenance
    from weave_nvshmem.bench.harness import MB, Harness
    from weave_nvshmem.collectives.channel import workspace_bytes
    from weave_nvshmem.collectives.emulated import EmulatedWorld

    h = Harness(distributed=False)
    opts = CommOptions(timeout_s=10.0, channels=1)
    tokens_list = (1024,) if args.quick else TOKENS
    big = max(tokens_list) * HIDDEN * 2
    sym_bytes = SETS * big + 16 * MB
    arena = workspace_bytes(WORLD, big) + workspace_bytes(WORLD, opts.initial_bytes) + sym_bytes + 64 * MB
    rows, t_start = [], time.perf_counter()
    with EmulatedWorld(WORLD, arena_bytes=arena, options=opts) as world:
        world.reserve(big)
        weight = torch.randn(HIDDEN, device="cuda").to(torch.bfloat16)
        for tokens in tokens_list:
            shape = (tokens, HIDDEN)
            plain = [[torch.empty(shape, dtype=torch.bfloat16, device="cuda") for _ in range(WORLD)]
                     for _ in range(SETS)]
            sym = [world.empty(shape, torch.bfloat16) for _ in range(SETS)]
            res = [[torch.empty(shape, dtype=torch.bfloat16, device="cuda") for _ in range(WORLD)]
                   for _ in range(SETS)]
            outs = [torch.empty(shape, dtype=torch.bfloat16, device="cuda") for _ in range(WORLD)]

            def refresh():
                for s in range(SETS):
                    for r in range(WORLD):
                        plain[s][r].normal_()
                        sym[s][r].normal_()
                        res[s][r].normal_()

            for op, algorithm in CASES:
                for zero_copy in ((False,) if algorithm == "copyengine" else (True, False)):
                    src = sym if zero_copy else plain
                    for ctas in CTAS:
                        if ctas * WORLD > world.sms:
                            continue
                        fns = [step_fn(op, algorithm, src[i], res[i], weight, outs, ctas) for i in range(SETS)]
                        m = h.measure(lambda i: world.run(fns[i]), refresh, SETS, STEPS, 2, REPLAYS)
                        world.check()
                        if m.get("error"):
                            raise RuntimeError(f"{op} {algorithm} zc={zero_copy} ctas {ctas}: {m['error']}")
                        t = traffic(op, algorithm, zero_copy, tokens * HIDDEN * 2, WORLD)
                        rows.append({"op": op, "algorithm": algorithm, "zero_copy": zero_copy, "tokens": tokens,
                                     "ctas": ctas, "us": round(m["us"], 2), "cta_us": round(ctas * m["us"], 1),
                                     "read_per_sm_MB": round(t["read"] / ctas / 1e6, 3),
                                     "written_per_sm_MB": round(t["written"] / ctas / 1e6, 3),
                                     "remote_written_per_sm_MB": round(t["remote_write"] / ctas / 1e6, 3),
                                     "copied_MB": round(t.get("copied", 0.0) / 1e6, 3)})
                        h.log(f"{rows[-1]} ({time.perf_counter() - t_start:.0f} s)")
            for s in sym:
                world.free(s)
    doc = provenance.describe("transport-footprint", h.device_name, 1, emulated=True)
    doc.update(stem=f"transport-footprint-{doc['device_slug']}", world=WORLD, hidden=HIDDEN, dtype="bfloat16",
               steps=STEPS, sets=SETS, replays=REPLAYS, rates_GB_s=RATES_GB_S, rows=rows,
               traffic_formula=traffic.__doc__)
    return doc


def markdown(doc: dict) -> str:
    from weave_nvshmem.bench import report

    r8 = doc["rates_GB_s"]
    lines = [f"**transport SM footprint** on one {doc['device']} (commit {report.commit_of(doc)}), "
             f"EmulatedWorld({doc['world']}), {doc['dtype']}, hidden {doc['hidden']}. {report.EMULATED_NOTE}. "
             "One GPU's HBM is not NVLink: these are kernel / SM-footprint figures.", "",
             f"Per-SM rates: reads {r8['read_tma']:.0f} GB/s (TMA bulk loads), {r8['read_vector']:.0f} GB/s "
             f"(16-byte vector loads); writes {r8['write']:.0f} GB/s. Bytes per SM = the algorithm's bytes per "
             "rank per call (below) / CTAs; 'SM bound' = read/rate + written/write-rate per SM (TMA rate for "
             "pull, vector rate for twoshot and copyengine; the copyengine's device copies are not in it).", "",
             "| op | algorithm | zero copy | tokens | CTAs | us/call | CTAs x us | MB read/SM | MB written/SM "
             "| of which remote | SM bound us | MB copied (device copies, per rank) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        rate = r8["read_tma"] if r["algorithm"] == "pull" else r8["read_vector"]
        bound = r["read_per_sm_MB"] * 1e6 / (rate * 1e9) * 1e6 + r["written_per_sm_MB"] * 1e6 / (r8["write"] * 1e9) * 1e6
        lines.append(f"| {r['op']} | {r['algorithm']} | {'yes' if r['zero_copy'] else 'no'} | {r['tokens']} | "
                     f"{r['ctas']} | {r['us']:.1f} | {r['cta_us']:.0f} | {r['read_per_sm_MB']:.2f} | "
                     f"{r['written_per_sm_MB']:.2f} | {r['remote_written_per_sm_MB']:.2f} | {bound:.0f} | "
                     f"{r.get('copied_MB', 0.0):.1f} |")
    lines += ["", "Traffic per rank per call (n input bytes, w ranks):", "", "```", doc["traffic_formula"].strip(),
              "```"]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path):
    """Time per call against CTAs per rank, one panel per (op, tokens), a line per algorithm and
    input kind."""
    from weave_nvshmem.bench import report

    got = report.pyplot()
    if got is None:
        return None
    plt, _ = got
    panels = sorted({(r["op"], r["tokens"]) for r in doc["rows"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, (op, tokens) in zip(axes[0], panels):
        for alg in ("pull", "copyengine", "twoshot"):
            for zc in (True, False):
                rows = sorted((r for r in doc["rows"] if (r["op"], r["tokens"], r["algorithm"], r["zero_copy"])
                               == (op, tokens, alg, zc)), key=lambda r: r["ctas"])
                if rows:
                    ax.plot([r["ctas"] for r in rows], [r["us"] for r in rows], marker="o",
                            ls="-" if zc else "--", color={"pull": "C0", "twoshot": "C1"}.get(alg, "C2"),
                            label=f"{alg}{'' if zc else ' (staged)'}")
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel="CTAs per rank", title=f"{op}, {tokens} tokens")
        ax.set_xticks([2, 4, 8, 16, 32], labels=["2", "4", "8", "16", "32"])
        ax.minorticks_off()
    axes[0][0].set_ylabel("us per call")
    axes[0][0].legend(fontsize=7)
    return report.save_figure(plt, fig, path, f"pull and copyengine vs twoshot, EmulatedWorld({doc['world']}), hidden "
                              f"{doc['hidden']} {doc['dtype']}, {doc['device']}, commit {report.commit_of(doc)}")


def main(argv=None) -> int:
    from weave_nvshmem.bench import report

    return report.script_main(argv, __doc__.split("\n")[0], measure, markdown, plot,
                              [("--quick", {"action": "store_true", "help": "1024 tokens only"})])


if __name__ == "__main__":
    raise SystemExit(main())
