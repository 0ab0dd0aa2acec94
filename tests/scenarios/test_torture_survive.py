"""Torture and compare on a kernel that reports its own bugs: a tainted run fails,
``--panic-on-warn`` stops at the first report, and ``--soak`` runs the matrix for a wall time."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from clitools import run_cli

from rcukit.errors import KernelPanic
from rcukit.rcu.kvfree.krc import Bnode, Krc
from rcukit.rcu.kvfree.reclaim import KvfreeReclaim
from rcukit.rcu.profiles import PROFILES
from rcukit.scenarios import compare as cmp
from rcukit.scenarios.torture import TortureParams, run_soak, run_torture, torture_config
from rcukit.scenarios.torture.soak import APP_EVERY, soak_matrix
from rcukit.sched.sim import Task


@pytest.fixture
def double_free_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """A reclaim that, once (until the list it yields is cleared), lists a block's first
    pointer twice (a double kvfree_rcu)."""
    orig = KvfreeReclaim.kvfree_rcu_bulk
    done: list[int] = []

    async def bulk(self: KvfreeReclaim, task: Task, krcp: Krc, idx: int, bnode: Bnode) -> None:
        if not done and idx == 0 and bnode.nr_records >= 2:
            done.append(1)
            bnode.records[1] = bnode.records[0]
        await orig(self, task, krcp, idx, bnode)

    monkeypatch.setattr(KvfreeReclaim, "kvfree_rcu_bulk", bulk)
    yield done


def test_torture_fails_a_tainted_run_and_says_why(double_free_once: list[int]) -> None:
    """rcutorture's console check (tools/testing/selftests/rcutorture/bin/parse-console.sh)
    fails a run whose log shows a BUG or WARNING: the KASAN report the reclaim printed taints
    the kernel (B) and the run is a FAILURE, though the kernel went on to the end."""
    r = run_torture(TortureParams(duration=1.0), torture_config())
    assert r.taint == "B" and not r.passed
    assert r.reports == ("BUG: KASAN: double-free or invalid-free in kfree_rcu_work",)
    assert r.reads > 100 and r.updates > 50  # it ran to the end
    lines = r.summary_lines()
    assert "rcu-torture: !!! the kernel is tainted (B): 1 bug report(s)" in lines
    assert lines[-1].startswith("--- End of test: FAILURE")
    assert any(x.startswith("BUG: KASAN: double-free or invalid-free in kfree_rcu_work+0x")
               for y in r.log for x in y.split("\n"))
    doc = r.to_json()
    assert doc["taint"] == "B" and doc["reports"] == list(r.reports) and not doc["passed"]


def test_cli_torture_tainted_exits_1_and_panic_on_warn_panics(double_free_once: list[int]) -> None:
    """``rcukit torture`` exits 1 for a tainted run; with ``--panic-on-warn``
    (``kernel.panic_on_warn``) the report panics: "Kernel panic - not syncing: panic_on_warn
    set ..." (mm/kasan/report.c ``end_report()``, v5.9), and the run stops early."""
    rc, out, _ = run_cli(["torture", "--duration", "1"])
    assert rc == 1 and "the kernel is tainted (B)" in out
    double_free_once.clear()
    rc, out, _ = run_cli(["torture", "--duration", "1", "--panic-on-warn"])
    assert rc == 1
    assert "rcu-torture: kernel: Kernel panic - not syncing: panic_on_warn set ..." in out
    assert "the run stopped early" in out


def test_cli_panic_on_warn_is_sim_mode_only() -> None:
    rc, _, err = run_cli(["torture", "--mode", "app", "--panic-on-warn", "--duration", "0.1"])
    assert rc == 2 and "--panic-on-warn applies to --mode sim only" in err


