"""The ``rcukit`` command: version, help, misuse exit codes, and ``rcukit locks``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rcukit
from rcukit.cli import main


def _zero() -> dict[str, int]:
    return {"invalid_wait_context": 0, "rcu_stall": 0, "scheduling_while_atomic": 0,
            "sleeping_in_atomic": 0}


def expected_locks_json(cpus: int, seed: int = 0) -> dict[str, object]:
    return {
        "cpus": cpus,
        "seed": seed,
        "splats": {
            "default": _zero(),
            "lockdep": {**_zero(), "invalid_wait_context": cpus},
            "rt": {**_zero(), "scheduling_while_atomic": cpus},
        },
    }


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"rcukit {rcukit.__version__}\n"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rcukit ")
    assert "locks" in out
    assert "--version" in out


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: rcukit ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "rcukit: error: unrecognized arguments: --bogus"),
        (["locks", "--bogus"], "rcukit: error: unrecognized arguments: --bogus"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["locks", "--cpus", "many"], "argument --cpus: invalid int value: 'many'"),
    ],
)
def test_bad_usage_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_value_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["locks", "--cpus", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "rcukit locks: error: nr_cpus = 0 is out of range; allowed: 1 .. 4096\n"
    assert captured.out == ""


@pytest.mark.parametrize("cpus", [4, 2])
def test_locks_json_exact_counts(cpus: int, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["locks", "--json"] if cpus == 4 else ["locks", "--json", "--cpus", str(cpus)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == expected_locks_json(cpus)
    # JSON mode prints nothing else: no splat text on either stream.
    assert captured.out.count("\n") == 1
    assert captured.err == ""


def test_locks_text_prints_each_splat_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["locks", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    for name in ("default", "lockdep", "rt"):
        assert f"== kernel config: {name} ==" in captured.out
    assert "'invalid_wait_context': 4" in captured.out
    assert "'scheduling_while_atomic': 4" in captured.out
    # Four CPUs hit each problem at one call site: the kernel prints it once.
    assert captured.err.count("[ BUG: Invalid wait context ]") == 1
    assert captured.err.count("BUG: scheduling while atomic:") == 1
    assert "(&zone->lock){....}-{3:3}, at: rmqueue_bulk+0x0/0x0" in captured.err


def _console_script() -> str:
    found = shutil.which("rcukit")
    if found is not None:
        return found
    return str(Path(sys.executable).parent / "rcukit")


def test_installed_console_script() -> None:
    exe = _console_script()
    assert Path(exe).exists()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert (version.returncode, version.stdout) == (0, f"rcukit {rcukit.__version__}\n")
    proc = subprocess.run(
        [exe, "locks", "--json"], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected_locks_json(4)
    bad = subprocess.run([exe, "--bogus"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "unrecognized arguments: --bogus" in bad.stderr
