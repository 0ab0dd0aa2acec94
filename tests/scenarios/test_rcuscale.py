"""``rcukit rcuscale``: the kernel's kfree_rcu_test banner and closing line, --json, the
batching switches and bad module parameters (kernel.md section 5)."""

from __future__ import annotations

import gc
import json
import re
from typing import Any

import pytest
from clitools import run_cli

from rcukit.cli import main
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError
from rcukit.scenarios import rcuscale
from rcukit.scenarios.rcuscale import RcuscaleParams, fewer_gc_passes, run_rcuscale

CLOSING = re.compile(
    r"^Total time taken by all kfree'ers: (\d+) ns, loops: (\d+), batches: (\d+), "
    r"memory footprint: (\d+)MB$",
    re.M,
)
#: Small but long enough (one CPU, 40k objects, ~2 ms) that grace periods elapse without
#: batching.
SMALL = ["--cpus", "1", "--kfree-alloc-num", "4000", "--kfree-loops", "10"]


def rcuscale_json(*extra: str) -> dict[str, Any]:
    rc, out, err = run_cli(["rcuscale", "--json", *SMALL, *extra])
    assert rc == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_banner_and_closing_line(capsys: pytest.CaptureFixture[str]) -> None:
    """kernel/rcu/rcuscale.c ``kfree_scale_init()`` (v6.6+): ``pr_alert("%s" SCALE_FLAG "---
    kfree_rcu_test: ...", scale_type, ...)`` with ``scale_type = "rcu"`` and ``SCALE_FLAG =
    "-scale:"``, printing the module parameters as given (``kfree_nthreads`` is -1 by default;
    ``compute_real()`` runs after the banner); then ``kfree object size=%zu,
    kfree_by_call_rcu=%d``, unprefixed; the closing line is unprefixed too
    (``kfree_scale_thread``)."""
    assert main(["rcuscale", "--kfree-alloc-num", "500", "--kfree-loops", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "rcu-scale:--- kfree_rcu_test: kfree_mult=1 kfree_by_call_rcu=0 kfree_nthreads=-1 "
        "kfree_alloc_num=500 kfree_loops=4 kfree_rcu_test_double=0 kfree_rcu_test_single=0\n"
        "kfree object size=24, kfree_by_call_rcu=0\n"
    )
    m = CLOSING.search(out)
    assert m is not None, out
    total, loops, batches, mb = map(int, m.groups())
    assert total > 0 and loops == 4 and batches >= 0 and mb >= 0


@pytest.fixture(scope="module")
def batched() -> dict[str, Any]:
    return rcuscale_json()


@pytest.fixture(scope="module")
def unbatched() -> dict[str, Any]:
    return rcuscale_json("--no-batch")


def test_json_keys(batched: dict[str, Any]) -> None:
    assert {"total_time_ns", "loops", "batches", "memory_footprint_mb",
            "records_per_block_mean"} <= set(batched)
    assert batched["loops"] == 10 and batched["objects"] == 40_000
    assert batched["nthreads"] == 1
    assert (batched["profile"], batched["variant"]) == ("v6.1", "page-cache")
    # The mean covers every block freed (it is read after the final barrier): the v6.1 kick
    # drains each CPU at about a block's worth (KVFREE_BULK_MAX_ENTR = 510).
    assert 400 < batched["records_per_block_mean"] <= 510


def test_json_is_deterministic(batched: dict[str, Any]) -> None:
    assert rcuscale_json() == batched


def test_no_batch_is_one_call_rcu_per_object(
    batched: dict[str, Any], unbatched: dict[str, Any]
) -> None:
    """Pre-5.5: no blocks at all; every object is a callback, and the run takes longer."""
    assert unbatched["params"]["no_batch"] is True
    assert unbatched["records_per_block_mean"] == 0
    assert unbatched["batches"] != batched["batches"]
    assert unbatched["batches"] > batched["batches"]
    assert unbatched["total_time_ns"] > batched["total_time_ns"]


def test_kfree_by_call_rcu(batched: dict[str, Any]) -> None:
    doc = rcuscale_json("--kfree-by-call-rcu")
    assert doc["params"]["kfree_by_call_rcu"] is True
    assert doc["records_per_block_mean"] == 0  # call_rcu(&p->rh, kfree): no blocks
    assert doc["total_time_ns"] > batched["total_time_ns"]
    rc, out, _ = run_cli(["rcuscale", "--kfree-by-call-rcu", "--kfree-alloc-num", "10",
                          "--kfree-loops", "1"])
    assert rc == 0 and "kfree_by_call_rcu=1" in out


@pytest.mark.parametrize("form", ["single", "double"])
def test_single_and_double_forms(form: str) -> None:
    r = run_rcuscale(
        RcuscaleParams(kfree_alloc_num=600, kfree_loops=2, kfree_nthreads=2,
                       kfree_rcu_test_single=form == "single",
                       kfree_rcu_test_double=form == "double"),
        KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": "v5.9"}),
    )
    assert r.objects == 2 * 2 * 600
    assert f"kfree_rcu_test_{form}=1" in r.banner()
    # 600 objects per loop and CPU, each loop drained into a block (v5.9 allocates in-lock)
    assert 200 < r.records_per_block_mean <= 510


@pytest.mark.parametrize(("nthreads", "real"), [(-1, 4), (-2, 3), (-4, 1), (-9, 1), (2, 2)])
def test_negative_nthreads_count_back_from_the_cpus(nthreads: int, real: int) -> None:
    """kernel/rcu/rcuscale.c ``compute_real()`` (every version with the kfree test):
    ``n >= 0`` is ``n``; otherwise ``num_online_cpus() + 1 + n``, at least 1, so -1 means
    every CPU and -2 all but one. The banner prints the parameter as given."""
    rc, out, err = run_cli(["rcuscale", "--json", "--cpus", "4", "--kfree-nthreads",
                            str(nthreads), "--kfree-alloc-num", "40", "--kfree-loops", "2"])
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["nthreads"] == real
    assert doc["objects"] == real * 2 * 40
    assert doc["params"]["kfree_nthreads"] == nthreads
    r = run_rcuscale(RcuscaleParams(kfree_nthreads=nthreads, kfree_alloc_num=40, kfree_loops=2),
                     KernelConfig(nr_cpus=4).replace(**{"mm.debug_quarantine": 0}))
    assert f" kfree_nthreads={nthreads} " in r.banner()


def test_kfree_mult_and_nthreads_in_the_banner() -> None:
    rc, out, err = run_cli(["rcuscale", "--kfree-mult", "3", "--kfree-nthreads", "3", "--cpus",
                            "2", "--kfree-alloc-num", "50", "--kfree-loops", "2"])
    assert rc == 0, err
    assert "kfree_mult=3" in out and "kfree_nthreads=3" in out
    assert "kfree object size=72," in out
    assert CLOSING.search(out) is not None


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--kfree-loops", "0"], "kfree_loops = 0: it must be an integer >= 1"),
        (["--kfree-alloc-num", "0"], "kfree_alloc_num = 0: it must be an integer >= 1"),
        (["--kfree-nthreads", "0"], "kfree_nthreads = 0"),
        (["--kfree-mult", "0"], "kfree_mult = 0: it must be an integer >= 1"),
        (["--kfree-loops", "many"], "invalid int value: 'many'"),
        (["--profile", "v9"], "allowed: v5.5, rfc, v5.9, v5.11, v5.13, v6.1, v6.3"),
        (["--variant", "bogus"], "unknown allocator variant 'bogus'"),
        (["--cpus", "0"], "nr_cpus = 0 is out of range"),
        (["--config", "/nonexistent/k.toml"], "cannot read config file"),
    ],
)
def test_bad_parameters_exit_2(args: list[str], expect: str) -> None:
    rc, out, err = run_cli(["rcuscale", "--kfree-alloc-num", "5", "--kfree-loops", "1", *args])
    assert rc == 2 and out == ""
    assert expect in err
    assert "Traceback" not in err