def test_compare_panic_on_warn_flag_and_tainted_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """``compare --panic-on-warn`` sets the sysctl in every row's config (checked before any
    row runs); every row's JSON has ``tainted``, the kernel's taint letters."""
    seen: list[Any] = []

    def fake(config: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(config.panic_on_warn)
        raise SystemExit(7)

    monkeypatch.setattr(cmp, "run_compare", fake)
    rc, _, _ = run_cli(["compare", "--json", "--panic-on-warn", "--jobs", "1"])
    assert rc == 7 and seen == [True]
    rc, _, err = run_cli(["compare", "--json", "--panic-on-warn", "--scale", "0"])
    assert rc == 2 and seen == [True] and "scale" in err


def test_compare_row_has_tainted() -> None:
    """A compare row of the rt build where the block allocation takes a ``spinlock_t`` under
    ``krcp->lock``: the printed might-sleep report adds TAINT_WARN (``__might_resched``/
    ``___might_sleep``: ``add_taint(TAINT_WARN, LOCKDEP_STILL_OK)``), so ``tainted`` is "W";
    the default build's row reports nothing and is untainted."""
    wl = cmp.Workload().scaled(0.02)
    res = cmp.run_compare(cmp.default_config(), wl, ["nowait"], ["default", "rt"], jobs=1)
    rows = {r["kernel_config"]: r for r in res.to_json()["rows"]}
    assert rows["default"]["tainted"] == "" and rows["default"]["reports_printed"] == 0
    assert rows["rt"]["reports_printed"] > 0 and rows["rt"]["tainted"] == "W"


def test_cli_kernel_panic_exits_1_with_the_panic_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """A panic (``panic_on_warn``) is a failed run, not a misuse: exit status 1 and the panic
    text on stderr. (Compare's rows splat with might-sleep reports, which never panic:
    ``___might_sleep()``/``__might_resched()`` only add TAINT_WARN; ``__schedule_bug()``
    and ``__warn()`` check ``panic_on_warn``, kernel/sched/core.c and kernel/panic.c.)"""

    def panics(*args: Any, **kwargs: Any) -> Any:
        raise KernelPanic("Kernel panic - not syncing: scheduling while atomic\nCall Trace:")

    monkeypatch.setattr(cmp, "run_compare", panics)
    rc, out, err = run_cli(["compare", "--json", "--panic-on-warn", "--jobs", "1"])
    assert rc == 1 and out == ""
    assert err.startswith("rcukit compare: Kernel panic - not syncing: scheduling while atomic")


# -- the soak -------------------------------------------------------------------------------------


def test_soak_matrix_covers_every_profile_variant_and_build() -> None:
    m = soak_matrix(0)
    assert len(m) == len(set(m)) == len(PROFILES) * 6 * 3
    assert m == soak_matrix(0) and m != soak_matrix(1)


def test_soak_runs_the_matrix_with_app_runs_and_sums_up() -> None:
    """A short soak (a fake clock: 12 runs): sim runs walk the matrix with hotplug and 30 %
    faults, an app run after every 8 sim runs, seeds advance by one, and the summary gives the
    command, runs, reads, updates, failures and taint."""
    ticks = iter(range(100))
    res = run_soak(12, TortureParams(duration=0.3, nfakewriters=1), seed=5,
                   command="rcukit torture --soak 12", clock=lambda: float(next(ticks)))
    assert [r.seed for r in res.runs] == list(range(5, 5 + len(res.runs)))
    assert len(res.runs) == 11  # the clock read before each run, and once at the start
    modes = [r.mode for r in res.runs]
    assert modes.index("app") == APP_EVERY and modes.count("app") == 1
    sims = [r for r in res.runs if r.mode == "sim"]
    assert [(r.profile, r.variant, r.kernel_config) for r in sims] == soak_matrix(5)[:len(sims)]
    assert all("--onoff-interval 0.05 --fault-rate 0.3" in r.command for r in res.runs)
    assert res.passed, res.summary_lines()
    t = res.totals()
    assert t["runs"] == 11 and t["failures"] == 0 and t["tainted_runs"] == 0
    assert t["reads"] == sum(r.reads for r in res.runs) > 0 and t["updates"] > 0
    lines = res.summary_lines()
    assert lines[0] == "soak: rcukit torture --soak 12"
    assert lines[1].startswith("soak: 11 runs (10 sim, 1 app) in ")
    assert lines[2].startswith(f"soak: reads {t['reads']}  updates {t['updates']}  failures 0")
    assert lines[-1] == "--- End of soak: SUCCESS"


def test_cli_soak_checks_its_argument_first() -> None:
    for bad in ("0", "-1", "nan", "inf", "1e9", "x"):
        rc, out, err = run_cli(["torture", "--soak", bad])
        assert rc == 2 and out == "" and "--soak" in err, (bad, err)
    for extra in (["--variant", "nowait"], ["--mode", "app"], ["--profile", "v6.1"],
                  ["--kernel-config", "rt"], ["--kvfree-torture"], ["--cpus", "2"]):
        rc, out, err = run_cli(["torture", "--soak", "1", *extra])
        assert rc == 2 and out == "" and "cannot be combined with --soak" in err, extra


def test_cli_soak_interrupted_sums_up_the_runs_that_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C during a soak (here: during its third run) prints the summary of the runs that
    finished, ends with INTERRUPTED and exits 130; ``--json`` says ``"interrupted": true``."""
    from rcukit.scenarios.torture import soak

    real = soak.run_torture

    def ctrl_c_in_run(n: int) -> Any:
        calls = itertools.count(1)

        def run_torture(*a: Any, **k: Any) -> Any:
            if next(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **k)

        return run_torture

    for json_flag in ([], ["--json"]):
        monkeypatch.setattr(soak, "run_torture", ctrl_c_in_run(3))
        rc, out, _ = run_cli(["torture", "--soak", "60", "--duration", "0.3", *json_flag])
        assert rc == 130
        if json_flag:
            doc = json.loads(out)
            assert doc["interrupted"] and not doc["passed"] and doc["runs"] == 2
            continue
        lines = out.strip().split("\n")
        assert [x.split(":")[1] for x in lines[:2]] == [" run 1", " run 2"]
        assert lines[3].startswith("soak: 2 runs (2 sim, 0 app) in ")
        assert lines[-1].startswith("--- End of soak: INTERRUPTED after ")
        assert lines[-1].endswith(" of 60 s")


def test_cli_short_soak(double_free_once: list[int]) -> None:
    """A real three-second soak from the command line: one line per run, then the summary.
    The planted double free taints one run, which the summary names with its command."""
    rc, out, _ = run_cli(["torture", "--soak", "3", "--duration", "1", "--nfakewriters", "1"])
    lines = out.strip().split("\n")
    assert rc == 1
    assert lines[0].startswith("soak: run 1: rcukit torture --mode sim --seed 0 ")
    [bad] = [x for x in lines if ": FAILED (BUG: KASAN: double-free" in x]
    command = bad.split(": ", 3)[2]
    assert "soak: rcukit torture --soak 3 --duration 1" in lines
    assert any(x.startswith(f"soak: FAILED: {command}: BUG: KASAN: double-free") for x in lines)
    assert "failed runs 1  tainted runs 1" in next(x for x in lines if "reads" in x)
    assert lines[-1] == "--- End of soak: FAILURE"
    rc, out, _ = run_cli(["torture", "--soak", "1", "--duration", "0.3", "--seed", "40",
                          "--json"])
    doc = json.loads(out)
    assert rc == 0 and doc["passed"] and doc["failures"] == 0 and doc["runs"] >= 1
    assert doc["command"] == "rcukit torture --soak 1 --duration 0.3 --seed 40"
