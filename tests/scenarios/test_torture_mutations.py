"""Mutation testing of the safety net: plant one known RCU bug at a time, torture must fail.

Each mutant is planted by monkeypatching (never shipped) and the run goes through the same
path as ``rcukit torture`` (:func:`rcukit.cli.torture.run_from_args` on parsed arguments), at
the command's default duration (10 simulated seconds in sim mode), except two documented
short ones: the app-mode mutant runs ``--duration 2`` (two real seconds: app mode's default is
ten seconds of wall time) and the v6.3 block mutant runs the kvfree torture for two simulated
seconds (its flood costs about a wall second per simulated one). Each must
end in ``FAILURE``, and the same command without the mutant must end in ``SUCCESS``, so the
failure is the mutant's.

CI runs one seed per mutant. The long run is::

    RCUKIT_MUTATION_SEEDS=10 pytest -s tests/scenarios/test_torture_mutations.py

which runs seeds 0..9 per mutant (and per clean baseline), prints each mutant's kill rate and
requires 100 %.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from rcukit.app.readers import Readers
from rcukit.cli import build_parser
from rcukit.cli import torture as torture_cli
from rcukit.rcu.gpcore import GpCore
from rcukit.rcu.kvfree.core import KfreeRcuCpu
from rcukit.rcu.kvfree.sim import KvfreeRcu
from rcukit.rcu.segcblist import RcuHead, SegCbList
from rcukit.rcu.tree import RcuCallbacks, RcuState
from rcukit.rcu.tree_exp import RcuExp
from rcukit.rcu.tree_plugin import RcuReaders
from rcukit.scenarios.torture import TortureResult
from rcukit.sched.sim import Task

SEEDS = int(os.environ.get("RCUKIT_MUTATION_SEEDS", "1"))
#: The command lines the mutants run under (``rcukit torture`` + these).
SIM: tuple[str, ...] = ()
PREEMPT = ("--preempt-rcu",)
#: The kvfree torture floods ~16000 kvfree_rcu() a simulated second: two seconds (about as
#: many wall seconds) are enough, and ten would make this the slowest test of the suite.
V6_3_KVFREE = ("--profile", "v6.3", "--kvfree-torture", "--duration", "2")
APP = ("--mode", "app", "--duration", "2")


def torture(argv: tuple[str, ...], seed: int) -> TortureResult:
    """``rcukit torture ARGV --seed SEED`` as the command runs it, minus the printing."""
    args = build_parser().parse_args(["torture", *argv, "--seed", str(seed)])
    return torture_cli.run_from_args(args)


# ----------------------------------------------------------------------------- the mutants


def gp_ends_early(mp: pytest.MonkeyPatch) -> None:
    """``rcu_gp_init`` forgets one holdout CPU inside a read section (and the idle ones)."""
    orig = RcuState.rcu_gp_init

    def rcu_gp_init(self: RcuState, task: Task) -> None:
        orig(self, task)
        self._fqs_idle_pending = False
        cpus = self.kernel.sim.cpus
        for cpu_id in sorted(self._holdouts.cpus):
            cur = cpus[cpu_id].current
            if cur is not None and cur.rcu_read_nesting:
                self._holdouts.cpus.discard(cpu_id)
                self._rdp[cpu_id].qs_pending = False
                return

    mp.setattr(RcuState, "rcu_gp_init", rcu_gp_init)


def tick_qs_in_reader(mp: pytest.MonkeyPatch) -> None:
    """``rcu_sched_clock_irq`` reports a QS without looking at ``rcu_preempt_depth()``."""
    orig = RcuState.rcu_sched_clock_irq

    def rcu_sched_clock_irq(self: RcuState, task: Task, voluntary: bool) -> None:
        nesting = task.rcu_read_nesting
        task.rcu_read_nesting = 0
        try:
            orig(self, task, voluntary)
        finally:
            task.rcu_read_nesting = nesting

    mp.setattr(RcuState, "rcu_sched_clock_irq", rcu_sched_clock_irq)


def preempted_reader_forgotten(mp: pytest.MonkeyPatch) -> None:
    """``rcu_preempt_ctxt_queue`` does nothing: a preempted reader blocks no grace period."""

    def rcu_preempt_ctxt_queue(self: RcuReaders, task: Task, rdp: Any) -> None:
        return None

    mp.setattr(RcuReaders, "rcu_preempt_ctxt_queue", rcu_preempt_ctxt_queue)


def expedited_returns_at_once(mp: pytest.MonkeyPatch) -> None:
    """``synchronize_rcu_expedited()`` returns without an expedited grace period."""

    async def synchronize_rcu_expedited(self: RcuExp, task: Task) -> None:
        await task.sync()

    mp.setattr(RcuExp, "synchronize_rcu_expedited", synchronize_rcu_expedited)


def poll_always_done(mp: pytest.MonkeyPatch) -> None:
    """``poll_state_synchronize_rcu*()`` always say the grace period is over."""
    mp.setattr(GpCore, "poll", lambda self, cookie: True)
    mp.setattr(GpCore, "poll_full", lambda self, old: True)


def kvfree_frees_at_once(mp: pytest.MonkeyPatch) -> None:
    """``kvfree_rcu()`` frees the object at once (counted as a normal reclaim)."""

    async def kvfree_rcu(self: KvfreeRcu, task: Task, ptr: int | None,
                         head: int | None = None) -> None:
        if ptr:
            await self.mm.kvfree(task, ptr)
            self.counters.pending += 1
            self.counters.note_freed(1)

    mp.setattr(KvfreeRcu, "kvfree_rcu", kvfree_rcu)
    mp.setattr(KvfreeRcu, "kvfree_rcu_mightsleep", kvfree_rcu)


def qsbr_readers_ignored(mp: pytest.MonkeyPatch) -> None:
    """App mode: a grace period ends without the online QSBR workers' quiescent states."""

    def gp_may_end(self: Readers) -> bool:
        old = self.old
        return old is None or old.count == 0

    mp.setattr(Readers, "gp_may_end", gp_may_end)


