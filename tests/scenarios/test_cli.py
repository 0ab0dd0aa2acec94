"""The ``rcukit`` command: version, help, misuse exit codes, and ``rcukit locks``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clitools import run_cli
from simtools import ROOT

import rcukit
from rcukit.cli import main
from rcukit.panic import symbol_frame


def _zero() -> dict[str, int]:
    return {"invalid_wait_context": 0, "rcu_stall": 0, "scheduling_while_atomic": 0,
            "sleeping_in_atomic": 0}


def expected_locks_json(cpus: int, seed: int = 0) -> dict[str, object]:
    return {
        "schema": 1,  # the JSON schema version every command's --json carries
        "cpus": cpus,
        "seed": seed,
        "splats": {
            "default": _zero(),
            "lockdep": {**_zero(), "invalid_wait_context": cpus},
            # rt_spin_lock()'s might-sleep check; the raw lock serializes the CPUs, so the
            # spinlock_t is never contended and nobody schedules (kernel.md 8.3; this said
            # scheduling_while_atomic before the RT reports followed the kernel).
            "rt": {**_zero(), "sleeping_in_atomic": cpus},
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
    assert out.startswith("Usage: rcukit ")  # rich-argparse's heading
    assert "locks" in out
    assert "--version" in out


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("Usage: rcukit ")


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
    # The sentences follow the table, folded to the terminal's width.
    said = " ".join(captured.out.split())
    assert "default: 4 CPUs nested the locks; nothing to report on this build." in said
    assert ('lockdep: 4 CPUs nested the locks; would report "BUG: Invalid wait context" 4 times, '
            "1 printed.") in said
    assert ('rt: 4 CPUs nested the locks; would report "BUG: sleeping function called from '
            'invalid context" 4 times, 1 printed.') in said
    # Four CPUs hit each problem; the kernel prints it once: lockdep is one-shot
    # (debug_locks_off()), might-sleep reports are rate-limited to one per second (prev_jiffy).
    assert captured.err.count("[ BUG: Invalid wait context ]") == 1
    assert captured.err.count(
        "BUG: sleeping function called from invalid context at kernel/locking/rtmutex.c:969"
    ) == 1
    assert "BUG: scheduling while atomic" not in captured.err
    # Kernel symbols with offsets fixed per symbol (rcukit.panic.symbol_frame), never a
    # Python line: the text does not change when the model's code moves.
    assert f"(&zone->lock){{....}}-{{3:3}}, at: {symbol_frame('rmqueue_bulk')}" in captured.err
    assert ".py:" not in captured.err.split("Call Trace:")[1]


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


def test_python_dash_m_rcukit_runs_the_command() -> None:
    for module in ("rcukit", "rcukit.cli"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "locks", "--json", "--cpus", "2"],
            capture_output=True, text=True, check=False, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == expected_locks_json(2)
    bad = subprocess.run([sys.executable, "-m", "rcukit", "nosuch"], capture_output=True,
                         text=True, check=False, timeout=60)
    assert bad.returncode == 2 and "Usage: rcukit " in bad.stderr


def test_a_subcommand_that_cannot_be_imported_is_not_silently_dropped() -> None:
    # None in sys.modules makes that import fail, as a missing file would.
    code = "import sys; sys.modules['rcukit.scenarios.sweep'] = None; import rcukit.cli"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr and "rcukit.scenarios.sweep" in proc.stderr


def test_ctrl_c_inside_a_nursery_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rcukit torture --mode app`` interrupted: Trio delivers the KeyboardInterrupt to a task
    in a nursery, so it leaves ``trio.run`` inside exception groups; it printed the groups'
    traceback and exited 1 instead of "interrupted" and 130 like the other commands."""
    import trio

    import rcukit.cli.torture as torture_cli

    def interrupted_in_a_nursery(args: Any) -> Any:
        async def main() -> None:
            async def worker() -> None:
                raise KeyboardInterrupt

            async with trio.open_nursery() as outer:
                async with trio.open_nursery() as inner:
                    inner.start_soon(worker)
                outer.cancel_scope.cancel()

        trio.run(main)

    monkeypatch.setattr(torture_cli, "run_from_args", interrupted_in_a_nursery)
    rc, out, err = run_cli(["torture", "--mode", "app", "--duration", "1"])
    assert (rc, out, err) == (130, "", "rcukit torture: interrupted\n")


