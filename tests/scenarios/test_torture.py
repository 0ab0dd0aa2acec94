"""rcutorture in both modes, short: what CI runs (the long runs are manual, see the report).

Sim mode runs a few simulated seconds (well under a second of wall time each); app mode runs
about a second of real time. The broken builds prove the checks catch a real RCU bug.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from torture_broken import BROKEN_RCU, BrokenAppTorture

from rcukit.cli import build_parser, main
from rcukit.cli import torture as torture_cli
from rcukit.config import KernelConfig
from rcukit.scenarios.torture import (
    RCU_TORTURE_PIPE_LEN,
    TortureParams,
    TortureResult,
    full_gps_since,
    run_app_torture,
    run_torture,
    torture_config,
)

JSON_KEYS = {
    "reader_pipe", "reader_batch", "failures", "splats", "objects_queued", "objects_freed",
    "leaks", "use_after_free", "double_free",
}


def _healthy(r: TortureResult, min_ops: int = 100) -> None:
    """``min_ops``: reads and updates the run must have made; app runs go for a span of real
    time, so on a loaded machine they make fewer (a floor that still proves they ran)."""
    assert r.passed, "\n".join(r.summary_lines())
    assert r.failures == r.leaks == r.use_after_free == r.double_free == 0
    assert not any(r.reader_pipe[2:]) and r.rtmbe == 0
    assert r.reads > min_ops and r.updates > min_ops
    # Every element went round the whole pipe and back to the free list.
    assert r.rta == r.rtf and r.free_block_circulation[0] == r.rta
    assert r.free_block_circulation[RCU_TORTURE_PIPE_LEN - 1] == r.rta
    assert r.objects_queued == r.objects_freed == r.rta
    assert len(r.reader_pipe) == len(r.reader_batch) == RCU_TORTURE_PIPE_LEN + 1


def test_sim_torture_passes_and_reports_like_rcutorture() -> None:
    r = run_torture(TortureParams(duration=1.5))
    _healthy(r)
    assert r.reader_pipe[1] > 0, "some reads must overlap an update"
    assert all(r.fake_ops[op] > 0 for op in ("sync", "exp_sync", "cond_sync", "poll"))
    assert r.kvfree["calls"] > 0 and r.kvfree["objects_freed"] == r.kvfree["calls"]
    lines = r.summary_lines()
    assert lines[-4].startswith("rcu-torture: Reader Pipe:  ")
    assert lines[-3].startswith("rcu-torture: Reader Batch:  ")
    assert lines[-2].startswith("rcu-torture: Free-Block Circulation:  ")
    assert " ver: " in lines[-5] and " rtaf: " in lines[-5] and "rtc: " in lines[-5]
    assert lines[-1].startswith("--- End of test: SUCCESS: ")
    assert r.sim_ns >= 1_500_000_000


@pytest.mark.parametrize("seed", [1, 2])
def test_sim_torture_survives_hotplug_and_faults(seed: int) -> None:
    r = run_torture(
        TortureParams(duration=1.5, onoff_interval=0.1, fault_rate=0.2),
        torture_config(seed=seed),
    )
    _healthy(r)
    assert r.onoff["offline_ok"] > 0 and r.onoff["online_ok"] > 0
    assert r.rtaf > 0, "slab fault injection must have failed some allocations"


@pytest.mark.parametrize("kernel_config", ["lockdep", "rt"])
def test_sim_torture_other_builds(kernel_config: str) -> None:
    r = run_torture(TortureParams(duration=1), torture_config(kernel_config=kernel_config))
    _healthy(r)
    assert r.settings["kernel_config"] == kernel_config


def test_sim_torture_is_deterministic() -> None:
    a = run_torture(TortureParams(duration=0.5), torture_config(seed=7))
    b = run_torture(TortureParams(duration=0.5), torture_config(seed=7))
    assert a.to_json() | {"wall_s": 0} == b.to_json() | {"wall_s": 0}


def test_sim_torture_catches_a_grace_period_that_ends_a_reader_early() -> None:
    r = run_torture(TortureParams(duration=1), subsystems=BROKEN_RCU)
    assert not r.passed
    assert any(r.reader_pipe[2:]) and r.failures >= sum(r.reader_pipe[2:])
    assert r.use_after_free > 0
    assert r.summary_lines()[-1].startswith("--- End of test: FAILURE: ")
    assert "!!! rtc:" in "\n".join(r.summary_lines())


def test_sim_stall_cpu_reports_a_stall_and_still_passes() -> None:
    r = run_torture(TortureParams(duration=2, stall_cpu=1.0, stall_cpu_holdoff=0.2))
    _healthy(r)
    assert r.stalls >= 1 and r.splats["rcu_stall"] >= 1
    text = "\n".join(r.summary_lines())
    assert "detected stalls on CPUs/tasks" in text and "rcu_torture_stall end." in text


def test_pipe_arithmetic() -> None:
    assert full_gps_since(8, 4) == 0  # cookie 8 not reached
    assert full_gps_since(8, 9) == 1  # GP ending at 8 done, next in progress
    assert full_gps_since(8, 16) == 3
    wrap = (1 << 64) - 4
    assert full_gps_since(wrap, 4) == 3  # across the counter wrap


def test_cli_torture_sim_json_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["torture", "--duration", "0.5", "--json", "--seed", "3"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc.keys() >= JSON_KEYS and doc["passed"] and doc["mode"] == "sim"
    assert doc["seed"] == 3 and doc["failures"] == 0
    assert main(["torture", "--duration", "0.3", "--kernel-config", "rt", "--nreaders", "2",
                 "--nfakewriters", "1", "--variant", "page-cache", "--profile", "v6.1"]) == 0
    out = capsys.readouterr().out
    assert "Reader Pipe:" in out and "End of test: SUCCESS" in out and "kernel_config=rt" in out


def test_cli_exit_status_is_1_when_the_run_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(params: TortureParams, config: KernelConfig | None) -> TortureResult:
        return run_torture(params, config, subsystems=BROKEN_RCU)

    monkeypatch.setattr(torture_cli, "run_torture", broken)
    assert main(["torture", "--duration", "0.5"]) == 1
    assert "End of test: FAILURE" in capsys.readouterr().out


def test_cli_cannot_reach_the_broken_build() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    torture = sub.choices["torture"]  # type: ignore[index]
    opts = {o for a in torture._actions for o in a.option_strings}
    assert not any("broken" in o for o in opts)
    assert {"--mode", "--duration", "--nreaders", "--nwriters", "--nfakewriters", "--seed",
            "--variant", "--profile", "--onoff-interval", "--fault-rate", "--stall-cpu",
            "--kernel-config", "--json", "--preempt-rcu", "--kvfree-torture"} <= opts


def test_app_torture_passes_with_hotplug_faults_and_a_stall() -> None:
    r = run_app_torture(
        TortureParams(duration=1.2, onoff_interval=0.2, fault_rate=0.2, stall_cpu=0.4,
                      stall_cpu_holdoff=0.2),
        seed=5,
    )
    _healthy(r, min_ops=10)
    assert r.mode == "app"
    assert r.kvfree["injected_faults"] > 0
    assert r.kvfree["faults_reported"] == r.kvfree["injected_faults"]
    assert r.kvfree["cancelled_reads"] > 0 and r.onoff["offline_ok"] > 0
    assert r.stalls >= 1 and any("detected stall" in line for line in r.log)


def test_app_torture_catches_a_writer_that_skips_the_grace_period(
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = run_app_torture(TortureParams(duration=0.6), seed=1, torture_cls=BrokenAppTorture)
    assert not r.passed and r.use_after_free > 0


def test_cli_torture_app_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["torture", "--mode", "app", "--duration", "0.4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mode"] == "app" and doc["passed"] and doc.keys() >= JSON_KEYS
    assert main(["torture", "--mode", "app", "--duration", "0.1", "--kernel-config", "rt"]) == 2
    assert "--kernel-config applies to --mode sim only" in capsys.readouterr().err
    assert main(["torture", "--mode", "app", "--duration", "0.1", "--preempt-rcu"]) == 2
    assert "--preempt-rcu applies to --mode sim only" in capsys.readouterr().err


def test_sim_readers_span_ticks_and_are_preempted_on_preempt_rcu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rcutorture's readers delay *inside* the section (``rcu_read_delay`` in
    ``rcu_torture_one_read``, v6.1 ``kernel/rcu/rcutorture.c``), so the scheduling-clock
    interrupt lands in readers: with CONFIG_PREEMPT_RCU ``rcu_sched_clock_irq`` ->
    ``rcu_flavor_sched_clock_irq`` sees ``rcu_preempt_depth() > 0`` and reports no QS
    (``kernel/rcu/tree_plugin.h``), and a reader preempted there is queued by
    ``rcu_preempt_ctxt_queue``. Counted by wrapping the two, behaviour unchanged."""
    from rcukit.rcu.tree import RcuState
    from rcukit.rcu.tree_plugin import RcuReaders

    seen = {"tick_in_reader": 0, "preempted_reader": 0}
    tick = RcuState.rcu_sched_clock_irq
    queue = RcuReaders.rcu_preempt_ctxt_queue

    def counting_tick(self: RcuState, task: Any, voluntary: bool) -> None:
        if task.rcu_read_nesting and task.comm.startswith("rcu_torture_reader"):
            seen["tick_in_reader"] += 1
        tick(self, task, voluntary)

    def counting_queue(self: RcuReaders, task: Any, rdp: Any) -> None:
        if task.comm.startswith("rcu_torture_reader"):
            seen["preempted_reader"] += 1
        queue(self, task, rdp)

    monkeypatch.setattr(RcuState, "rcu_sched_clock_irq", counting_tick)
    monkeypatch.setattr(RcuReaders, "rcu_preempt_ctxt_queue", counting_queue)
    r = run_torture(TortureParams(duration=1), torture_config(preempt_rcu=True))
    _healthy(r)
    assert r.settings["preempt_rcu"] is True
    assert seen["tick_in_reader"] > 100 and seen["preempted_reader"] > 10, seen


