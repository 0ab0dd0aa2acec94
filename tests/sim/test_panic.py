"""A kernel that survives its bug reports (rcukit.panic): report, taint, go on; or panic.

Each case makes one bug the kernel finds later, in a worker, a kthread or a callback, queues
other objects before and after it, and checks the report's text, the taint, and that every
object queued by others is still freed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from simtools import freed

from rcukit.errors import KernelPanic, MemoryDebugError, RcuUsageError
from rcukit.kernel import Kernel, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.panic import (
    TAINT_BAD_PAGE,
    TAINT_DIE,
    TAINT_WARN,
    BugReport,
    PanicState,
    ReportContext,
    dump_stack_print_info,
    print_tainted,
    print_tainted_verbose,
    symbol_frame,
)
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task
from rcukit.sim import KernelConfig, boot, simulate
from rcukit.wq import Work

_GFP = int(GFP_KERNEL)
Bad = Callable[[Kernel, Task], Awaitable[None]]


class _Head(RcuHead):
    __slots__ = ("runs",)

    def __init__(self) -> None:
        super().__init__(None)
        self.runs = 0


def _count(task: Task, head: RcuHead) -> None:
    assert isinstance(head, _Head)
    head.runs += 1


def _run(bad: Bad, profile: str = "v5.9", **overrides: Any) -> tuple[Kernel, list[int],
                                                                         list[_Head]]:
    """Queue 40 kvfree_rcu objects and 10 callbacks, do ``bad``, queue as many again, then
    the barriers; the kernel must get through it all."""
    cfg = KernelConfig(nr_cpus=2).replace(**{"kvfree.profile": profile, **overrides})
    box: list[Kernel] = []
    others: list[int] = []
    heads = [_Head() for _ in range(20)]

    async def main() -> None:
        async with boot(cfg) as k:
            box.append(k)

            async def body(task: Task) -> None:
                for i in range(40):
                    p = await k.mm.kmalloc(task, 64, _GFP)
                    others.append(p)
                    await k.kvfree.kvfree_rcu(task, p, p + 8 if i % 2 else None)
                for h in heads[:10]:
                    k.rcu.call_rcu(task, h, _count)
                await bad(k, task)
                for _ in range(40):
                    p = await k.mm.kmalloc(task, 64, _GFP)
                    others.append(p)
                    await k.kvfree.kvfree_rcu(task, p)
                for h in heads[10:]:
                    k.rcu.call_rcu(task, h, _count)
                await k.kvfree.kvfree_rcu_barrier(task)
                await k.rcu.rcu_barrier(task)

            k.spawn(body, 1, "body")
            await k.run()

    run_sim(main)
    return box[0], others, heads


def _nothing_lost(k: Kernel, others: list[int], heads: list[_Head]) -> None:
    assert all(freed(k, p) for p in others)
    assert all(h.runs == 1 for h in heads)
    assert k.kvfree.statistics().pending == 0


# -- taint ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "version", "text"),
    [
        (1 << TAINT_WARN, (5, 9), "Tainted: G" + " " * 8 + "W" + " " * 8),
        (1 << TAINT_BAD_PAGE, (5, 9), "Tainted: G" + " " * 4 + "B" + " " * 12),
        ((1 << TAINT_BAD_PAGE) | (1 << TAINT_WARN), (5, 9),
         "Tainted: G" + " " * 4 + "B" + " " * 3 + "W" + " " * 8),
        ((1 << TAINT_DIE) | (1 << TAINT_WARN), (6, 1),
         "Tainted: G" + " " * 6 + "D" + " " + "W" + " " * 9),
        (0, (6, 16), "Not tainted"),
    ],
)
def test_print_tainted_letters(mask: int, version: tuple[int, int], text: str) -> None:
    """``print_tainted()`` (kernel/panic.c, v5.9 and v6.1): "Tainted: " then, per flag in
    ``taint_flags[]`` order, its letter when set, else a space ('G' for bit 0), e.g. B at
    bit 5 (TAINT_BAD_PAGE), D at 7 (TAINT_DIE), W at 9 (TAINT_WARN); 18 columns up to 5.19,
    19 from 6.0 (TAINT_TEST)."""
    assert print_tainted(mask, version) == text


def test_add_taint_lockdep_now_unreliable_turns_lockdep_off() -> None:
    """``add_taint(flag, LOCKDEP_NOW_UNRELIABLE)`` (kernel/panic.c, v5.9) calls
    ``__debug_locks_off()`` and, if lockdep was on, prints "Disabling lock debugging due to
    kernel taint"; ``LOCKDEP_STILL_OK`` (a WARN) leaves lockdep alone."""
    k = Kernel(KernelConfig(nr_cpus=1))
    assert k.panic.add_taint(TAINT_WARN) == []
    assert k.locks.debug_locks
    assert k.panic.add_taint(TAINT_BAD_PAGE, lockdep_ok=False) == [
        "Disabling lock debugging due to kernel taint"
    ]
    assert not k.locks.debug_locks
    assert k.panic.add_taint(TAINT_BAD_PAGE, lockdep_ok=False) == []  # already off
    assert k.panic.taint == "BW"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=40))
