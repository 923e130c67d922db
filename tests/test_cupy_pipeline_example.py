"""examples/cupy_pipeline.py's host side: inputs reproducible per rank, and the float64 reference
agrees with a float32 emulation of the pipeline within the example's tolerance."""
import numpy as np

from examples import cupy_pipeline as cpp


def test_inputs_reproducible_and_distinct_per_rank():
    a, b = cpp.inputs(1), cpp.inputs(1)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0])) and np.array_equal(a[1], b[1])
    assert not np.array_equal(cpp.inputs(0)[1], a[1])
    assert [x.shape for x in a[0]] == [(n, cpp.K) for n in cpp.CHUNK_ROWS] and a[1].dtype == np.float32
    assert 1 in cpp.CHUNK_ROWS  # a chunk with fewer rows than ranks


def test_reference_matches_float32_pipeline():
    world = 3
    residuals, weight = cpp.shared()
    parts = [cpp.inputs(r) for r in range(world)]
    for i, (ref_out, ref_res) in enumerate(cpp.reference(world)):
        s = (sum(xs[i] @ w for xs, w in parts) + residuals[i]).astype(np.float32)
        out = s / np.sqrt((s * s).mean(-1, keepdims=True) + cpp.EPS) * weight
        assert cpp._rel(out, ref_out) < cpp.TOL / 100 and cpp._rel(s, ref_res) < cpp.TOL / 100
    assert cpp._rel(np.full((2, 2), np.nan), np.ones((2, 2))) == float("inf")
