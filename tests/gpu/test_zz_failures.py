"""Failure paths, run last: a missing peer times out with a clear error; heap exhaustion."""
import pytest
import torch

import weave_nvshmem as wn
from weave_nvshmem.testing import all_true
from conftest import rank, world


def _missing_peer_times_out(op, call, then=None):
    """The last rank stays away from ``call(c)``; every other rank must get PeerTimeoutError naming
    ``op`` and that peer (then ``then(c)`` runs there, e.g. to show the communicator is broken)."""
    if world() < 2:
        pytest.skip("needs >= 2 ranks")
    late = world() - 1
    c = wn.Communicator(wn.CommOptions(timeout_s=0.5, channels=1))
    msg = ""
    if rank() != late:
        call(c)
        try:
            c.synchronize()
        except wn.PeerTimeoutError as exc:
            msg = str(exc)
        if then:
            then(c)
    c.close()
    ok = True if rank() == late else (f"peer {late}" in msg and msg.startswith(op))
    assert all_true(ok), msg


def test_barrier_with_missing_peer_times_out(comm):
    def broken(c):
        with pytest.raises(wn.WeaveError, match="broken"):
            c.barrier()

    _missing_peer_times_out("barrier", lambda c: c.barrier(), broken)


def test_lamport_all_reduce_with_missing_peer_times_out(comm):
    """No barrier in the Lamport path: the bounded poll itself names the peer whose data is missing."""
    _missing_peer_times_out("all_reduce", lambda c: c.all_reduce(torch.ones(1024, device="cuda"), algorithm="lamport"))


def test_heap_exhaustion_is_a_clear_error(comm):
    with pytest.raises(wn.HeapExhaustedError, match="NVSHMEM heap"):
        wn.empty((1 << 42,), torch.uint8)
    # the heap still works afterwards
    t = wn.zeros((8,), torch.float32, label="test")
    ok = bool((t == 0).all().item())
    wn.free(t)
    assert all_true(ok)


def test_lamport_fused_with_missing_peer_times_out(comm):
    """The fused Lamport kernel leaves a row's block together after a timed-out poll (no hang)."""
    x = torch.ones(3, 4096, dtype=torch.bfloat16, device="cuda")
    w = torch.ones(4096, dtype=torch.bfloat16, device="cuda")
    _missing_peer_times_out("fused_allreduce_rmsnorm",
                            lambda c: c.fused_allreduce_rmsnorm(x, None, w, algorithm="lamport"))