def test_symbol_frame_is_stable_and_inside_the_symbol(sym: str) -> None:
    """``%pS`` prints ``symbol+0xoffset/0xsize`` with the offset inside the function
    (lib/vsprintf.c ``symbol_string()``); rcukit's made-up offsets are a function of the
    name alone, so a report never changes with the Python code around the model."""
    text = symbol_frame(sym)
    m = re.fullmatch(r"(.+)\+0x([0-9a-f]+)/0x([0-9a-f]+)", text)
    assert m is not None and m[1] == sym
    assert 0 < int(m[2], 16) < int(m[3], 16)
    assert symbol_frame(sym) == text


# -- KASAN in the reclaim worker ----------------------------------------------------------------


async def _kvfree_then_kfree(k: Kernel, task: Task) -> None:
    # 128 bytes: the others are 64, so nothing reuses the object before the reclaim runs.
    p = await k.mm.kmalloc(task, 128, _GFP)
    await k.kvfree.kvfree_rcu(task, p)
    await k.mm.kfree(task, p)


def test_kvfree_rcu_then_kfree_is_a_kasan_double_free_in_the_worker() -> None:
    """``kvfree_rcu(p)`` then ``kfree(p)``: the reclaim's ``kfree_bulk()`` meets a freed
    object. ``kmem_cache_free_bulk()`` frees through ``slab_free()``, whose
    ``slab_free_freelist_hook()`` drops every object ``slab_free_hook()`` refuses: KASAN's
    ``__kasan_slab_free()`` calls ``kasan_report_invalid_free()`` for an object already free
    and returns true (mm/slub.c, mm/kasan/common.c, v5.9). So one report, the rest freed,
    and ``end_report()`` adds TAINT_BAD_PAGE with LOCKDEP_NOW_UNRELIABLE. Before 6.0 the title
    is "double-free or invalid-free"; ``kfree_bulk()`` is inline, so the ip is
    ``kfree_rcu_work`` (mm/kasan/report.c)."""
    k, others, heads = _run(_kvfree_then_kfree)
    _nothing_lost(k, others, heads)
    assert k.panic.taint == "B"
    [r] = k.panic.reports
    assert r.kind == "kasan" and r.comm.startswith("kworker/")
    lines = r.text.split("\n")
    assert lines[0] == "=" * 66 and lines[-2] == "=" * 66
    ip = symbol_frame("kfree_rcu_work")
    assert lines[1] == f"BUG: KASAN: double-free or invalid-free in {ip}"
    assert lines[3] == f"CPU: {r.cpu} PID: {r.pid} Comm: {r.comm} Not tainted 5.9.0-rcukit #1"
    assert lines[4] == "Workqueue: events kfree_rcu_work"
    trace = lines[lines.index("Call Trace:") + 1:]
    assert [f.strip().split("+")[0] for f in trace[:11]] == [
        "dump_stack", "print_address_description", "kasan_report_invalid_free",
        "__kasan_slab_free", "slab_free_freelist_hook", "kmem_cache_free_bulk",
        "kfree_rcu_work", "process_one_work", "worker_thread", "kthread", "ret_from_fork",
    ]
    # The free track: who freed it first (the body, with kfree), and when.
    i = lines.index(next(x for x in lines if x.startswith("Freed by task ")))
    assert lines[i].startswith("Freed by task body on cpu 1 at ")
    assert lines[i + 1].startswith(" test_panic.py:")
    assert lines[-1] == "Disabling lock debugging due to kernel taint"
    assert not k.locks.debug_locks


def test_kasan_title_and_ip_follow_the_version() -> None:
    """6.0 split the title ("double-free" / "invalid-free", mm/kasan/report.c
    ``print_error_description()``); 6.3 moved the bulk free into ``kvfree_rcu_bulk()``
    (kernel/rcu/tree.c), the caller KASAN names; ``dump_stack_lvl`` heads the trace from 5.14
    and (5.18+) the end of the report panics before the taint with ``panic_on_warn``."""
    k, others, heads = _run(_kvfree_then_kfree, profile="v6.3")
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    assert r.title == "BUG: KASAN: double-free in kvfree_rcu_bulk"
    assert f" {symbol_frame('dump_stack_lvl')}" in r.text.split("\n")


def test_double_kvfree_rcu_in_one_block_frees_once_and_reports_once() -> None:
    """A double ``kvfree_rcu(p)`` under the default config (no debug objects) puts ``p`` in
    one block twice: ``build_detached_freelist()`` chains both, ``slab_free_freelist_hook()``
    frees the first and KASAN refuses the second (already poisoned): one double-free report,
    ``p`` freed once, the block's other objects freed (mm/slub.c, v5.9)."""

    async def twice(k: Kernel, task: Task) -> None:
        p = await k.mm.kmalloc(task, 128, _GFP)
        await k.kvfree.kvfree_rcu(task, p)
        await k.kvfree.kvfree_rcu(task, p)

    k, others, heads = _run(twice)
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    assert r.title == "BUG: KASAN: double-free or invalid-free in kfree_rcu_work"
    assert "appears twice in one kfree_bulk() array" in r.text
    assert k.panic.taint == "B"