def test_an_error_beside_the_interrupt_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a group of nothing but KeyboardInterrupts means "interrupted"; a real error that
    came with it still surfaces."""
    import rcukit.cli.torture as torture_cli

    def both(args: Any) -> Any:
        raise BaseExceptionGroup("two", [KeyboardInterrupt(), ValueError("bug")])

    monkeypatch.setattr(torture_cli, "run_from_args", both)
    with pytest.raises(BaseExceptionGroup) as info:
        run_cli(["torture", "--mode", "app", "--duration", "1"])
    assert info.value.subgroup(ValueError) is not None


# -- compare --plugin: every mistake exits 2 before a simulation starts ------------------------

PLUGIN_MODULE = "rcukit_cli_test_plugin"
PLUGIN_SOURCE = '''
from rcukit.rcu.kvfree.variants import PageCacheSource

class Mempool(PageCacheSource):
    name = "mempool-test"

class Other(PageCacheSource):
    name = "other-test"

MEMPOOL = Mempool()
SOURCES = [Mempool, Other()]
NOT_A_SOURCE = 42
A_STRING = "mempool"
EMPTY = []

class NeedsArgs(PageCacheSource):
    def __init__(self, size):
        self.size = size

class Nameless:
    gfp = 0
    description = "no name"
    defers_to_worker = False
    async def get_page(self, task, mm):
        return None

class BadName(PageCacheSource):
    name = "two words"

class Shadow(PageCacheSource):
    name = "nowait"

MIXED = [MEMPOOL, 7]
'''


@pytest.fixture
def plugin_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    (tmp_path / "rcukit_cli_test_raises.py").write_text("raise RuntimeError('boom')\n",
                                                       encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield PLUGIN_MODULE
    for name in (PLUGIN_MODULE, "rcukit_cli_test_raises"):
        sys.modules.pop(name, None)


class _Ran(Exception):
    """Raised by the stand-in for run_compare(): the command got as far as running."""


def _no_run(monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]) -> None:
    from rcukit.scenarios import compare as cmp

    def fake(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise _Ran

    monkeypatch.setattr(cmp, "run_compare", fake)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        ("nocolon", "--plugin 'nocolon': expected MODULE:ATTR"),
        (":MEMPOOL", "--plugin ':MEMPOOL': expected MODULE:ATTR"),
        (f"{PLUGIN_MODULE}:", f"--plugin '{PLUGIN_MODULE}:': expected MODULE:ATTR"),
        ("rcukit_no_such_module_xyz:X",
         "cannot import module 'rcukit_no_such_module_xyz': ModuleNotFoundError"),
        ("rcukit_cli_test_raises:X",
         "cannot import module 'rcukit_cli_test_raises': RuntimeError: boom"),
        (f"{PLUGIN_MODULE}:MISSING",
         f"module '{PLUGIN_MODULE}' has no attribute 'MISSING'"),
        (f"{PLUGIN_MODULE}:Mempool.missing",
         f"module '{PLUGIN_MODULE}' has no attribute 'Mempool.missing'"),
        (f"{PLUGIN_MODULE}:NOT_A_SOURCE", "42 is not a BlockPageSource"),
        (f"{PLUGIN_MODULE}:A_STRING", "'mempool' is not a BlockPageSource"),
        (f"{PLUGIN_MODULE}:EMPTY", "[] holds no block sources"),
        (f"{PLUGIN_MODULE}:MIXED", "7 is not a BlockPageSource"),
        (f"{PLUGIN_MODULE}:Nameless", "is not a BlockPageSource"),
        (f"{PLUGIN_MODULE}:NeedsArgs", "cannot instantiate NeedsArgs() with no arguments"),
        (f"{PLUGIN_MODULE}:BadName", "variant name 'two words' is invalid"),
        # a name given twice failed at the first row's boot, advising replace=True
        (f"{PLUGIN_MODULE}:MEMPOOL",
         f"--plugin '{PLUGIN_MODULE}:MEMPOOL': variant 'mempool-test' is already given by "
         f"--plugin '{PLUGIN_MODULE}:MEMPOOL'; each variant name may be given once"),
        (f"{PLUGIN_MODULE}:SOURCES", "variant 'mempool-test' is already given by"),
        (f"{PLUGIN_MODULE}:Shadow", "variant 'nowait' is already a built-in variant"),
    ],
)
def test_compare_bad_plugin_exits_2_before_running(
    plugin: str, message: str, plugin_module: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    assert main(["compare", "--json", "--plugin", f"{PLUGIN_MODULE}:MEMPOOL",
                 "--plugin", plugin]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("rcukit compare: error: ")
    assert message in captured.err
    assert captured.out == "" and calls == []


def test_compare_bad_entry_point_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.metadata as md

    group = "rcukit.block_sources"
    eps = md.EntryPoints([md.EntryPoint("broken", "rcukit_no_such_module_xyz:X", group)])

    def entry_points(*, group: str) -> md.EntryPoints:
        return eps if group == "rcukit.block_sources" else md.EntryPoints([])

    monkeypatch.setattr(md, "entry_points", entry_points)
    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    assert main(["compare", "--json"]) == 2
    err = capsys.readouterr().err
    assert f"entry point 'broken' (rcukit_no_such_module_xyz:X) in group {group}" in err
    assert "ModuleNotFoundError" in err and calls == []


def test_compare_passes_block_sources_only_when_there_are_some(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    with pytest.raises(_Ran):
        main(["compare", "--json", "--variants", "nowait"])
    assert "block_sources" not in calls[-1]
    with pytest.raises(_Ran):
        main(["compare", "--json", "--variants", "nowait,other-test",
              "--plugin", f"{plugin_module}:SOURCES"])
    names = [s.name for s in calls[-1]["block_sources"]]
    assert names == ["mempool-test", "other-test"]


def test_compare_unknown_variant_still_named_with_plugins(
    plugin_module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    assert main(["compare", "--variants", "nosuch", "--plugin", f"{plugin_module}:MEMPOOL"]) == 2
    assert "unknown variant 'nosuch'; allowed: fast-try, nowait, gfp-zero, raw-zone-lock, " \
        "page-cache, nolock, mempool-test" in capsys.readouterr().err
    assert calls == []


def test_compare_bad_jobs_exits_2_before_running(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    for bad in ("0", "-3", "1.5", ""):
        rc, out, err = run_cli(["compare", "--json", "--jobs", bad])
        assert rc == 2 and out == "" and "argument --jobs:" in err
    assert calls == []


def test_compare_jobs_defaults_to_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    with pytest.raises(_Ran):
        main(["compare", "--json"])
    with pytest.raises(_Ran):
        main(["compare", "--json", "--jobs", "1"])
    assert [c["jobs"] for c in calls] == [3, 1]


def test_compare_plugin_rows_in_workers_match_inline(plugin_module: str) -> None:
    """Workers rebuild the sources from the --plugin specs (sys.path reaches them)."""
    args = ["compare", "--json", "--plugin", f"{plugin_module}:SOURCES", "--variants",
            "mempool-test,other-test", "--configs", "lockdep", "--scale", "0.01"]
    rc1, out1, err1 = run_cli([*args, "--jobs", "1"])
    rc2, out2, err2 = run_cli([*args, "--jobs", "2"])
    assert rc1 == rc2 == 0, err1 + err2
    assert out1 == out2
    rows = json.loads(out2)["rows"]
    assert [r["variant"] for r in rows] == ["mempool-test", "other-test"]


def test_the_readme_mempool_variant_runs_in_worker_processes() -> None:
    """examples/mempool_plugin.Mempool holds a WeakKeyDictionary, so it cannot be pickled:
    ``--jobs 2`` must give the same bytes as ``--jobs 1`` all the same."""
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "examples"), str(ROOT)]))
    outs = [
        subprocess.run(
            [sys.executable, "-m", "rcukit", "compare", "--plugin", "mempool_plugin:Mempool",
             "--variants", "mempool,nowait", "--configs", "lockdep", "--scale", "0.02",
             "--json", "--jobs", jobs],
            capture_output=True, text=True, env=env, timeout=300, check=True,
        ).stdout
        for jobs in ("1", "2")
    ]
    assert outs[0] == outs[1]
    assert [r["variant"] for r in json.loads(outs[1])["rows"]] == ["mempool", "nowait"]


def test_a_user_mempool_variant_runs_in_compare_from_the_command_line() -> None:
    """The README's user variant (examples/mempool_plugin.py), loaded with ``--plugin`` in a
    real ``python -m rcukit compare`` process, runs beside a built-in: its rows are there, its
    block pages came from its reserve (allocations attempted, none failed, no lockdep report),
    and every object queued was freed after its grace period."""
    import json
    import os
    import subprocess
    import sys

    root = ROOT
    env = dict(os.environ, PYTHONPATH=str(root / "examples"))
    out = subprocess.run(
        [sys.executable, "-m", "rcukit", "compare", "--plugin", "mempool_plugin:Mempool",
         "--variants", "mempool,nowait", "--configs", "lockdep", "--scale", "0.05", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )
    rows = {r["variant"]: r for r in json.loads(out.stdout)["rows"]}
    assert set(rows) == {"mempool", "nowait"}
    mine = rows["mempool"]
    assert mine["block_alloc_attempts"] > 0
    assert mine["block_alloc_failures"] == 0
    assert mine["splat_sites"] == 0
    assert mine["objects_freed"] == mine["kvfree_calls"] == rows["nowait"]["kvfree_calls"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["compare", "--ftrace", "/nonexistent/x.txt"], "argument --ftrace:"),
        (["compare", "--trace", "/nonexistent/x.json"], "argument --trace:"),
        (["compare", "--plot", "out.3.5"], "argument --plot:"),
        (["compare", "--plot", "."], "argument --plot:"),
        (["compare", "--scale", "inf"], "argument --scale:"),
        (["compare", "--scale", "nan"], "argument --scale:"),
        (["compare", "--profiles", "rfc,v9.9"], "'v9.9'"),
        (["compare", "--profiles", "rfc", "--profile", "v5.9"], "--profiles"),
        (["sweep", "examples/sweep-small.toml", "--out", "/nonexistent/r.jsonl"],
         "argument --out:"),
        (["torture", "--onoff-interval", "1e-9"], "argument --onoff-interval:"),
        (["torture", "--duration", "0"], "argument --duration:"),
        (["torture", "--duration", "inf"], "argument --duration:"),
        (["torture", "--fault-rate", "1.5"], "argument --fault-rate:"),
    ],
)
def test_bad_paths_and_numbers_exit_2_before_running(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], named: str
) -> None:
    """An output file is written after minutes of simulation: a path that cannot be written,
    a plot name matplotlib cannot pick a format from, an infinite scale or a hotplug interval
    shorter than a jiffy are refused when the command line is read (exit 2), not after the
    run with a traceback."""
    calls: list[dict[str, Any]] = []
    _no_run(monkeypatch, calls)
    monkeypatch.chdir(ROOT)
    rc, out, err = run_cli(argv)
    assert rc == 2, err
    assert out == "" and named in err and "Traceback" not in err
    assert calls == []


@pytest.mark.skipif(not os.path.exists("/proc/zoneinfo"), reason="the host has no /proc")
def test_trace_into_a_file_that_refuses_writes_exits_2_before_any_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``/proc/zoneinfo`` passes the output-path checks as root (it exists and access() says
    writable) but opening it to append fails with EINVAL: an error naming it, exit 2, before
    the rows (the CLI fuzz found the traceback)."""
    assert main(["compare", "--trace", "/proc/zoneinfo", "--scale", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "cannot write '/proc/zoneinfo'" in err and "Traceback" not in err
