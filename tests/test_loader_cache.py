"""ptx.loader without a GPU: the on-disk cubin cache (in settings.cache_dir())."""
from __future__ import annotations

import pytest

from weave_nvshmem import settings
from weave_nvshmem.ptx import loader


class FakeLink:
    """Stands in for cuda.core's linker: records calls, returns bytes derived from the input."""

    def __init__(self):
        self.calls = []

    def __call__(self, ptx, arch):
        self.calls.append((ptx, arch))
        return f"cubin<{arch}>{ptx}".encode()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WEAVE_NVSHMEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_link(ptx, arch):
    raise AssertionError("link must not be called on a cache hit")


def test_cache_dir_follows_env(cache):
    assert settings.cache_dir() == cache


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("WEAVE_NVSHMEM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings.cache_dir() == tmp_path / ".cache" / "weave_nvshmem"


def test_device_slug():
    assert settings.device_slug("NVIDIA H200") == "nvidia-h200"
    assert settings.device_slug("  NVIDIA GH200 480GB (x) ") == "nvidia-gh200-480gb-x"


def test_second_call_is_served_from_disk(cache):
    link = FakeLink()
    first = loader.cubin_for("ptx text A", "sm_90a", link=link)
    assert first == b"cubin<sm_90a>ptx text A"
    assert link.calls == [("ptx text A", "sm_90a")]
    assert loader.cubin_for("ptx text A", "sm_90a", link=link) == first
    assert len(link.calls) == 1
    # a fresh "process" (new linker) still hits the cache
    assert loader.cubin_for("ptx text A", "sm_90a", link=_no_link) == first


def test_cache_files_are_complete_and_named_by_arch(cache):
    loader.cubin_for("x", "sm_90a", link=FakeLink())
    files = sorted(p.name for p in cache.iterdir())
    assert files == [f"{loader.cache_key('x', 'sm_90a')}.sm_90a.cubin"]  # no temp files left behind
    assert (cache / files[0]).read_bytes() == b"cubin<sm_90a>x"


def test_different_arch_links_again(cache):
    link = FakeLink()
    a = loader.cubin_for("same", "sm_90a", link=link)
    b = loader.cubin_for("same", "sm_100a", link=link)
    assert a != b
    assert link.calls == [("same", "sm_90a"), ("same", "sm_100a")]
    assert loader.cubin_for("same", "sm_90a", link=_no_link) == a
    assert loader.cubin_for("same", "sm_100a", link=_no_link) == b


def test_different_source_links_again(cache):
    link = FakeLink()
    loader.cubin_for("source one", "sm_90a", link=link)
    loader.cubin_for("source two", "sm_90a", link=link)
    loader.cubin_for("source one ", "sm_90a", link=link)  # any change in the text is a new key
    assert [c[0] for c in link.calls] == ["source one", "source two", "source one "]
    assert len(list(cache.glob("*.cubin"))) == 3


def test_default_arch_is_sm90a(cache):
    link = FakeLink()
    loader.cubin_for("p", link=link)
    assert link.calls == [("p", "sm_90a")]
    assert loader.ARCH == "sm_90a"


def test_failed_link_caches_nothing(cache):
    def broken(ptx, arch):
        raise loader.CudaError("link failed")

    with pytest.raises(loader.CudaError):
        loader.cubin_for("bad", "sm_90a", link=broken)
    assert not cache.exists() or not list(cache.iterdir())
    link = FakeLink()
    loader.cubin_for("bad", "sm_90a", link=link)
    assert len(link.calls) == 1


def test_cache_key_depends_on_source_and_arch():
    k = loader.cache_key("ptx", "sm_90a")
    assert k == loader.cache_key("ptx", "sm_90a")
    assert k != loader.cache_key("ptx", "sm_90")
    assert k != loader.cache_key("ptx2", "sm_90a")
    # the separator keeps (arch, source) pairs apart
    assert loader.cache_key("a", "sm_90") != loader.cache_key("0a", "sm_9")