def test_double_kvfree_rcu_of_a_vmalloc_area_warns_in_vunmap() -> None:
    """The vmalloc channel frees with ``vfree()``; an area already gone is ``__vunmap()``'s
    ``WARN(1, "Trying to vfree() nonexistent vm area (%p)")`` and the area is left alone
    (mm/vmalloc.c, v5.9): a WARNING, TAINT_WARN, and the reclaim goes on."""

    async def twice(k: Kernel, task: Task) -> None:
        v = await k.mm.vmalloc(task, 8192)
        await k.kvfree.kvfree_rcu(task, v)
        await k.kvfree.kvfree_rcu(task, v)

    k, others, heads = _run(twice)
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    assert r.kind == "warning"
    assert r.title.endswith(" at __vunmap")
    assert "Trying to vfree() nonexistent vm area (0x" in r.text
    assert k.panic.taint == "W"


def test_kasan_reports_once_per_boot_from_5_18() -> None:
    """``report_enabled()`` (mm/kasan/report.c, 5.18+ for an invalid free): without
    ``kasan_multi_shot`` only the first KASAN report of a boot is printed; rcukit still keeps
    and counts every one."""

    async def two(k: Kernel, task: Task) -> None:
        await _kvfree_then_kfree(k, task)
        await k.kvfree.kvfree_rcu_barrier(task)
        await _kvfree_then_kfree(k, task)

    k, others, heads = _run(two, profile="v6.3")
    _nothing_lost(k, others, heads)
    assert [r.printed for r in k.panic.reports] == [True, False]
    assert k.panic.counts["kasan"] == 2
    k59, *_ = _run(two)
    assert [r.printed for r in k59.panic.reports] == [True, True]


# -- WARNINGs: a raising callback, an unbalanced unlock, a failing work item ----------------------


async def _raising_callback(k: Kernel, task: Task) -> None:
    def broken_cb(task: Task, head: RcuHead) -> None:
        raise ValueError("boom")

    k.rcu.call_rcu(task, RcuHead(None), broken_cb)


def test_raising_callback_warns_and_the_batch_goes_on() -> None:
    """A kernel callback cannot raise; the way it gives up and lets the kernel go on is
    ``if (WARN_ON(...)) return;``: ``report_bug()`` (lib/bug.c) prints the cut line, then
    ``__warn()`` (kernel/panic.c, v5.9) "WARNING: CPU: %d PID: %d at %pS", the modules, the
    stack, the end marker, and adds TAINT_WARN; ``rcu_do_batch()`` invokes the rest."""
    k, others, heads = _run(_raising_callback)
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    lines = r.text.split("\n")
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[1] == f"WARNING: CPU: {r.cpu} PID: {r.pid} at {symbol_frame('broken_cb')}"
    assert lines[2] == "ValueError: boom"
    assert lines[3] == "Modules linked in:"
    assert lines[4] == f"CPU: {r.cpu} PID: {r.pid} Comm: {r.comm} Not tainted 5.9.0-rcukit #1"
    assert r.comm == f"rcuc/{r.cpu}"
    frames = [f.strip().split("+")[0] for f in lines[6:-1]]
    assert frames == ["dump_stack", "broken_cb", "rcu_do_batch", "rcu_core", "rcu_cpu_kthread",
                      "kthread", "ret_from_fork"]
    assert re.fullmatch(r"---\[ end trace [0-9a-f]{16} \]---", lines[-1])
    assert k.panic.taint == "W"


async def _kasan_then_warn_then_splat(k: Kernel, task: Task) -> None:
    """A KASAN report, then a WARNING, then a "scheduling while atomic" splat."""
    await _kvfree_then_kfree(k, task)
    await k.kvfree.kvfree_rcu_barrier(task)
    await _raising_callback(k, task)
    await k.rcu.rcu_barrier(task)
    task.preempt_count += 1
    k.locks.schedule(task, "msleep")
    task.preempt_count -= 1


def test_later_reports_print_the_taint_of_earlier_ones() -> None:
    """``dump_stack_print_info()`` (lib/dump_stack.c) prints ``print_tainted()`` at the time
    of the dump: the first report says "Not tainted", the next one the flags the first set
    ("Tainted: G    B" after KASAN), and a splat after both "Tainted: G    B   W"."""

    k, others, heads = _run(_kasan_then_warn_then_splat)
    _nothing_lost(k, others, heads)
    kasan, warn = k.panic.reports
    assert " Not tainted 5.9.0-rcukit #1" in kasan.text
    b = "Tainted: G" + " " * 4 + "B"
    assert f" {b}{' ' * 12} 5.9.0-rcukit #1" in warn.text
    [splat] = k.locks.printed_reports
    assert f" {b}   W{' ' * 8} 5.9.0-rcukit #1" in splat.format()
    assert k.panic.taint == "BW"


