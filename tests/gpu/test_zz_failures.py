"""Failure paths, run last: a missing peer times out with a clear error; heap exhaustion."""
import pytest
import torch

import weave_nvshmem as wn
from conftest import all_ranks_true, rank, world


def test_barrier_with_missing_peer_times_out(comm):
    if world() < 2:
        pytest.skip("needs >= 2 ranks")
    late = world() - 1
    c = wn.Communicator(wn.CommOptions(timeout_s=0.5, channels=1))
    msg = ""
    if rank() != late:
        c.barrier()
        try:
            c.synchronize()
        except wn.PeerTimeoutError as exc:
            msg = str(exc)
        with pytest.raises(wn.WeaveError, match="broken"):
            c.barrier()
    c.close()
    ok = True if rank() == late else (f"peer {late}" in msg and msg.startswith("barrier"))
    assert all_ranks_true(ok), msg


def test_lamport_all_reduce_with_missing_peer_times_out(comm):
    """No barrier in the Lamport path: the bounded poll itself names the peer whose data is missing."""
    if world() < 2:
        pytest.skip("needs >= 2 ranks")
    late = world() - 1
    c = wn.Communicator(wn.CommOptions(timeout_s=0.5, channels=1))
    msg = ""
    if rank() != late:
        c.all_reduce(torch.ones(1024, device="cuda"), algorithm="lamport")
        try:
            c.synchronize()
        except wn.PeerTimeoutError as exc:
            msg = str(exc)
    c.close()
    ok = True if rank() == late else (f"peer {late}" in msg and msg.startswith("all_reduce"))
    assert all_ranks_true(ok), msg


def test_heap_exhaustion_is_a_clear_error(comm):
    with pytest.raises(wn.HeapExhaustedError, match="NVSHMEM heap"):
        wn.empty((1 << 42,), torch.uint8)
    # the heap still works afterwards
    t = wn.zeros((8,), torch.float32, label="test")
    ok = bool((t == 0).all().item())
    wn.free(t)
    assert all_ranks_true(ok)
