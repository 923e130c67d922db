"""The call signature's host side without a GPU: descriptor words round-trip for every op and
algorithm of the kernel table, the signature separates calls that differ in any field, a mismatch
record decodes into a CallMismatchError naming both calls in words, and every channel launch
carries the words (signature 0 when CommOptions(call_signature=False))."""
from __future__ import annotations

import types

import numpy as np
import pytest

from weave_nvshmem import errors
from weave_nvshmem.collectives import communicator as comm_mod
from weave_nvshmem.collectives import plan, signature
from weave_nvshmem.collectives.calls import Call
from weave_nvshmem.collectives.communicator import CommOptions, Communicator
from weave_nvshmem.collectives.signature import record_error
from weave_nvshmem.ptx import catalog, table


def desc(op="all_reduce", algorithm="twoshot", dtype="bf16", ctas=16, sizes=(4096,), channel=0, flags=0,
         transport="p2p"):
    return signature.encode(op, algorithm, dtype, transport, channel, flags, ctas, sizes)


@pytest.mark.parametrize("spec", [k for k in table.KERNELS if k.channel and k.op in signature.OPS.values()],
                         ids=lambda k: "-".join(k.key))  # (not the copy-engine transport's wait: no call of its own)
def test_words_round_trip_for_every_channel_kernel(spec):
    sizes = (7, 8192) if spec.op == "fused_allreduce_rmsnorm" else () if spec.op == "barrier" else ((1 << 33) + 5,)
    for ctas in (1, 16, 128):
        d = desc(spec.op, spec.algorithm, "f16", ctas, sizes, channel=7, flags=5, transport=spec.transport)
        back = signature.CallDescriptor.from_words(*d.words())
        assert back == d
        assert all(0 <= w < 1 << 32 for w in d.words())


def test_algorithm_ids_follow_the_table():
    assert set(signature.ALGORITHMS) >= {k.algorithm for k in table.KERNELS}
    for name in table.algorithms("all_reduce") + table.algorithms("fused_allreduce_rmsnorm"):
        assert signature.CallDescriptor.from_words(*desc(algorithm=name).words()).algorithm == name


def test_signature_separates_every_field():
    base = desc()
    variants = [desc(sizes=(8192,)), desc(algorithm="oneshot"), desc(ctas=8), desc(dtype="f32"), desc(channel=1),
                desc(flags=4), desc(op="reduce_scatter"), desc(transport="multicast"), desc(sizes=(4096 + (1 << 32),))]
    sigs = {signature.signature(v.words()) for v in variants} | {signature.signature(base.words())}
    assert len(sigs) == len(variants) + 1
    assert all(s != 0 for s in sigs)
    assert signature.signature(base.words()) == signature.signature(desc().words())  # a pure function


def test_describe_in_words():
    d = desc()
    text = signature.describe(d.words() + (5, 0), 0)
    assert text == "rank 0 called all_reduce(numel=4096, bfloat16, twoshot, ctas=16, channel 0, call #5)"
    f = desc("fused_allreduce_rmsnorm", "oneshot", "f32", 128, (7, 8192), channel=1, flags=2)
    assert str(signature.CallDescriptor.from_words(*f.words(), 3, 2)) == (
        "fused_allreduce_rmsnorm(rows=7, hidden=8192, float32, oneshot, ctas=128, flags=residual, channel 1, "
        "call #3, after 2 Lamport calls)")
    b = desc("barrier", "barrier", None, 1, ())
    assert str(signature.CallDescriptor.from_words(*b.words(), 9, 0)) == "barrier(ctas=1, channel 0, call #9)"


def record(status, mine, theirs, peer=1, cta=3, seq=(5, 5), lseq=(0, 0)):
    w = np.zeros(signature.RECORD_WORDS, np.uint32)
    w[:4] = (status, comm_mod.OP_IDS[mine.op], peer, cta)
    w[4:9] = mine.words() + (seq[0], lseq[0])
    w[9:14] = theirs.words() + (seq[1], lseq[1])
    w[14] = 0x1234
    return w