def test_unbalanced_unlock_with_preempt_rcu_warns_once() -> None:
    """``__rcu_read_unlock()`` (kernel/rcu/tree_plugin.h, v5.9, CONFIG_PREEMPT_RCU) checks
    ``WARN_ON_ONCE(rrln < 0 || rrln > RCU_NEST_PMAX)`` under CONFIG_PROVE_LOCKING: the first
    unbalanced unlock is a WARNING, later ones are silent (BUGFLAG_DONE); the reader that
    holds the lock keeps it and its grace period still waits for it."""

    async def foreign(k: Kernel, task: Task) -> None:
        async def hold(t: Task) -> None:
            k.rcu.rcu_read_lock(t)
            while not t.data.get("go"):
                await t.sleep_ns(1_000_000)
            k.rcu.rcu_read_unlock(t)

        holder = k.spawn(hold, 0, "holder")
        await task.sleep_ns(2_000_000)
        k.rcu.rcu_read_unlock(task)  # the lock is holder's
        k.rcu.rcu_read_unlock(task)
        assert holder.rcu_read_nesting == 1
        holder.data["go"] = True

    k, others, heads = _run(foreign, preempt_rcu=True)
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    assert r.title == f"WARNING: CPU: 1 PID: {r.pid} at __rcu_read_unlock"
    assert "holder/" in r.text and "must be called by the task that called rcu_read_lock()" \
        in r.text
    assert k.panic.counts["warning_once_suppressed"] == 1


def test_unbalanced_unlock_without_preempt_rcu_is_debug_locks_warn_on() -> None:
    """Without CONFIG_PREEMPT_RCU ``rcu_read_unlock()`` is ``preempt_enable()``;
    ``preempt_count_sub()`` (kernel/sched/core.c, v5.9, CONFIG_DEBUG_PREEMPT) refuses the
    underflow with ``DEBUG_LOCKS_WARN_ON(val > preempt_count())``, which WARNs only if
    ``debug_locks_off()`` found lockdep on (and so turns it off): one report."""

    async def unbalanced(k: Kernel, task: Task) -> None:
        with k.rcu.read_lock(task):
            pass
        k.rcu.rcu_read_unlock(task)
        k.rcu.rcu_read_unlock(task)
        assert task.preempt_count == 0 and task.rcu_read_nesting == 0

    k, others, heads = _run(unbalanced)
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    assert r.title.endswith(" at preempt_count_sub")
    assert "DEBUG_LOCKS_WARN_ON(val > preempt_count())" in r.text
    assert "without a matching rcu_read_lock()" in r.text
    assert not k.locks.debug_locks
    assert k.panic.counts["warning_lockdep_off"] == 1


def test_a_failing_work_item_warns_and_the_worker_goes_on() -> None:
    """A work function that fails a check rcukit raises for is abandoned like one that
    returns at its ``WARN_ON()``: the WARNING names the function, and
    ``print_worker_info()`` (kernel/workqueue.c, via ``dump_stack_print_info()``) adds
    "Workqueue: events <func>"; the worker runs the next item with a clean context."""

    async def broken_work(task: Task, work: Work) -> None:
        task.preempt_count += 1  # left behind by the failure
        raise RcuUsageError("the item's own bug")

    ran: list[int] = []

    async def fine(task: Task, work: Work) -> None:
        ran.append(task.preempt_count)

    async def queue(k: Kernel, task: Task) -> None:
        k.system_wq.queue_work(task, Work("broken", broken_work))
        k.system_wq.queue_work(task, Work("fine", fine))
        await task.sleep_ns(5_000_000)

    k, others, heads = _run(queue)
    _nothing_lost(k, others, heads)
    assert ran == [0]
    [r] = k.panic.reports
    assert "Workqueue: events broken_work" in r.text
    assert r.title.endswith(" at broken_work") and "RcuUsageError" not in r.title
    assert "the item's own bug" in r.text


def test_bad_page_report_names_the_pfn_and_the_reason() -> None:
    """``bad_page()`` (mm/page_alloc.c, v5.9 and since): "BUG: Bad page state in process %s
    pfn:%05lx", then ``dump_page(page, reason)``'s "page dumped because: %s", the modules, the
    stack; ``add_taint(TAINT_BAD_PAGE, LOCKDEP_NOW_UNRELIABLE)``. A work item freeing a page
    twice is reported and the kernel goes on."""
    pfns: list[int] = []

    async def queue(k: Kernel, task: Task) -> None:
        async def double_free(task: Task, work: Work) -> None:
            pa = k.mm.page_alloc
            pfn = await pa.alloc_pages(task, _GFP, 0)
            assert pfn is not None
            pfns.append(pfn)
            await pa.free_pages(task, pfn, 0)
            await pa.free_pages(task, pfn, 0)

        k.system_wq.queue_work(task, Work("double_free", double_free))
        await task.sleep_ns(5_000_000)

    k, others, heads = _run(queue)
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    lines = r.text.split("\n")
    assert lines[0] == f"BUG: Bad page state in process {r.comm}  pfn:{pfns[0]:05x}"
    assert r.comm.startswith("kworker/1:")
    assert lines[1] == "page dumped because: double free, the page is free"
    assert lines[2] == "Modules linked in:"
    assert "Workqueue: events double_free" in r.text
    assert r.kind == "bad_page" and r.printed and k.panic.taint == "B"


