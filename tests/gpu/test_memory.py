"""init/finalize, symmetric tensors as torch and CuPy, peer views, multicast refusal, put + barrier."""
import pytest
import torch
import torch.distributed as dist

import weave_nvshmem as wn
from weave_nvshmem.testing import all_true
from conftest import rank, world


def test_runtime_matches_torch_distributed(comm):
    assert comm.rank == rank() and comm.world == world()
    assert wn.is_initialized()


def test_torch_and_cupy_views_share_memory(comm):
    import cupy

    t = wn.empty((1000, 3), torch.float32, label="test")
    t.fill_(rank() + 0.5)
    c = wn.as_cupy(t)
    torch.cuda.synchronize()
    seen = float(cupy.asnumpy(c[999, 2]))
    c[0, 0] = 42.0
    cupy.cuda.runtime.deviceSynchronize()
    back = t[0, 0].item()
    sym = wn.is_symmetric(t[10:20]) and not wn.is_symmetric(torch.empty(4, device="cuda"))
    wn.free(t)
    assert seen == rank() + 0.5 and back == 42.0 and sym


def test_peer_views_read_and_write_the_right_pe(comm):
    w, r = world(), rank()
    t = wn.zeros((w, 64), torch.float32, label="test")
    t[r].fill_(r)
    torch.cuda.synchronize()
    dist.barrier()
    reads = [wn.peer_view(t, pe)[pe].clone() for pe in range(w)]
    sliced = [wn.peer_view(t[pe:pe + 1], pe)[0].clone() for pe in range(w)]
    # write into the next PE's row r
    nxt = (r + 1) % w
    wn.peer_view(t, nxt)[r].fill_(100 + r)
    torch.cuda.synchronize()
    dist.barrier()
    prev = (r - 1) % w
    got_prev = t[prev].clone()
    torch.cuda.synchronize()
    dist.barrier()
    wn.free(t)
    ok = all(torch.all(x == pe).item() for pe, x in enumerate(reads))
    ok &= all(torch.all(x == pe).item() for pe, x in enumerate(sliced))
    ok &= bool(torch.all(got_prev == 100 + prev).item()) if w > 1 else True
    assert all_true(ok)


def test_multicast_reported_unavailable(comm):
    reason = wn.multicast_unavailable_reason()
    t = wn.empty((16,), torch.float32, label="test")
    with pytest.raises(wn.MulticastUnavailable) as info:
        wn.multicast_view(t)
    wn.free(t)
    with pytest.warns(UserWarning, match="multicast requested but unavailable"):
        c = wn.Communicator(wn.CommOptions(multicast=True, channels=1))
    x = torch.full((4096,), 1.0, device="cuda", dtype=torch.bfloat16)
    y = c.all_reduce(x, algorithm="twoshot")  # the P2P kernels, never multimem here
    c.synchronize()
    fallback = c.multicast_reason
    c.close()
    assert reason and reason in str(info.value) and fallback
    assert all_true(bool((y == world()).all().item()))


def test_put_then_barrier_delivers_to_every_peer(comm):
    w, r = world(), rank()
    dst = wn.zeros((w, 1000), torch.float32, label="test")
    src = torch.full((1000,), float(r), device="cuda")
    for pe in range(w):
        comm.put(dst[r], src, pe)
    comm.barrier()
    comm.synchronize()
    ok = all(torch.all(dst[q] == q).item() for q in range(w))
    torch.cuda.synchronize()
    dist.barrier()
    wn.free(dst)
    assert all_true(ok)


def test_barrier_orders_10k_back_to_back_rounds(comm):
    """put(round) -> barrier -> read, 10k times; slots alternate by round parity."""
    w, r = world(), rank()
    buf = wn.zeros((2, w, 4), torch.int32, label="test")
    errors = torch.zeros((), dtype=torch.int64, device="cuda")
    vals = torch.arange(10_000, device="cuda", dtype=torch.int32).view(-1, 1).expand(-1, 4).contiguous()
    for i in range(10_000):
        s = i % 2
        for pe in range(w):
            comm.put(buf[s, r], vals[i], pe)
        comm.barrier()
        errors += (buf[s] != i).sum()
    comm.synchronize()
    n_err = errors.item()
    torch.cuda.synchronize()
    dist.barrier()
    wn.free(buf)
    assert all_true(n_err == 0), f"{n_err} stale reads"


def test_barrier_in_replayed_cuda_graph(comm):
    w, r = world(), rank()
    buf = wn.zeros((2, w, 4), torch.int32, label="test")
    counter = torch.zeros((4,), dtype=torch.int32, device="cuda")
    errors = torch.zeros((), dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(g, stream=stream):
            for s in range(2):
                counter += 1
                for pe in range(w):
                    comm.put(buf[s, r], counter, pe)
                comm.barrier()
                errors += (buf[s] != counter).sum()
    for _ in range(1000):
        g.replay()
    torch.cuda.synchronize()
    comm.check()
    n_err, final = errors.item(), counter[0].item()
    dist.barrier()
    wn.free(buf)
    assert all_true(n_err == 0 and final == 2000), (n_err, final)
