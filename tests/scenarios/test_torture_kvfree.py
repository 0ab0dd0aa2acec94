"""``rcukit torture --kvfree-torture``: the pre-fix krwp reuse is found where it exists, never
where it is fixed.

The kernel fact: before ``need_wait_for_krwp_work()`` ("rcu/kvfree: Avoid freeing new
kfree_rcu() memory after old grace period", 5da7cb193db3, mainline in v6.3-rc6 and backported
to the 5.10.y..6.2.y stable trees; ``kernel/rcu/tree.c``, ``kfree_rcu_monitor`` /
``kvfree_rcu_queue_batch``), the monitor attached a channel to any ``krwp`` whose same channel
was free, even one whose batch already waited for a grace period; ``queue_rcu_work()`` of that
pending work asks for no new one, so the new objects were freed when the old grace period
ended, possibly before a full grace period since they were queued. Among rcukit's profiles the
bug is in rfc, v5.9, v5.11, v5.13 and v6.1 (v5.5 has a single channel and batch); v6.3 and later
have the fix.

Documented simulated time: the kvfree torture finds it within ``FIND_S`` = 2 simulated seconds
on every buggy profile. Measured over seeds 0-9: rfc, v5.9 and v6.1 10/10 within 1 s; v5.11
and v5.13 9/10 within 1 s, 10/10 within 2 s; v5.5, v6.3, v6.4, v6.5, v6.12 and v6.15 0/10 at
2 s. CI runs one seed per profile; ``RCUKIT_KRWP_SEEDS=10`` runs ten.
"""

from __future__ import annotations

import os

import pytest

from rcukit.cli import main
from rcukit.rcu.profiles import PROFILES
from rcukit.scenarios.torture import TortureParams, run_torture, torture_config

SEEDS = int(os.environ.get("RCUKIT_KRWP_SEEDS", "1"))
FIND_S = 2.0
BUGGY = ("rfc", "v5.9", "v5.11", "v5.13", "v6.1")
FIXED = ("v5.5", "v6.3", "v6.4", "v6.5", "v6.12", "v6.15")


def test_the_profiles_split_as_the_kernel_history_says() -> None:
    """Every profile is in one list, and the split follows ``need_wait_for_krwp_work``
    (v6.3-rc6) and the number of batches (``KFREE_N_BATCHES`` 2 from v5.6)."""
    assert set(BUGGY) | set(FIXED) == set(PROFILES)
    for name in BUGGY:
        p = PROFILES[name]
        assert not p.need_wait_for_krwp_work and p.n_batches == 2 and p.blocks
    for name in FIXED:
        p = PROFILES[name]
        assert p.need_wait_for_krwp_work or p.n_batches == 1


@pytest.mark.parametrize("profile", BUGGY)
def test_kvfree_torture_finds_the_krwp_reuse(profile: str) -> None:
    """Pre-6.3 ``kfree_rcu_monitor()`` (v5.9..v6.2 ``kernel/rcu/tree.c``) reuses a busy krwp:
    the reclaim counts objects freed before their grace period and the run fails."""
    for seed in range(SEEDS):
        r = run_torture(TortureParams(duration=FIND_S, kvfree_torture=True),
                        torture_config(profile=profile, seed=seed))
        assert not r.passed, f"{profile} seed {seed}: the krwp reuse went unseen"
        assert r.kvfree["gp_violations"] > 0 and r.failures >= r.kvfree["gp_violations"]
        assert any("gp_violations" in e for e in r.errors)
        # Every object was still freed once: the bug is the timing, not a loss.
        assert r.objects_queued == r.objects_freed and r.leaks == 0 and r.double_free == 0


@pytest.mark.parametrize("profile", FIXED)
def test_kvfree_torture_passes_where_the_fix_is(profile: str) -> None:
    """v6.3-rc6+ ``need_wait_for_krwp_work()``: a krwp takes a batch only when wholly free, so
    no object is freed before a full grace period since its detach (and v5.5 has one batch)."""
    for seed in range(SEEDS):
        r = run_torture(TortureParams(duration=FIND_S, kvfree_torture=True),
                        torture_config(profile=profile, seed=seed))
        assert r.passed, "\n".join(r.summary_lines())
        assert r.kvfree["gp_violations"] == 0
        # The flood ran: far more kvfree_rcu() calls than the writer's retirements.
        assert r.kvfree["calls"] > 10 * r.updates


def test_cli_kvfree_torture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["torture", "--kvfree-torture", "--profile", "v5.9", "--duration", "1"]) == 1
    out = capsys.readouterr().out
    assert "gp_violations" in out and "End of test: FAILURE" in out
    assert "kvfree_torture=True" in out
    assert main(["torture", "--mode", "app", "--kvfree-torture", "--duration", "0.1"]) == 2
    assert "--kvfree-torture applies to --mode sim only" in capsys.readouterr().err