def test_bad_page_is_ratelimited_sixty_a_minute() -> None:
    """``bad_page()``'s ratelimit (mm/page_alloc.c, v5.9): "Allow a burst of 60 reports, then
    keep quiet for that minute"; the first report after the minute prints "BUG: Bad page
    state: %lu messages suppressed" before its own title. Swallowed reports still taint."""
    p = PanicState()
    err = MemoryDebugError("BUG: Bad page state: x", pfn=0x1234, detail="double free")

    def at(ns: int) -> BugReport:
        return p.bad_page(ReportContext.at(0, 1, "swapper/0", ns), err, ["free_pages"])

    shown = [at(i * 1_000_000).printed for i in range(70)]
    assert shown == [True] * 60 + [False] * 10
    assert p.bad_page_unshown == 10 and p.counts["bad_page"] == 70
    assert p.test_taint(TAINT_BAD_PAGE)
    assert not at(59_999_999_999).printed  # still inside the burst's minute
    after = at(60_000_000_000)
    assert after.printed
    assert after.text.split("\n")[:2] == [
        "BUG: Bad page state: 11 messages suppressed",
        "BUG: Bad page state in process swapper/0  pfn:01234",
    ]
    assert all(at(60_000_000_000 + i).printed for i in range(59))
    assert not at(60_000_000_000 + 59).printed


# -- panic_on_warn --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "profile", "message"),
    [
        (_raising_callback, "v5.9", "panic_on_warn set ..."),
        (_raising_callback, "v6.3", "kernel: panic_on_warn set ..."),
        (_kvfree_then_kfree, "v5.9", "panic_on_warn set ..."),
        (_kvfree_then_kfree, "v6.3", "KASAN: panic_on_warn set ..."),
    ],
)
def test_panic_on_warn_stops_at_the_first_report(bad: Bad, profile: str, message: str) -> None:
    """``kernel.panic_on_warn``: ``__warn()`` panics after the WARNING line (and, 5.10+, the
    modules), before the stack dump; KASAN's ``end_report()`` panics (5.18+ before adding the
    taint, earlier after it) (kernel/panic.c, mm/kasan/report.c); ``panic()`` prints "Kernel
    panic - not syncing: %s", the stack and "---[ end Kernel panic - not syncing: %s ]---".
    6.2 ("panic: Consolidate open-coded panic_on_warn checks") prefixes the origin: "kernel: "
    from ``__warn()``, "KASAN: "."""
    with pytest.raises(KernelPanic) as info:
        _run(bad, profile=profile, panic_on_warn=True)
    head = f"Kernel panic - not syncing: {message}"
    assert info.value.title == head
    lines = str(info.value).split("\n")
    assert lines[0] == head and lines[-1] == f"---[ end {head} ]---"
    assert "Call Trace:" in lines


def test_panic_on_warn_scheduling_while_atomic() -> None:
    """``__schedule_bug()`` (kernel/sched/core.c, v5.9): ``if (panic_on_warn)
    panic("scheduling while atomic\\n")`` after the report."""

    async def atomic_sleep(task: Task) -> None:
        task.preempt_count += 1
        await task.sleep_ns(1000)

    with pytest.raises(KernelPanic, match=r"^Kernel panic - not syncing: scheduling while atomic"):
        simulate(atomic_sleep, KernelConfig(nr_cpus=1, panic_on_warn=True), cpus=[0])


@pytest.mark.parametrize("panic_on_warn", [False, True])
def test_schedule_bug_checks_panic_on_warn_before_its_stack_dump(panic_on_warn: bool) -> None:
    """``__schedule_bug()`` (kernel/sched/core.c, v5.9 and v6.2+ alike) prints the title, the
    held locks, the modules and "Preemption disabled at:", then checks ``panic_on_warn``, and
    only then calls ``dump_stack()`` and ``add_taint(TAINT_WARN, ...)``: with the sysctl set,
    the report has no stack of its own and the panic's header is not tainted W."""

    async def atomic_sleep(task: Task) -> None:
        task.preempt_count += 1
        await task.sleep_ns(1000)

    box: dict[str, Kernel] = {}
    cfg = KernelConfig(nr_cpus=1, panic_on_warn=panic_on_warn)
    if panic_on_warn:
        with pytest.raises(KernelPanic) as info:
            simulate(atomic_sleep, cfg, cpus=[0], setup=lambda k: box.setdefault("k", k))
        assert "Not tainted" in str(info.value)
    else:
        simulate(atomic_sleep, cfg, cpus=[0], setup=lambda k: box.setdefault("k", k))
    k = box["k"]
    report = k.locks.first_report
    assert report.startswith("BUG: scheduling while atomic: ")
    assert "Preemption disabled at:" in report
    assert ("Call Trace:" in report) is not panic_on_warn
    assert k.panic.test_taint(TAINT_WARN) is not panic_on_warn


def test_panic_on_warn_is_validated() -> None:
    """The sysctl is a boolean: anything else is refused when the config is built."""
    with pytest.raises(ValueError, match="panic_on_warn"):
        KernelConfig(panic_on_warn="yes")  # type: ignore[arg-type]


