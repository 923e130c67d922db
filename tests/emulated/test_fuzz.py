"""A short fuzz run at each world size: the calls of ``scripts/fuzz.py`` (every op, dtype and
algorithm; compression specs; zero-copy inputs; 0- and 1-element and odd shapes; CTA counts;
channels; eager and CUDA-graph replay),
each checked against the references and across ranks. A failure names the call and the command
that reruns it alone; the long run is ``python scripts/fuzz.py --calls 10000``."""
import pytest

from weave_nvshmem.testing.fuzz import failure_line, fuzz_call
from weave_nvshmem.testing.runner import Fuzzer
from conftest import WORLDS

CALLS = 200
SEED = 0


@pytest.mark.parametrize("world", WORLDS, ids=lambda w: f"w{w}")
def test_fuzz(world):
    failures = []
    with Fuzzer(world) as fuzzer:
        for k in range(CALLS):
            call = fuzz_call(SEED, world, k)
            problems = fuzzer.run(call)
            if problems:
                failures.append(failure_line(call, problems))
    assert not failures, f"{len(failures)} of {CALLS} calls failed:\n" + "\n".join(failures)
