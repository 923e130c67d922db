"""weave-bench's command line: real subcommands, each with its own --help (no GPU)."""
import subprocess
import sys
from pathlib import Path

import pytest

from weave_nvshmem.bench import cli

#: an option each subcommand has and the global help does not show
OWN = {"allreduce": "--no-symm", "fused": "--no-symm", "reducescatter": "--no-symm", "allgather": "--no-symm",
       "all": "--no-symm", "tune": "--nccl-timeout-s", "norm": "--nvshmem", "plot": "files"}


@pytest.mark.parametrize("command", sorted(OWN))
def test_each_subcommand_prints_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: weave-bench {command}")
    assert OWN[command] in out and cli.HELP[command].split(":")[0] in " ".join(out.split())


def test_global_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in OWN) and "--no-symm" not in out


def test_options_belong_to_their_subcommand():
    p = cli.parser()
    a = p.parse_args(["norm", "--quick", "--dtypes", "bfloat16", "--hiddens", "4096"])
    assert (a.command, a.quick, a.dtypes, a.hiddens, a.nvshmem) == ("norm", True, ["bfloat16"], [4096], False)
    s = cli.settings(a)
    assert s["tokens"] == [1, 128, 2048, 16384] and s["no_residual"] == {"dtype": "bfloat16", "hidden": 4096}
    a = p.parse_args(["fused", "--out", "o", "--no-symm", "--budget-s", "0"])
    assert (a.out, a.no_symm, a.budget_s) == ("o", True, 0.0)
    for bad in ([], ["norm", "--no-symm"], ["tune", "--no-symm"], ["allreduce", "--nvshmem"], ["plot"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_module_entry_point_and_console_script():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "weave_nvshmem.bench", "allreduce", "--help"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: weave-bench allreduce") and "--no-symm" in out.stdout
    assert 'weave-bench = "weave_nvshmem.bench.cli:main"' in (root / "pyproject.toml").read_text()


def test_no_gpu_is_one_line_and_leaves_the_environment(capsys, monkeypatch):
    """Without a CUDA GPU every measuring subcommand exits 2 with one line naming it, no traceback,
    and sets no NVSHMEM variable."""
    import os

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("NVSHMEM_SYMMETRIC_SIZE", raising=False)
    for command in ("norm", "allreduce"):
        assert cli.main([command, "--out", "unused"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"weave-bench: bench {command}") and "GPU" in err and "Traceback" not in err
    assert "NVSHMEM_SYMMETRIC_SIZE" not in os.environ