def test_simulate_result_carries_taint_and_reports() -> None:
    """``SimResult`` has the kernel's taint letters and its reports (JSON too)."""

    async def sleeps(task: Task) -> None:
        await task.sleep_ns(1000)

    clean = simulate(sleeps, KernelConfig(nr_cpus=1), cpus=[0])
    assert clean.taint == "" and clean.reports == ()

    async def sleeps_atomic(task: Task) -> None:
        task.preempt_count += 1
        await task.sleep_ns(1000)
        task.preempt_count -= 1

    res = simulate(sleeps_atomic, KernelConfig(nr_cpus=1), cpus=[0])
    assert res.taint == "W"
    assert res.to_json()["taint"] == "W"


def test_panic_state_defaults_print_nothing() -> None:
    """A bare ``PanicState`` (what a lone lock checker gets) starts untainted."""
    ps = PanicState()
    assert ps.print_tainted() == "Not tainted" and ps.taint == ""


def test_warn_alloc_dump_stack_prints_the_taint_and_kernel_symbols() -> None:
    """``warn_alloc()`` (mm/page_alloc.c) calls ``dump_stack()``, whose header is
    ``dump_stack_print_info()``'s (lib/dump_stack.c): taint and release like every other
    report, then the trace from ``warn_alloc`` down, kernel symbols only."""

    async def body(task: Task) -> list[str]:
        return task.data["k"].mm.page_alloc.warn.dump_stack(task)  # type: ignore[no-any-return]

    box: list[Kernel] = []

    async def main() -> None:
        async with boot(KernelConfig(nr_cpus=1)) as k:
            k.panic.add_taint(TAINT_WARN)
            t = k.spawn(body, 0, "alloc")
            t.data["k"] = k
            await k.run()
            box.append(k)
            assert t.result == [
                f"CPU: 0 PID: {t.pid} Comm: alloc Tainted: G        W         5.9.0-rcukit #1",
                "Call Trace:",
                *(f" {symbol_frame(f)}" for f in ("dump_stack", "warn_alloc",
                                                  "__alloc_pages_slowpath",
                                                  "__alloc_pages_nodemask")),
            ]

    run_sim(main)
    assert box


def test_kasan_report_shows_the_allocation_track_when_recorded() -> None:
    """``describe_object_stacks()`` (mm/kasan/report.c) prints "Allocated by task" and "Freed
    by task" with their stacks; rcukit shows the task, CPU, time and the line it recorded
    (allocation sites only with ``mm.debug_alloc_sites``)."""
    k, others, heads = _run(_kvfree_then_kfree, **{"mm.debug_alloc_sites": True})
    _nothing_lost(k, others, heads)
    [r] = k.panic.reports
    lines = r.text.split("\n")
    alloc = lines.index(next(x for x in lines if x.startswith("Allocated by task ")))
    assert lines[alloc].startswith("Allocated by task body on cpu 1 at ")
    assert lines[alloc + 1].startswith(" test_panic.py:")
    assert alloc < lines.index(next(x for x in lines if x.startswith("Freed by task ")))


# -- version boundaries, each checked against the kernel source or the commit that moved it ------


def _ctx() -> ReportContext:
    return ReportContext.at(0, 42, "kworker/0:1", 1_000_000)


def _free_error(kind: str = "double-free") -> MemoryDebugError:
    return MemoryDebugError(f"{kind} in kfree", kind=kind, ptr=0xFFFF888003A00000)


@pytest.mark.parametrize(
    ("version", "kind", "title"),
    [
        ((5, 19), "double-free", "BUG: KASAN: double-free or invalid-free in kfree"),
        ((5, 19), "invalid-free", "BUG: KASAN: double-free or invalid-free in kfree"),
        ((6, 0), "double-free", "BUG: KASAN: double-free in kfree"),
        ((6, 0), "invalid-free", "BUG: KASAN: invalid-free in kfree"),
    ],
)
def test_kasan_title_split_from_6_0(version: tuple[int, int], kind: str, title: str) -> None:
    """``print_error_description()`` (mm/kasan/report.c): "double-free or invalid-free" for
    both kinds until "kasan: separate double free case from invalid free" (Kuan-Ying Lee)
    passed ``KASAN_REPORT_DOUBLE_FREE`` / ``KASAN_REPORT_INVALID_FREE`` to
    ``kasan_report_invalid_free()``; Andrew Morton's "MM updates for 5.20-rc1" pull
    (tags/mm-stable-2022-08-03, merged as 6614a3c3164a) carries it, so 6.0 (5.20) prints
    the split titles (6.1 added the "Free of addr" line, not modelled)."""
    ps = PanicState(version=version, release=f"{version[0]}.{version[1]}.0-rcukit")
    r = ps.kasan_report_invalid_free(_ctx(), _free_error(kind), "kfree", ["kfree"])
    assert r.title == title
    assert r.text.split("\n")[1] == title.replace(" kfree", f" {symbol_frame('kfree')}")


@pytest.mark.parametrize(("version", "printed"), [((5, 17), [True, True]),
                                                 ((5, 18), [True, False])])
