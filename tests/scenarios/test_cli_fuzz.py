"""Every subcommand's command line, fuzzed: a user's typo is exit 2 with a message, never a
traceback, and nothing is simulated before the arguments are known to be good.

The simulation entry points are replaced by a sentinel, so an accepted command line costs
nothing: the property is about parsing and checking, which must finish before any run starts.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcukit.cli import main


class _WouldRun(Exception):
    """Raised in place of a simulation: the command line was accepted."""


def _sentinel(*args: Any, **kwargs: Any) -> Any:
    raise _WouldRun


@pytest.fixture
def no_runs(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Output names the fuzz draws (out.png, "-", "a=b") land in a scratch directory. Never a
    # system path: the suite may run as root, and a trace file opened at /bin/sh once
    # truncated the machine's shell.
    monkeypatch.chdir(tmp_path_factory.mktemp("cli_fuzz"))
    import rcukit.cli.locks as locks_cli
    import rcukit.cli.rcuscale as rcuscale_cli
    import rcukit.cli.torture as torture_cli
    from rcukit.scenarios import compare as cmp
    from rcukit.scenarios import sweep as sw

    monkeypatch.setattr(cmp, "run_compare", _sentinel)
    monkeypatch.setattr(rcuscale_cli, "run_rcuscale", _sentinel)
    monkeypatch.setattr(torture_cli, "run_torture", _sentinel)
    monkeypatch.setattr(torture_cli, "run_soak", _sentinel)
    monkeypatch.setattr(sw, "run_sweep", _sentinel)
    monkeypatch.setattr(locks_cli, "run_nesting", _sentinel)


#: Flags each subcommand takes, and values that are good, bad, or odd.
_FLAGS = {
    "compare": ["--variants", "--configs", "--profiles", "--profile", "--scale", "--seed",
                "--jobs", "--plot", "--trace", "--ftrace", "--config", "--plugin", "--json",
                "--panic-on-warn", "--format", "--zoneinfo", "--from-host-zoneinfo"],
    "rcuscale": ["--cpus", "--kfree-nthreads", "--kfree-alloc-num", "--kfree-loops",
                 "--kfree-mult", "--profile", "--variant", "--seed", "--json"],
    "torture": ["--mode", "--duration", "--nreaders", "--nwriters", "--onoff-interval",
                "--fault-rate", "--stall-cpu", "--kernel-config", "--profile", "--cpus",
                "--variant", "--json", "--soak", "--panic-on-warn"],
    "sweep": ["--out", "--jobs", "--workers", "--plot", "--x", "--y", "--figure", "--where",
              "--resume", "--json"],
    "locks": ["--cpus", "--seed", "--json", "--format"],
}
_VALUES = st.sampled_from([
    "", "0", "1", "-1", "2", "0.5", "1e-9", "inf", "nan", "-inf", "1e300", "abc", "rfc",
    "v9.9", "nowait", "nowait,bogus", ",", "lockdep", "rt", "/nonexistent/x.json", "x.3.5",
    "out.png", "MODULE:ATTR", "a=b", "sim", "app", "\x00", "-", "--", "☃", "csv", "plain",
    "markdown", "json", "/proc/zoneinfo", "sub/dir/x.txt", ".",
])


@st.composite
def _argv(draw: st.DrawFn) -> list[str]:
    cmd = draw(st.sampled_from(sorted(_FLAGS)))
    argv = [cmd]
    for _ in range(draw(st.integers(0, 4))):
        argv.append(draw(st.sampled_from(_FLAGS[cmd])))
        if draw(st.booleans()):
            argv.append(draw(_VALUES))
    return argv


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=_argv())
def test_any_command_line_is_exit_2_or_accepted_never_a_traceback(
    no_runs: None, argv: list[str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except _WouldRun:
            return  # accepted: the run would start now
        except SystemExit as exc:
            rc = int(exc.code or 0)
    assert rc in (0, 2), (argv, rc, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if rc == 2:
        assert "error:" in err.getvalue(), (argv, err.getvalue())
