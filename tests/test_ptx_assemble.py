"""Every PTX variant the package can launch renders and assembles for sm_90a (ptxas, no GPU).

Also checks the rendered text (header comment, target) and that every entry point the
communicator can request exists in the file it loads it from.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from weave_nvshmem.collectives import plan
from weave_nvshmem.ptx import catalog, table


def _find_ptxas():
    found = shutil.which("ptxas")
    if found:
        return found
    for cand in ("/usr/local/bin/ptxas", "/usr/local/cuda/bin/ptxas"):
        if os.access(cand, os.X_OK):
            return cand
    return None


PTXAS = _find_ptxas()
if PTXAS is None:
    pytest.skip("ptxas (CUDA toolkit) is not on PATH: cannot assemble the PTX kernels", allow_module_level=True)

VARIANTS = list(catalog.variants())
ENTRY = re.compile(r"^\s*\.visible\s+\.entry\s+(\w+)\s*\(", re.M)
VPTS = (1, 2, 4, 8)
GROUPS = (1, 2, 4, 8, 16)


def _vid(v):
    kernel, dtype, world = v
    return f"{kernel.removesuffix('.ptx')}-{dtype or 'untyped'}-w{world}"


def test_catalog_lists_every_kernel_file():
    files = {p.name for p in catalog.KERNEL_DIR.glob("*.ptx")}
    assert files == set(catalog.KERNELS), "every kernels/*.ptx must be in catalog.KERNELS (and exist)"
    assert {v[0] for v in VARIANTS} == set(catalog.KERNELS)
    assert "multimem.ptx" in files, "ptx/kernels/multimem.ptx is missing"


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    """{variant: (returncode, ptxas output)} for every variant, assembled two at a time."""
    out_dir = tmp_path_factory.mktemp("ptx")

    def job(v):
        kernel, dtype, world = v
        name = _vid(v)
        try:
            text = catalog.render(kernel, dtype, world)
        except Exception as exc:  # noqa: BLE001 - reported per variant
            return v, (-1, f"render failed: {exc!r}")
        src = out_dir / f"{name}.ptx"
        src.write_text(text)
        res = subprocess.run([PTXAS, "-arch=sm_90a", str(src), "-o", str(out_dir / f"{name}.cubin")],
                             capture_output=True, text=True, timeout=600)
        return v, (res.returncode, (res.stdout + res.stderr).strip())

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(job, VARIANTS))


@pytest.mark.parametrize("variant", VARIANTS, ids=_vid)
def test_assembles_for_sm90a(assembled, variant):
    rc, log = assembled[variant]
    assert rc == 0, f"ptxas -arch=sm_90a failed for {_vid(variant)}:\n{log[:4000]}"


@pytest.mark.parametrize("variant", VARIANTS, ids=_vid)
def test_rendered_text(variant):
    text = catalog.render(*variant)
    assert text.startswith("//"), "a rendered kernel starts with its header comment"
    assert f"// {variant[0]}" in text.splitlines()[0]
    assert re.search(r"^\.target sm_90a\b", text, re.M)
    assert re.search(r"^\.version \d+\.\d+", text, re.M)
    assert "${" not in text, "unsubstituted ${...} left in the rendered PTX"
    assert "//@" not in text, "a template directive survived rendering"
    names = ENTRY.findall(text)
    assert names and len(names) == len(set(names))


def _entries(kernel, dtype, world):
    return set(ENTRY.findall(catalog.render(kernel, dtype, world)))


def _expected():
    """(file, dtype, world) -> entry names the communicator (or its multicast path) can request."""
    algos = [a for a in plan.ALLREDUCE_ALGORITHMS if a not in ("auto", "pull", "copyengine")]
    fused_algos = [a for a in plan.FUSED_ALGORITHMS if a not in ("auto", "twoshot", "local", "pull", "copyengine")]
    exp = {("copy.ptx", None, 1): {"wn_copy"}}
    for dt in catalog.DTYPES:
        exp[("fused_local.ptx", dt, 1)] = {f"wn_fused_local_{dt}_v{v}" for v in VPTS}
    for world in catalog.TEST_WORLDS:
        exp[("barrier.ptx", None, world)] = {f"wn_barrier_w{world}"}
        exp[("cewait.ptx", None, world)] = {f"wn_ce_wait_w{world}"}
        for dt in catalog.DTYPES:
            exp[("allreduce.ptx", dt, world)] = {f"wn_allreduce_{a}_{dt}_w{world}" for a in algos}
            exp[("fused_rmsnorm.ptx", dt, world)] = {f"wn_fused_{a}_{dt}_w{world}_v{v}"
                                                     for a in fused_algos for v in VPTS}
            exp[("pull.ptx", dt, world)] = {f"wn_pull_{dt}_w{world}"}
            exp[("fused_pull.ptx", dt, world)] = {f"wn_fused_pull_{dt}_w{world}"}
            exp[("fused_twoshot.ptx", dt, world)] = {f"wn_fused_twoshot_{dt}_w{world}_g{g}" for g in GROUPS}
            exp[("ce.ptx", dt, world)] = ({f"wn_ce_sum_{dt}_w{world}"}
                                          | {f"wn_ce_fused_{dt}_w{world}_g{g}" for g in GROUPS})
            exp[("multimem.ptx", dt, world)] = ({f"wn_allreduce_multimem_{dt}_w{world}"}
                                               | {f"wn_fused_multimem_{dt}_w{world}_v{v}" for v in VPTS})
    return exp


@pytest.mark.parametrize("key", list(_expected()), ids=_vid)
def test_requested_entries_exist(key):
    missing = _expected()[key] - _entries(*key)
    assert not missing, f"{_vid(key)} lacks entry points {sorted(missing)}"


def test_fused_row_groups_have_entries():
    """Every row group the planner can pick has a two-shot kernel."""
    assert {plan.row_group(n) for n in range(1, 100)} == set(GROUPS)


def test_fused_vpt_choices_have_entries():
    """Every VPT fused_block can pick has a kernel (fused_rmsnorm and multimem)."""
    picked = {plan.fused_block(h, dt)[1] for dt in catalog.DTYPES
              for h in range(catalog.VEC_ELEMS[dt], 4096 * catalog.VEC_ELEMS[dt] + 1, catalog.VEC_ELEMS[dt])}
    assert picked <= set(VPTS)


def test_variants_cover_every_world_and_dtype():
    for kernel, (dtyped, per_world) in catalog.KERNELS.items():
        got = {(d, w) for k, d, w in VARIANTS if k == kernel}
        dts = catalog.DTYPES if dtyped else (None,)
        assert got == {(d, w) for d in dts for w in (catalog.TEST_WORLDS if per_world else (1,))}


def test_bulk_is_gone_and_multimem_is_marked():
    """bulk.ptx and its fragments are retired; multimem.ptx says in its header what the table says."""
    names = {p.name for p in catalog.KERNEL_DIR.iterdir()}
    assert not names & {"bulk.ptx", "bulkcopy.ptxinc", "bulkregs.ptxinc", "cpitem.ptxinc", "normvec.ptxinc"}
    header = " ".join(line.lstrip("/ ") for line in (catalog.KERNEL_DIR / "multimem.ptx").read_text().splitlines()[:12])
    assert table.MULTICAST_STATUS in header


def test_every_fragment_is_included():
    """No .ptxinc is dead weight: each is included by a kernel or another fragment."""
    texts = " ".join(p.read_text() for p in catalog.KERNEL_DIR.iterdir())
    for frag in catalog.KERNEL_DIR.glob("*.ptxinc"):
        assert f"//@include {frag.name}" in texts, f"{frag.name} is included nowhere"