def barrier_returns_early(mp: pytest.MonkeyPatch) -> None:
    """``rcu_barrier()`` returns without waiting for the callbacks queued before it."""

    async def rcu_barrier(self: RcuCallbacks, task: Task) -> None:
        await task.sync()

    mp.setattr(RcuCallbacks, "rcu_barrier", rcu_barrier)


def callback_invoked_twice(mp: pytest.MonkeyPatch) -> None:
    """``rcu_do_batch`` invokes every ready callback twice."""
    orig = SegCbList.extract_done

    def extract_done(self: SegCbList, limit: int | None = None) -> list[RcuHead]:
        return [h for h in orig(self, limit) for _ in (0, 1)]

    mp.setattr(SegCbList, "extract_done", extract_done)


def block_freed_before_gp_snapshot(mp: pytest.MonkeyPatch) -> None:
    """v6.3 ``kvfree_rcu_drain_ready()`` frees blocks whose ``gp_snap`` has not completed."""
    orig = KfreeRcuCpu.kvfree_rcu_drain_ready

    def kvfree_rcu_drain_ready(self: KfreeRcuCpu[Any, Any, Any],
                               poll: Callable[[int], bool]) -> Any:
        return orig(self, lambda snap: True)

    mp.setattr(KfreeRcuCpu, "kvfree_rcu_drain_ready", kvfree_rcu_drain_ready)


class Mutant(NamedTuple):
    plant: Callable[[pytest.MonkeyPatch], None]
    argv: tuple[str, ...]


MUTANTS: dict[str, Mutant] = {
    "gp_ends_early": Mutant(gp_ends_early, SIM),
    "tick_qs_in_reader": Mutant(tick_qs_in_reader, PREEMPT),
    "preempted_reader_forgotten": Mutant(preempted_reader_forgotten, PREEMPT),
    "expedited_returns_at_once": Mutant(expedited_returns_at_once, SIM),
    "poll_always_done": Mutant(poll_always_done, SIM),
    "kvfree_frees_at_once": Mutant(kvfree_frees_at_once, SIM),
    "qsbr_readers_ignored": Mutant(qsbr_readers_ignored, APP),
    "barrier_returns_early": Mutant(barrier_returns_early, SIM),
    "callback_invoked_twice": Mutant(callback_invoked_twice, SIM),
    "block_freed_before_gp_snapshot": Mutant(block_freed_before_gp_snapshot, V6_3_KVFREE),
}


@pytest.mark.parametrize("argv", sorted({m.argv for m in MUTANTS.values()}), ids=" ".join)
def test_torture_passes_without_a_mutant(argv: tuple[str, ...]) -> None:
    """The commands the mutants run under pass on the stock kernel (every seed used)."""
    for seed in range(SEEDS):
        r = torture(argv, seed)
        assert r.passed, "\n".join(r.summary_lines())


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_torture_kills_the_mutant(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """rcutorture's purpose (Documentation/RCU/torture.rst): a broken RCU makes it report
    FAILURE. Each planted bug must be caught by ``rcukit torture`` alone."""
    m = MUTANTS[name]
    m.plant(monkeypatch)
    killed = 0
    why: list[str] = []
    for seed in range(SEEDS):
        r = torture(m.argv, seed)
        if not r.passed:
            killed += 1
            why.append(r.errors[0] if r.errors else f"failures={r.failures} leaks={r.leaks}")
    print(f"\nmutant {name}: killed {killed}/{SEEDS} ({100 * killed // SEEDS} %) "
          f"with rcukit torture {' '.join(m.argv)}; first report: {why[:1]}")
    assert killed == SEEDS, f"{name} survived {SEEDS - killed} of {SEEDS} seeds"