def test_kasan_invalid_free_is_one_shot_from_5_18(
    version: tuple[int, int], printed: list[bool]
) -> None:
    """Up to 5.17 ``kasan_report_invalid_free()`` called ``start_report()`` without
    ``report_enabled()`` (only ``__kasan_report()`` checked ``KASAN_BIT_REPORTED``), so every
    invalid free was printed. c068664c97c7 ("kasan: respect KASAN_BIT_REPORTED in all
    reporting routines", in mainline for 5.18-rc1: its hash is in linux-next-20220328's
    merge of Linus's tree, and 5.18-rc1 KASAN reports show the same series' ``print_report``)
    made it obey the one-shot: without ``kasan_multi_shot`` the second is not printed."""
    ps = PanicState(version=version)
    reports = [ps.kasan_report_invalid_free(_ctx(), _free_error(), "kfree", ["kfree"])
               for _ in range(2)]
    assert [r.printed for r in reports] == printed
    assert ps.counts["kasan"] == 2 and ps.taint == "B"


@pytest.mark.parametrize(("version", "taint_first"), [((5, 17), True), ((5, 18), False)])
def test_kasan_panic_on_warn_taints_first_before_5_18(
    version: tuple[int, int], taint_first: bool
) -> None:
    """``end_report()`` (mm/kasan/report.c): up to 5.17 it prints the closing rule, then
    ``add_taint(TAINT_BAD_PAGE, LOCKDEP_NOW_UNRELIABLE)``, then panics on ``panic_on_warn``,
    so the panic's header says "Tainted: G    B" and the report ends with "Disabling lock
    debugging due to kernel taint"; "kasan: disable LOCKDEP when printing reports" (the
    5.18 series of c068664c97c7) moved ``add_taint()`` after the panic checks, so a 5.18
    panic is "Not tainted"."""
    ps = PanicState(version=version, panic_on_warn=True)
    ps.debug_locks_off = lambda: True
    with pytest.raises(KernelPanic) as info:
        ps.kasan_report_invalid_free(_ctx(), _free_error(), "kfree", ["kfree"])
    kasan, panic = ps.reports
    assert info.value.title == "Kernel panic - not syncing: panic_on_warn set ..."
    disabling = "Disabling lock debugging due to kernel taint"
    assert (kasan.text.split("\n")[-1] == disabling) == taint_first
    assert kasan.taint == ("B" if taint_first else "")
    header = panic.text.split("\n")[1]
    assert header.endswith(("Tainted: G    B" + " " * 12 if taint_first else "Not tainted")
                           + f" {ps.release} #1")


@pytest.mark.parametrize(("version", "modules"), [((5, 9), False), ((5, 10), True)])
def test_warn_prints_modules_before_panic_on_warn_from_5_10(
    version: tuple[int, int], modules: bool
) -> None:
    """``__warn()`` (kernel/panic.c): up to 5.9 ``panic_on_warn`` panics right after the
    WARNING line and the message; 3f388f28639f ("panic: dump registers on panic_on_warn",
    merged with Andrew Morton's batch of the 5.10 merge window) moved the check after
    ``print_modules()`` and ``show_regs()``, so "Modules linked in:" is printed before the
    panic; the stack still comes from ``panic()``."""
    ps = PanicState(version=version, panic_on_warn=True)
    with pytest.raises(KernelPanic):
        ps.warn(_ctx(), "broken_cb", ["broken_cb"], message="ValueError: boom")
    warning = ps.reports[0].text.split("\n")
    assert warning[2] == "ValueError: boom"
    assert (warning[-1] == "Modules linked in:") == modules
    assert len(warning) == 3 + modules


@pytest.mark.parametrize(
    ("version", "origin"),
    [((6, 1), ""), ((6, 2), "kernel: ")],
)
def test_panic_on_warn_names_its_origin_from_6_2(version: tuple[int, int], origin: str) -> None:
    """79cc1ba7badf ("panic: Consolidate open-coded panic_on_warn checks", Kees Cook, 6.2;
    backported to stable 5.15.91 and others, which rcukit does not model) replaced
    ``panic("panic_on_warn set ...\\n")`` with ``check_panic_on_warn("kernel")`` in
    ``__warn()`` and ``check_panic_on_warn("KASAN")`` in ``end_report()``: "%s: panic_on_warn
    set ..."."""
    ps = PanicState(version=version, panic_on_warn=True)
    with pytest.raises(KernelPanic) as info:
        ps.warn(_ctx(), "broken_cb", ["broken_cb"])
    assert info.value.title == f"Kernel panic - not syncing: {origin}panic_on_warn set ..."
    ps = PanicState(version=version, panic_on_warn=True)
    with pytest.raises(KernelPanic) as info:
        ps.kasan_report_invalid_free(_ctx(), _free_error(), "kfree", ["kfree"])
    kasan = "KASAN: " if origin else ""
    assert info.value.title == f"Kernel panic - not syncing: {kasan}panic_on_warn set ..."


