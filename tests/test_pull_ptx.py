"""pull.ptx and fused_pull.ptx without a GPU: every store goes to a local address (no register derived from a peer
delta ``%dl<p>`` ever addresses a store), peers are only read by bulk loads, and the header states
the launch shape and the sync protocol."""
import re

import pytest

from weave_nvshmem.collectives import plan
from weave_nvshmem.ptx import catalog

_INSN = re.compile(r"^\s*(@!?%\w+\s+)?([a-z][\w.:]*)\s+(.*?);", re.M)
_REG = re.compile(r"%\w+")


def _peer_derived(text: str) -> set:
    """Registers whose value may derive from a peer delta (flow-insensitive taint from %dl*)."""
    tainted = {r for r in set(_REG.findall(text)) if re.fullmatch(r"%dl\d+", r)}
    insns = [(op, args) for _, op, args in _INSN.findall(text)]
    changed = True
    while changed:
        changed = False
        for op, args in insns:
            if op.startswith(("st.", "cp.async", "mbarrier", "atom", "bar", "bra", "setp", "ld.param", "fence")):
                continue
            regs = _REG.findall(args)
            if len(regs) >= 2 and regs[0] not in tainted and any(r in tainted for r in regs[1:]):
                tainted.add(regs[0])
                changed = True
    return tainted


@pytest.mark.parametrize("world", catalog.TEST_WORLDS)
@pytest.mark.parametrize("dtype", catalog.DTYPES)
@pytest.mark.parametrize("kernel", ["pull.ptx", "fused_pull.ptx"])
def test_pull_stores_only_locally_and_reads_peers_by_bulk_loads(kernel, world, dtype):
    text = re.sub(r"//[^\n]*", "", catalog.render(kernel, dtype, world))
    body = text.split("WN_BAR_JOIN_0:")[1] if "WN_BAR_JOIN_0:" in text else text
    tainted = _peer_derived(text)
    for _, op, args in _INSN.findall(body):
        if op.startswith("st.") and not op.startswith("st.shared"):
            addr = re.search(r"\[(%\w+)", args).group(1)
            if addr == "%bsend":  # barrier.ptxinc's signal word to the peer: the handshake, not data
                continue
            assert addr not in tainted, f"{op} {args}: a store through a peer address"
        if op.startswith("ld.global"):
            addr = re.search(r"\[(%\w+)", args).group(1)
            assert addr not in tainted, f"{op} {args}: a vector load from a peer (pull reads peers by TMA)"
    if world > 1:
        bulk = [a for _, op, a in _INSN.findall(text) if op.startswith("cp.async.bulk.shared")]
        assert bulk and any(re.search(r"\[(%\w+)\]", a.split(",")[1]).group(1) in tainted for a in bulk)


def test_pull_header_states_shape_and_protocol():
    head = (catalog.KERNEL_DIR / "pull.ptx").read_text().split(".version")[0]
    for words in ("Launch shape", "Sync protocol", "mbarrier", "bounded by %timeout", "rank order 0..W-1",
                  "192 KB of dynamic shared memory", "zero copy"):
        assert words in head
    assert plan.table.PULL_SMEM == 192 * 1024


def test_fused_pull_header_states_shape_and_protocol():
    head = (catalog.KERNEL_DIR / "fused_pull.ptx").read_text().split(".version")[0]
    for words in ("Launch shape", "Sync protocol", "mbarrier", "bounded by %timeout", "rank order",
                  "192 KB of dynamic shared memory", "zero copy", "column chunks", "Same bits",
                  "grouprstd.ptxinc", "replicated", "sharded"):
        assert words in head