def test_params_validate_on_construction() -> None:
    with pytest.raises(ConfigError, match="kfree_loops"):
        RcuscaleParams(kfree_loops=-1)


@pytest.fixture(scope="module")
def by_call_rcu() -> dict[str, Any]:
    return rcuscale_json("--kfree-by-call-rcu")


CLOSING_KEYS = ("total_time_ns", "loops", "batches", "memory_footprint_mb")


def test_no_batch_frees_each_object_through_rcu_reclaim_offset(
    unbatched: dict[str, Any]
) -> None:
    """v5.5 rcuperf ``kfree_perf_thread`` (kernel/rcu/rcuperf.c, ``kfree_no_batch=1``) calls
    ``kfree_call_rcu_nobatch(&p->rh, (rcu_callback_t)offsetof(struct kfree_obj, rh))``: the
    pre-batching kfree_rcu of v5.4. ``rcu_do_batch`` passes each such callback to
    ``__rcu_reclaim`` (kernel/rcu/rcu.h, v5.4/v5.5), which sees ``__is_kfree_rcu_offset()`` and
    calls ``kfree(head - offset)``: one callback and one kfree() per object, no kfree_bulk()."""
    n = unbatched["objects"]
    assert unbatched["mode"] == "no_batch"
    assert unbatched["kfree_offset_callbacks"] == n == 40_000
    assert unbatched["kfree_call_rcu_callbacks"] == 0
    assert unbatched["kfree_calls"] == n
    assert unbatched["kfree_bulk_calls"] == 0
    # the per-object callbacks plus at most one rcu_barrier() callback per CPU
    assert n <= unbatched["callbacks_invoked"] <= n + 1