@pytest.mark.parametrize(("version", "zero"), [((5, 16), False), ((5, 17), True)])
def test_end_marker_oops_id_is_zero_from_5_17(version: tuple[int, int], zero: bool) -> None:
    """``print_oops_end_marker()`` (kernel/panic.c) printed a random boot-time ``oops_id``
    until e83a4472bf9f ("panic: remove oops_id", Sebastian Andrzej Siewior), which is in
    Linus's tree in the 5.17 merge window (pushed with it to a mirror on 2022-01-21); since
    then ``"---[ end trace %016llx ]---"`` with ``0ULL`` (kernel/panic.c, 6.17)."""
    ps = PanicState(version=version)
    marker = ps.warn(_ctx(), "broken_cb", ["broken_cb"]).text.split("\n")[-1]
    m = re.fullmatch(r"---\[ end trace ([0-9a-f]{16}) \]---", marker)
    assert m is not None and (m[1] == "0" * 16) == zero


@pytest.mark.parametrize(("version", "top"), [((5, 13), "dump_stack"), ((5, 14), "dump_stack_lvl")])
def test_dump_stack_lvl_is_the_innermost_frame_from_5_14(
    version: tuple[int, int], top: str
) -> None:
    """4469c0f17ec6 ("printk: introduce dump_stack_lvl()", Alexander Potapenko, posted in
    May 2021 after 5.13-rc1; lib/dump_stack.c at that commit) made ``dump_stack()`` a
    wrapper of ``dump_stack_lvl(KERN_DEFAULT)``, so the trace starts at ``dump_stack_lvl``
    (Ubuntu's 5.13 kernel has no such symbol, its 5.15 has it)."""
    lines = PanicState(version=version).dump_stack(_ctx(), ["kfree"])
    assert lines[lines.index("Call Trace:") + 1] == f" {symbol_frame(top)}"


@pytest.mark.parametrize(
    ("version", "mask", "header"),
    [
        ((6, 10), 1 << TAINT_WARN,
         ["CPU: 0 PID: 42 Comm: kworker/0:1 Tainted: G        W          6.10.0-rcukit #1"]),
        ((6, 11), 0, ["CPU: 0 UID: 0 PID: 42 Comm: kworker/0:1 Not tainted 6.11.0-rcukit #1"]),
        ((6, 11), (1 << TAINT_BAD_PAGE) | (1 << TAINT_WARN),
         ["CPU: 0 UID: 0 PID: 42 Comm: kworker/0:1 Tainted: G    B   W          "
          "6.11.0-rcukit #1",
          "Tainted: [B]=BAD_PAGE, [W]=WARN"]),
    ],
)
def test_dump_stack_header_gains_uid_and_verbose_taint_in_6_11(
    version: tuple[int, int], mask: int, header: list[str]
) -> None:
    """``dump_stack_print_info()`` (lib/dump_stack.c): "lib/dump_stack: report process UID
    in dump_stack_print_info()" (Suren Baghdasaryan) and "kernel/panic: add verbose logging
    of kernel taints in backtraces" (Jani Nikula) both came in Andrew Morton's "non-MM
    updates for 6.11-rc1" (tags/mm-nonmm-stable-2024-07-21, based on 6.10-rc5): 6.10-rc7
    reports print "CPU: n PID:" and no second line, 6.11-rc1 reports "CPU: n UID: 0 PID:"
    and, when tainted, ``print_tainted_verbose()`` ("Tainted: [W]=WARN")."""
    release = f"{version[0]}.{version[1]}.0-rcukit"
    ps = PanicState(version=version, release=release)
    ps.tainted_mask = mask
    lines = ps.dump_stack(_ctx(), ["kfree"])
    assert lines[:lines.index("Call Trace:")] == header
    assert dump_stack_print_info(0, 42, "kworker/0:1", mask, release, version) == header


def test_print_tainted_verbose_names_every_flag() -> None:
    """``taint_flags[]`` (kernel/panic.c, 6.17): ``TAINT_FLAG(name, c_true, ...)`` with
    ``.desc = #taint``; ``print_tainted_verbose()`` prints each set flag as "[c]=NAME"
    joined by ", ", over ``TAINT_FLAGS_COUNT`` flags (TAINT_FWCTL 'J' from 6.15)."""
    every = (1 << 20) - 1
    text = print_tainted_verbose(every, (6, 15))
    assert text.startswith("Tainted: [P]=PROPRIETARY_MODULE, [F]=FORCED_MODULE, ")
    assert text.endswith("[T]=RANDSTRUCT, [N]=TEST, [J]=FWCTL")
    assert text.count("=") == 20
    assert "FWCTL" not in print_tainted_verbose(every, (6, 14))
    assert print_tainted_verbose(0, (6, 15)) == "Not tainted"


def test_a_6_12_splat_after_a_kasan_report_prints_the_verbose_taint() -> None:
    """The lock splats share ``dump_stack_print_info()`` with the bug reports (lib/dump_stack.c
    is one function): on a 6.12 kernel a WARN and a "scheduling while atomic" after a KASAN
    report carry "UID: 0" and the verbose taint line of what came before them."""

    k, others, heads = _run(_kasan_then_warn_then_splat, profile="v6.12")
    _nothing_lost(k, others, heads)
    kasan, warn = k.panic.reports
    assert "Tainted: [" not in kasan.text and " UID: 0 PID: " in kasan.text
    assert "Tainted: [B]=BAD_PAGE" in warn.text.split("\n")
    [splat] = k.locks.printed_reports
    assert "Tainted: [B]=BAD_PAGE, [W]=WARN" in splat.format().split("\n")