def test_mismatch_record_names_both_calls():
    mine, theirs = desc(), desc(sizes=(8192,))
    exc = record_error(record(2, mine, theirs, peer=1), 0, 30.0)
    assert isinstance(exc, errors.CallMismatchError) and isinstance(exc, errors.WeaveError)
    msg = str(exc)
    assert ("rank 0 called all_reduce(numel=4096, bfloat16, twoshot, ctas=16, channel 0, call #5); "
            "rank 1 called all_reduce(numel=8192, bfloat16, twoshot, ctas=16, channel 0, call #5)") in msg
    assert "re-create" in msg and "\n" not in msg
    assert (exc.rank, exc.peer, exc.cta) == (0, 1, 3)
    # seen from rank 1: still in rank order
    exc1 = record_error(record(2, theirs, mine, peer=0), 1, 30.0)
    assert str(exc1).index("rank 0 called all_reduce(numel=4096") < str(exc1).index("rank 1 called")
    # a different algorithm and CTA count, and a differing call count
    exc2 = record_error(record(2, desc(algorithm="oneshot", ctas=8), mine, peer=2, seq=(6, 5)), 3, 30.0)
    assert "rank 2 called all_reduce(numel=4096, bfloat16, twoshot, ctas=16, channel 0, call #5)" in str(exc2)
    assert "rank 3 called all_reduce(numel=4096, bfloat16, oneshot, ctas=8, channel 0, call #6)" in str(exc2)


def test_timeout_record_is_still_a_peer_timeout():
    w = np.zeros(signature.RECORD_WORDS, np.uint32)
    w[:4] = (1, comm_mod.OP_IDS["reduce_scatter"], 2, 7)
    exc = record_error(w, 0, 1.5)
    assert isinstance(exc, errors.PeerTimeoutError)
    assert (exc.op, exc.peer, exc.cta) == ("reduce_scatter", 2, 7) and "1.5 s" in str(exc)


def test_layout_has_room_for_the_descriptors():
    assert catalog.PAD_OFF + catalog.MAX_CTAS * catalog.MAX_WORLD * 4 <= catalog.DESC_OFF
    assert catalog.DESC_OFF + catalog.MAX_CTAS * catalog.MAX_WORLD * catalog.DESC_BYTES <= catalog.DATA_OFF
    assert [n for n, _ in table.CHANNEL_PARAMS][-4:] == ["sig", "call0", "call1", "call2"]
    text = catalog.render("barrier.ptx", None, 2)
    assert "p_sig" in text and f"+{catalog.DESC_OFF}]" in text


class _FakeChannel:
    def values(self):
        return {"ws": 4096, "cap": 256, "dl0": 0, "dl1": 1 << 20}


@pytest.mark.parametrize("on", [True, False])
def test_every_channel_launch_carries_the_signature(on):
    fake = types.SimpleNamespace(options=CommOptions(call_signature=on), rank=1,
                                 _err=types.SimpleNamespace(device_ptr=1234))
    torch = pytest.importorskip("torch")
    x = torch.zeros(4096, dtype=torch.bfloat16)
    call = Call("all_reduce", "bf16", x, None, x.shape, lambda t: t, None, 1, 4096, "twoshot", 16)
    p = plan.plan_all_reduce(4096, "bf16", 2, "twoshot", 16)
    values = Communicator._common(fake, _FakeChannel(), call, p)
    words = signature.call_words(call, p)
    assert (values["call0"], values["call1"], values["call2"]) == words
    assert values["sig"] == (signature.signature(words) if on else 0)
    back = signature.CallDescriptor.from_words(*words)
    assert (back.op, back.algorithm, back.dtype, back.ctas, back.channel, back.sizes) == (
        "all_reduce", "twoshot", "bfloat16", p.grid, 1, (4096,))
    spec = p.kernel
    spec.pack(2, {**{n: 0 for n, _ in spec.params}, **values})  # every parameter named, nothing extra


def test_overhead_script_parses_its_arguments_without_a_gpu():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "signature_overhead.py"
    spec = importlib.util.spec_from_file_location("signature_overhead", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_:
        script.main(["--help"])
    assert exit_.value.code == 0
    assert script.TOKENS == (1, 2, 4, 8, 16) and script.HIDDEN == 8192 and script.TARGET_US == 0.3


def test_a_mismatch_record_with_unknown_call_counters():
    """The copy-engine wait's record: the call counters the host cannot know (signature.UNKNOWN)
    decode as None, and the error names both calls."""
    mine, theirs = desc(ctas=8, algorithm="copyengine"), desc(ctas=8, sizes=(8192,), algorithm="copyengine")
    u = signature.UNKNOWN
    record = [signature.MISMATCH, 2, 1, 0, *mine.words(), u, u, *theirs.words(), u, u, 77, 0]
    f = signature.decode_record(record, 0)
    assert f["mine"] == mine and f["theirs"] == theirs and f["peer"] == 1
    err = signature.record_error(record, 0, 5.0)
    assert "numel=4096" in str(err) and "numel=8192" in str(err) and "call #" not in str(err)