def test_kfree_by_call_rcu_invokes_kfree_call_rcu_per_object(
    by_call_rcu: dict[str, Any]
) -> None:
    """rcuscale.c ``kfree_scale_thread`` (torvalds/linux 0401bbf56da5): with
    ``kfree_by_call_rcu`` each object goes to ``call_rcu(&p->rh, kfree_call_rcu)``, whose
    callback does ``container_of()`` and ``kfree()``: one function callback and one kfree() per
    object. (Laziness needs offloaded CPUs: ``__call_rcu_common`` in kernel/rcu/tree.c uses
    ``call_rcu_nocb`` only if ``rcu_rdp_is_offloaded``; the simulated kernel offloads none.)"""
    n = by_call_rcu["objects"]
    assert by_call_rcu["mode"] == "kfree_by_call_rcu"
    assert by_call_rcu["kfree_call_rcu_callbacks"] == n == 40_000
    assert by_call_rcu["kfree_offset_callbacks"] == 0
    assert by_call_rcu["kfree_calls"] == n
    assert by_call_rcu["kfree_bulk_calls"] == 0
    assert n <= by_call_rcu["callbacks_invoked"] <= n + 1


def test_kfree_by_call_rcu_ignores_single_and_double() -> None:
    """rcuscale.c ``kfree_scale_thread`` (0401bbf56da5): the ``kfree_by_call_rcu`` branch
    ``continue``s before ``kfree_rcu_test_single``/``_double`` are looked at, so with it set
    no object reaches kfree_rcu() or kfree_rcu_mightsleep()."""
    for flag in ("--kfree-rcu-test-single", "--kfree-rcu-test-double"):
        doc = rcuscale_json("--kfree-by-call-rcu", flag)
        assert doc["kfree_call_rcu_callbacks"] == doc["objects"]
        assert doc["kfree_bulk_calls"] == 0 and doc["records_per_block_mean"] == 0


def test_batched_kfree_rcu_frees_through_kfree_bulk(batched: dict[str, Any]) -> None:
    """v5.7+ kvfree_rcu (kernel/rcu/tree.c ``kfree_rcu_work``; kernel.md 1.0): pointers go into
    page-sized blocks freed by ``kfree_bulk()`` after a GP, so the RCU callbacks are a few
    ``rcu_work`` heads, not one per object; the only single kfree()s are the rcu_head-list and
    head-less fallbacks."""
    n = batched["objects"]
    assert batched["mode"] == "kfree_rcu"
    assert batched["kfree_offset_callbacks"] == batched["kfree_call_rcu_callbacks"] == 0
    assert batched["callbacks_invoked"] < n // 1000
    assert batched["kfree_bulk_calls"] >= n // 510
    assert batched["kfree_calls"] < n // 100


def test_per_object_modes_print_the_same_closing_line(
    unbatched: dict[str, Any], by_call_rcu: dict[str, Any], batched: dict[str, Any]
) -> None:
    """The two per-object modes queue the same callbacks at the same points and each callback
    does one kfree() (``__rcu_reclaim``'s offset branch vs ``kfree_call_rcu``); only the
    indirect call differs, which the model does not cost, so the closing lines match. Both
    differ from batched kfree_rcu, which waits for fewer grace periods (the point of the v5.5
    batching, a35d16905efc, as its rcuperf test was written to show)."""
    assert all(unbatched[k] == by_call_rcu[k] for k in CLOSING_KEYS)
    assert unbatched["grace_periods"] == by_call_rcu["grace_periods"]
    assert unbatched["grace_periods"] > batched["grace_periods"]


def test_memory_is_sampled_per_thread_and_printed_by_the_last_finisher() -> None:
    """rcuscale.c ``kfree_scale_thread`` (0401bbf56da5): ``mem_begin``/``mem_during`` and
    ``start_time`` are the thread's locals; the thread whose ``atomic_inc_return(
    &n_kfree_scale_thread_ended)`` reaches ``kfree_nrealthreads`` prints its own
    ``end_time - start_time`` and ``(mem_begin - mem_during) >> (20 - PAGE_SHIFT)``. Three
    threads on two CPUs: threads 0 and 2 share CPU 0, so one of them finishes last."""
    r = run_rcuscale(RcuscaleParams(kfree_nthreads=3, kfree_alloc_num=8000, kfree_loops=8),
                     KernelConfig(nr_cpus=2))
    assert len(r.thread_footprints_mb) == 3
    assert r.last_finisher in (0, 2)
    assert r.memory_footprint_mb == r.thread_footprints_mb[r.last_finisher]
    # 64k live 24-byte objects per thread at most: the footprints are a few MB, not zero
    assert any(mb > 0 for mb in r.thread_footprints_mb)
    assert f"memory footprint: {r.memory_footprint_mb}MB" in r.closing_line()


