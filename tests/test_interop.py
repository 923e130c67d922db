"""The torch / CuPy / stream interop module and the layering without a GPU: stream handles, torch
views, finalize hooks, and an import graph in which nothing imports upward."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from weave_nvshmem.memory import interop

runtime = sys.modules["weave_nvshmem.memory.runtime"]  # the package re-exports a function of that name

PKG = Path(__file__).resolve().parents[1] / "weave_nvshmem"


class TorchLikeStream:
    cuda_stream = 0x1234


class CupyLikeStream:
    ptr = 0x5678


class ProtocolStream:
    def __cuda_stream__(self):
        return (0, 0x9ABC)


def test_stream_handle_int():
    assert interop.stream_handle(0) == 0
    assert interop.stream_handle(0xDEADBEEF) == 0xDEADBEEF


@pytest.mark.parametrize("stream,handle", [(TorchLikeStream(), 0x1234), (CupyLikeStream(), 0x5678),
                                           (ProtocolStream(), 0x9ABC)])
def test_stream_handle_objects(stream, handle):
    h = interop.stream_handle(stream)
    assert h == handle and isinstance(h, int)


@pytest.mark.parametrize("bad", [object(), "stream", 1.5, [1], {"ptr": 3}])
def test_stream_handle_rejects_others(bad):
    with pytest.raises(TypeError, match="CUDA stream"):
        interop.stream_handle(bad)


def test_torch_views_and_back():
    torch = pytest.importorskip("torch")
    t = torch.arange(4)
    view, back = interop.to_torch(t)
    assert view is t and back(view) is view
    assert interop.as_torch(t) is t
    assert interop.op_stream(None, t) is None and interop.op_stream(7, t) == 7
    assert interop.torch_stream(None) is None
    for bad in ([1, 2], 3.0):
        with pytest.raises(TypeError, match="torch tensor or CuPy array"):
            interop.to_torch(bad)
        with pytest.raises(TypeError, match="torch tensor or CuPy array"):
            interop.as_torch(bad)


def test_finalize_runs_the_hooks_upper_layers_registered(monkeypatch):
    """memory knows nothing of collectives: collectives registers closing its default communicator."""
    from weave_nvshmem.collectives import communicator

    assert communicator.close_default in runtime._finalize_hooks
    calls = []
    monkeypatch.setattr(runtime, "_finalize_hooks", [])
    runtime.on_finalize(lambda: calls.append("a"))
    hook_b = lambda: calls.append("b")  # noqa: E731
    runtime.on_finalize(hook_b)
    runtime.on_finalize(hook_b)  # registered once
    assert len(runtime._finalize_hooks) == 2
    monkeypatch.setattr(runtime, "_runtime", None)
    assert runtime.finalize() == [] and calls == []  # not initialised: nothing to tear down
    for hook in reversed(runtime._finalize_hooks):
        hook()
    assert calls == ["b", "a"]


#: layer order, lowest first; a module may import its own layer and those before it
LAYERS = ["errors", "settings", "memory", "ptx", "collectives", "overlap"]


def _layer(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in LAYERS else None


def _imports(path: Path):
    """Package-relative names ``path`` imports (absolute weave_nvshmem.* or relative)."""
    tree = ast.parse(path.read_text())
    pkg_parts = path.relative_to(PKG).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[:len(pkg_parts) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif node.module and node.module.startswith("weave_nvshmem"):
                names = [node.module.removeprefix("weave_nvshmem").lstrip(".")]
            else:
                continue
            yield from (n for n in names if n)
        elif isinstance(node, ast.Import):
            yield from (a.name.removeprefix("weave_nvshmem.") for a in node.names if a.name.startswith("weave_nvshmem."))


@pytest.mark.parametrize("layer", LAYERS)
def test_nothing_imports_upward(layer):
    """memory -> ptx -> collectives -> overlap: no module imports a layer above its own."""
    files = [PKG / f"{layer}.py"] if (PKG / f"{layer}.py").exists() else sorted((PKG / layer).rglob("*.py"))
    allowed = set(LAYERS[:LAYERS.index(layer) + 1])
    for f in files:
        for name in _imports(f):
            target = _layer(name)
            assert target is None or target in allowed, f"{f.relative_to(PKG)} imports {name} (above {layer})"