def test_sim_writers_wait_through_every_update_primitive(monkeypatch: pytest.MonkeyPatch) -> None:
    """``rcu_torture_writer`` (v6.1 ``kernel/rcu/rcutorture.c``) frees its old element after
    ``synchronize_rcu``, ``synchronize_rcu_expedited`` (twice, with a full-cookie check),
    ``cond_synchronize_rcu`` and a ``start_poll_synchronize_rcu`` / poll loop, besides
    ``call_rcu``: the real writer, whose objects readers check, uses each."""
    from rcukit.rcu.tree import RcuState

    callers: dict[str, set[str]] = {}
    for name in ("synchronize_rcu_expedited", "cond_synchronize_rcu",
                 "start_poll_synchronize_rcu", "call_rcu"):
        orig = getattr(RcuState, name)

        def wrapped(self: RcuState, task: Any, *a: Any, _o: Any = orig, _n: str = name) -> Any:
            callers.setdefault(_n, set()).add(task.comm)
            return _o(self, task, *a)

        monkeypatch.setattr(RcuState, name, wrapped)
    r = run_torture(TortureParams(duration=1))
    _healthy(r)
    for name, comms in callers.items():
        assert "rcu_torture_writer/0" in comms, name
    assert len(callers) == 4


def test_app_torture_runs_qsbr_readers_without_hotplug() -> None:
    """liburcu's urcu-qsbr readers hold references between quiescent states; app mode runs
    them in every run (not only with ``onoff_interval``), and they read."""
    r = run_app_torture(TortureParams(duration=0.5), seed=2)
    _healthy(r, min_ops=10)
    assert r.onoff["offline"] == 0