def test_no_batch_and_kfree_by_call_rcu_are_exclusive() -> None:
    """``kfree_no_batch`` existed only in v5.5's rcuperf.c (removed by "rcu: Remove
    kfree_call_rcu_nobatch()", v5.6); ``kfree_by_call_rcu`` is rcuscale.c's (v6.2+)."""
    with pytest.raises(ConfigError, match="never existed in the same kernel"):
        RcuscaleParams(no_batch=True, kfree_by_call_rcu=True)
    rc, out, err = run_cli(["rcuscale", "--no-batch", "--kfree-by-call-rcu",
                            "--kfree-alloc-num", "5", "--kfree-loops", "1"])
    assert rc == 2 and out == "" and "never existed" in err


@pytest.mark.parametrize("form", ["--kfree-rcu-test-single", "--kfree-rcu-test-double"])
def test_run_based_floods_match_the_per_call_loop(form: str) -> None:
    """rcuscale.c ``kfree_scale_thread`` (v6.1): per loop, ``kfree_alloc_num`` x (``kmalloc``;
    ``kfree_rcu(p, rh)`` or, with ``kfree_rcu_test_single``, ``kfree_rcu_mightsleep(p)``).
    ``rcukit rcuscale`` runs each loop as one run-based flood; ``--per-call`` is the reference
    loop. With one form only nothing is drawn at random, so everything the run prints is the
    same: closing line, counts, memory samples, the thread that finished last."""
    args = ["--cpus", "2", "--kfree-alloc-num", "3000", "--kfree-loops", "8", form]
    assert rcuscale_json(*args) == rcuscale_json(*args, "--per-call")


def test_mixed_forms_are_drawn_per_run_and_stay_close() -> None:
    """The kernel picks head-less vs two-argument per object (``torture_random(&tr) & 0x800``,
    rcuscale.c v5.9+); a run draws how many of its calls were head-less instead (one popcount
    per run, ``KvfreeFlood.kvfree_rcu_flood``). Same seed, same result; against the per-call
    loop's own draws the same objects go the same way in aggregate: the same objects and
    loops, the simulated time within 2 % and the blocks about as full."""
    runs = rcuscale_json()
    assert rcuscale_json() == runs
    ref = rcuscale_json("--per-call")
    assert (runs["objects"], runs["loops"]) == (ref["objects"], ref["loops"])
    assert abs(runs["total_time_ns"] - ref["total_time_ns"]) <= ref["total_time_ns"] / 50
    assert abs(runs["records_per_block_mean"] - ref["records_per_block_mean"]) <= 10
    assert rcuscale_json("--seed", "1") != runs


def test_per_call_modes_ignore_runs() -> None:
    """``--no-batch`` and ``--kfree-by-call-rcu`` queue one callback per object (v5.5 rcuperf,
    v6.2+ rcuscale.c): they have no run-based path, so ``--per-call`` changes nothing."""
    for mode in ("--no-batch", "--kfree-by-call-rcu"):
        args = ["--cpus", "1", "--kfree-alloc-num", "500", "--kfree-loops", "2", mode]
        assert rcuscale_json(*args) == rcuscale_json(*args, "--per-call")


def test_collector_thresholds_are_restored_and_results_do_not_depend_on_them() -> None:
    """The command lowers how often Python's cyclic collector runs (a speed measure, nothing
    the kernel has: rcuscale.c measures simulated time here); the library function leaves the
    interpreter's thresholds alone, the context manager puts them back, and a run under
    either gives the same result."""
    params = RcuscaleParams(kfree_nthreads=2, kfree_alloc_num=2000, kfree_loops=4)
    before = gc.get_threshold()
    seen: list[tuple[int, ...]] = []
    with fewer_gc_passes():
        seen.append(gc.get_threshold())
        r = run_rcuscale(params)
    assert seen == [rcuscale.GC_THRESHOLDS] and gc.get_threshold() == before
    same = run_rcuscale(params)
    assert gc.get_threshold() == before
    assert (same.total_time_ns, same.batches, same.objects) == (
        r.total_time_ns, r.batches, r.objects
    )
    assert r.objects == 2 * 4 * 2000
