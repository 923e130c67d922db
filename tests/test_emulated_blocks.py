"""The emulated world's arena allocator (host logic): same offsets for every rank, a block is free
again only when every rank gave it back, neighbours coalesce, exhaustion is a clear error."""
import pytest

from weave_nvshmem.collectives.emulated import BlockList
from weave_nvshmem.errors import HeapExhaustedError


def test_first_fit_aligned_blocks():
    b = BlockList(4096, world=2)
    assert b.take(1) == 0
    assert b.take(300) == 256  # 256-byte alignment
    assert b.take(256) == 768
    assert b.holes == [(1024, 3072)]


def test_block_returns_when_the_last_rank_gives_it_back():
    b = BlockList(4096, world=3)
    a = b.take(1024)
    b.take(1024)
    b.give_back(a, 0)
    b.give_back(a, 2)
    assert b.holds(a) and b.holes == [(2048, 2048)]
    b.give_back(a, 1)
    assert not b.holds(a) and b.holes == [(0, 1024), (2048, 2048)]
    assert b.take(512) == 0  # first fit reuses the front hole


def test_neighbours_coalesce_and_exhaustion_is_an_error():
    b = BlockList(2048, world=1)
    x, y = b.take(1024), b.take(1024)
    with pytest.raises(HeapExhaustedError, match="arena_bytes"):
        b.take(256)
    b.give_back(x, 0)
    b.give_back(y, 0)
    assert b.holes == [(0, 2048)]
    assert b.take(2048) == 0


def test_both_fabrics_implement_the_protocol_and_nothing_subclasses_the_communicator():
    """An emulated rank is a plain Communicator on its own fabric: no private hooks overridden."""
    import inspect

    from weave_nvshmem.collectives.communicator import Communicator
    from weave_nvshmem.collectives.emulated import _RankFabric
    from weave_nvshmem.collectives.fabric import Fabric, NvshmemFabric

    methods = [n for n, v in vars(Fabric).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert sorted(methods) == ["check_growth", "launch", "new_channel", "sync_ranks", "zero_copy"]
    for cls in (NvshmemFabric, _RankFabric):
        for name in methods:
            assert inspect.signature(getattr(cls, name)).parameters.keys() == \
                inspect.signature(getattr(Fabric, name)).parameters.keys(), (cls, name)
    assert Communicator.__subclasses__() == []
