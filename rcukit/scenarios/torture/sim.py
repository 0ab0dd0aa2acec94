"""rcutorture on the simulated kernel: readers, writers, fake writers, hotplug, faults, stalls.

What the kernel's ``rcutorture`` checks (:mod:`.common`), checked here on virtual time:

* A small pool of ``struct rcu_torture`` elements (``10 * RCU_TORTURE_PIPE_LEN`` of them, as in
  the kernel); each one in use is a ``kmalloc()`` object of the simulated slab, so a reader can
  ask KASAN (``mm.check_access``) whether the memory it holds is still live.
* Writers publish a fresh element as ``rcu_torture_current`` (``rcu_assign_pointer``) and retire
  the old one through a primitive picked at random, as ``rcu_torture_writer`` picks its
  ``synctype``: ``call_rcu`` (the callback frees it), two-argument and head-less
  ``kvfree_rcu``, or a wait then ``kfree``: ``synchronize_rcu``, ``synchronize_rcu_expedited``
  (twice), ``cond_synchronize_rcu`` on a cookie, a ``start_poll_synchronize_rcu`` poll loop.
  Every retirement frees the object one grace period later, so each path is checked by the
  readers' KASAN check, and the waits are also checked against their cookies. A
  retired element's *pipe count* is 1 at removal and advances by one at every grace period after
  that, up to ``RCU_TORTURE_PIPE_LEN``, when its slot goes back to the free list.
* Readers take ``rcu_read_lock``, read ``rcu_torture_current``, maybe dawdle (rcutorture's
  ``rcu_read_delay``: spins inside the section that cross tick boundaries, a long one rarely,
  a preemption in preemptible builds, see :meth:`_Torture.read_delay`), then record the
  element's pipe count in the ``Reader Pipe`` histogram and the grace periods that elapsed
  meanwhile in ``Reader Batch``, and check its memory is live. A pipe count
  of 2 or more means a whole grace period ended while the reader still held the element: an RCU
  failure. So is a use after free.
* Fake writers hammer the update side: ``synchronize_rcu``, ``synchronize_rcu_expedited``,
  ``cond_synchronize_rcu`` on a cookie, polling, and now and then ``rcu_barrier`` after a
  ``call_rcu`` of their own, which must have run when the barrier returns.
* A callback invoked twice, a wait whose cookie is not done after it, a failed barrier and a
  hung kernel (every task blocked) are failures too; so is ``gp_violations`` of kvfree_rcu's
  reclaim (an object freed before a full grace period since it was queued).
* Optional: ``kvfree_torture`` floods ``kvfree_rcu()`` in bursts, runs of them on one channel
  (slab, then vmalloc), with two readers holding 40..80 ms sections, which finds the pre-6.3
  ``krwp`` reuse (:meth:`_Torture.kvfree_flood`) on the profiles that have it.
* Optional: an *onoff* task offlines and onlines random non-boot CPUs (``torture_onoff``), fault
  injection on page and slab allocation, and a *stall* task that spins inside a read section
  past the stall timeout (``stall_cpu``), which must produce a stall report and nothing worse.

How the pipe count follows grace periods (rcutorture advances it from a chain of ``call_rcu``
callbacks, ``rcu_torture_cb``; here it is polled instead): at removal the writer takes a
``get_state_synchronize_rcu()`` cookie, the ``gp_seq`` at which the first full grace period after
the removal is over (kernel.md §6); every later grace period ends 4 further on, so the pipe count
is 1 plus the number of those ends ``gp_seq`` has passed (:func:`full_gps_since`). That counts
every full grace period, as the chain would with instantly re-queued callbacks, and asks the
engine for no grace period of its own: a callback chain keeps the GP machinery busy back to
back, which on a machine whose idle CPUs report at once costs thousands of grace periods per
simulated second for nothing. Writers reap slots whose count reached the end of the pipe.

Shared state (``rcu_torture_current``, pipe counts) is read and written only after
``task.sync()``, so no CPU sees another's future (see :mod:`rcukit.sched.sim`).

``run_torture(..., subsystems=...)`` boots other subsystem classes instead of the stock ones:
the tests boot an RCU whose grace periods end a reader early
(``tests/torture_broken.py``), to show this test catches a real RCU bug. The package ships no
broken build, and the command line boots only the stock kernel.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import attrs

from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.errors import (
    ConfigError,
    CpuHotplugError,
    KernelPanic,
    MemoryDebugError,
    SimulationError,
    did_you_mean,
)
from rcukit.kernel import ALL_SUBSYSTEMS, Kernel, Subsystems, boot, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.mm import Mm
from rcukit.rcu.gpseq import RCU_SEQ_STATE_MASK, ULONG_MASK, ULONG_MAX_HALF, rcu_seq_diff
from rcukit.rcu.kvfree.variants import builtin_variants
from rcukit.rcu.segcblist import RcuHead
from rcukit.scenarios.torture.common import (
    RCU_TORTURE_PIPE_LEN,
    Slot,
    TortureParams,
    TortureResult,
    TortureRun,
    TortureState,
)
from rcukit.sched.sim import Task

__all__ = [
    "WRITER_MODES",
    "full_gps_since",
    "run_torture",
    "run_torture_async",
    "torture_config",
]

#: ``struct rcu_torture`` on 64-bit: rcu_head (16) + pipe count + list_head + mbtest = 48 bytes.
RTORT_SIZE: Final = 48
#: ``rtort_rcu`` is the first member, so the rcu_head sits at the object's address.
RTORT_RH_OFFSET: Final = 0
#: How writers retire the old element, one picked at random each time as ``rcu_torture_writer``
#: picks its ``synctype`` (v6.1 ``kernel/rcu/rcutorture.c``: RTWS_DEF_FREE, RTWS_EXP_SYNC,
#: RTWS_COND_GET, RTWS_POLL_GET, RTWS_SYNC), plus the two ``kvfree_rcu`` forms.
WRITER_MODES: Final = (
    "call_rcu", "kvfree_rcu", "kvfree_rcu_mightsleep", "synchronize_rcu",
    "synchronize_rcu_expedited", "cond_synchronize_rcu", "poll_state_synchronize_rcu",
)
#: What fake writers do (``rcu_torture_fakewriter``'s sync types), plus ``rcu_barrier``.
FAKEWRITER_OPS: Final = ("sync", "exp_sync", "cond_sync", "poll")

_GFP_KERNEL = int(GFP_KERNEL)
_CTR_MASK = ULONG_MASK & ~RCU_SEQ_STATE_MASK
#: ``rcu_read_delay``: the short spin and the long one (µs, ms).
_SHORTDELAY_US = 200
_LONGDELAY_MS = 300
#: Reads whose section spans tick boundaries: one in this many, for up to this many ticks.
_SPAN_TICKS_ONE_IN = 4
_SPAN_TICKS_MAX = 4
#: kvfree torture: a burst of this many objects per channel (more than a block's
#: ``KVFREE_BULK_MAX_ENTR``, so v6.1's kick brings the monitor forward to the next jiffy), and
#: the gap between bursts (more than v5.x's ``KFREE_DRAIN_JIFFIES`` = HZ/50).
_KV_BURST = 600
_KV_GAP_MS = 21
#: kvfree torture: a burst switches channel one time in this many, so a channel's run of
#: bursts (about 100 ms) is as long as a grace period held open by the kvfree readers.
_KV_SWITCH_ONE_IN = 4
#: kvfree torture: one read in this many holds its section 30..80 ms, so some reader still
#: holds an object when a batch freed early is reclaimed.
#: kvfree torture: the kvfree reader's sections, longer than a monitor period plus a burst
#: gap, so the grace period of a batch outlives the detach of the next channel.
_KV_READER_MS = (40, 80)
_KV_LONG_READ_ONE_IN = 8


def torture_config(
    base: KernelConfig | None = None,
    *,
    seed: int = 0,
    variant: str | None = None,
    profile: str | None = None,
    kernel_config: str = "default",
    preempt_rcu: bool = False,
    panic_on_warn: bool = False,
) -> KernelConfig:
    """The kernel a torture run boots: ``base`` with the run's seed, build, variant and faults.

    ``panic_on_warn`` sets the sysctl (:attr:`KernelConfig.panic_on_warn`): the first bug
    report stops the run with a kernel panic instead of tainting the kernel.

    ``preempt_rcu`` builds ``CONFIG_PREEMPT_RCU=y`` (rcutorture's TREE01-03 scenarios): readers
    are preemptible, a reader preempted inside its section holds up grace periods from the
    blocked-tasks list, and the tick inside a section must report no quiescent state.

    ``CONFIG_DEBUG_OBJECTS_RCU_HEAD``-style checking is on (rcutorture's configs enable it), so
    a double ``kvfree_rcu`` and a free before its grace period are caught by the kernel too.
    """
    cfg = base or KernelConfig()
    if kernel_config not in KERNEL_CONFIG_NAMES:
        raise ConfigError(
            f"kernel config {kernel_config!r} is unknown; allowed: {', '.join(KERNEL_CONFIG_NAMES)}"
        )
    if variant is not None:
        known = builtin_variants()
        if variant not in known:
            raise ConfigError(
                f"unknown allocator variant {variant!r}{did_you_mean(variant, known)}; "
                f"known: {', '.join(sorted(known))}"
            )
    changes: dict[str, Any] = {"seed": seed, "kvfree.debug_objects": True}
    if preempt_rcu:
        changes["preempt_rcu"] = True
    if panic_on_warn:
        changes["panic_on_warn"] = True
    if variant is not None:
        changes["kvfree.variant"] = variant
    if profile is not None:
        changes["kvfree.profile"] = profile
    return cfg.with_kernel_config(kernel_config).replace(**changes)


# ---------------------------------------------------------------------------- the run


class _Rtort(Slot):
    """``struct rcu_torture``: a pool slot; ``ptr`` is its kmalloc'ed object while in use."""

    __slots__ = ("mbtest", "ptr")

    def __init__(self, idx: int) -> None:
        super().__init__(idx)
        self.ptr = 0
        self.mbtest = 0

    def recycle(self) -> None:
        self.mbtest = 0
        self.ptr = 0


class _FreeHead(RcuHead):
    """The ``rcu_head`` a ``call_rcu`` retirement queues: frees the object after the GP."""

    __slots__ = ("el", "gen", "invoked", "ptr")

    def __init__(self, el: _Rtort, ptr: int) -> None:
        super().__init__(None)
        self.el = el
        self.ptr = ptr
        self.gen = el.gen
        self.invoked = False


class _BarrierHead(RcuHead):
    """``rcu_torture_barrier_cbs``' callback: ``rcu_barrier()`` must not return before it ran."""

    __slots__ = ("invoked",)

    def __init__(self) -> None:
        super().__init__(None)
        self.invoked = 0


@attrs.define(eq=False, kw_only=True)
class _State(TortureState[_Rtort]):
    """The shared state plus the simulated kernel's side: the end, the published element,
    the objects kmalloc'ed and kfree'd directly."""

    DOUBLE_FREE_WORDS = ("double-free",)
    USE_AFTER_FREE_WORDS = ("use-after-free",)

    end_ns: int
    current: _Rtort | None = None
    kfreed: int = 0
    allocated: set[int] = attrs.field(factory=set)
    #: kvfree torture: the object published per channel (slab, vmalloc) for readers to hold.
    kv_current: list[int] = attrs.field(factory=lambda: [0, 0])
    #: kvfree torture: objects the flood task queued with ``kvfree_rcu()``.
    kv_queued: int = 0
    kernel: Kernel | None = None


def full_gps_since(cookie: int, gp_seq: int) -> int:
    """Whole grace periods that ended since ``cookie`` was taken, as of ``gp_seq``.

    ``cookie`` is ``get_state_synchronize_rcu()``: the ``gp_seq`` at which the first full GP
    after the snapshot is over (``rcu_seq_snap``, kernel.md §6). Each later GP ends 4
    (``1 << RCU_SEQ_CTR_SHIFT``) further on, so with ``c`` the last completed value,
    ``(c - cookie) / 4 + 1`` GPs are over, wrap-safe.
    """
    done = (gp_seq & _CTR_MASK) - cookie & ULONG_MASK
    if done > ULONG_MAX_HALF:
        return 0
    return (done >> 2) + 1


class _Torture(TortureRun[_Rtort]):
    """The kthreads of one run, bound to one kernel."""

    RNG_PREFIX = "rcutorture"
    s: _State

    def __init__(self, k: Kernel, p: TortureParams, state: _State) -> None:
        super().__init__(p, state, k.config.seed)
        self.k = k
        self.rcu = k.rcu
        self.mm = k.mm
        self.kv = k.kvfree
        self.tick_ns = k.config.tick_ns
        self.nreaders = p.real_readers(k.config.nr_cpus)
        #: The head-less ``kvfree_rcu(ptr)`` exists from v5.9 (3042f83f19be) only.
        self.writer_modes = tuple(
            m for m in WRITER_MODES if m != "kvfree_rcu_mightsleep" or k.kvfree.profile.headless
        )

    def full_gps(self, cookie: int) -> int:
        return full_gps_since(cookie, self.rcu.gp_seq)

    # -- the pool ---------------------------------------------------------------------------
    async def alloc(self, task: Task) -> _Rtort | None:
        """``rcu_torture_alloc``: a free slot with a fresh object, or None (rtaf)."""
        s = self.s
        if not s.free:
            s.rtaf += 1
            return None
        ptr = await self.mm.kmalloc(task, RTORT_SIZE, _GFP_KERNEL)
        if not ptr:
            s.rtaf += 1  # kmalloc failed (fault injection or memory pressure)
            return None
        el = s.take_slot()
        el.ptr = ptr
        el.mbtest = 1
        s.allocated.add(ptr)
        return el

    async def kfree(self, task: Task, ptr: int, where: str) -> None:
        try:
            await self.mm.kfree(task, ptr)
        except MemoryDebugError as exc:
            self.s.memory_error(exc, where)
            return
        self.s.kfreed += 1

    async def free_cb(self, task: Task, head: RcuHead) -> None:
        """The ``call_rcu`` retirement's callback: the object's grace period is over.

        A callback runs once per ``call_rcu()`` (the kernel's CONFIG_DEBUG_OBJECTS_RCU_HEAD
        catches a second invocation): a second one is reported and frees nothing.
        """
        assert isinstance(head, _FreeHead)
        if head.invoked:
            self.s.warn(f"call_rcu callback for element {head.el.idx} invoked twice "
                        f"(on CPU {task.cpu.id} at {task.now_ns} ns)")
            return
        head.invoked = True
        if head.el.gen == head.gen:
            head.el.mbtest = 0
        await self.kfree(task, head.ptr, "call_rcu callback")

    # -- writers ----------------------------------------------------------------------------
    async def writer(self, task: Task) -> None:
        me: int = task.data["me"]
        rng = self.rng("writer", me)
        s = self.s
        retired = s.retired_lists[me]
        while True:
            await task.sleep_ns(rng.randint(500_000, 1_500_000))  # torture_hrtimeout_us(500, 1000)
            if task.now_ns >= s.end_ns:
                return
            await task.sync()
            self.reap(retired)
            el = await self.alloc(task)
            if el is None:
                continue
            await task.sync()
            old = s.current
            s.current = el  # rcu_assign_pointer(rcu_torture_current, rp)
            s.version += 1
            if old is None:
                continue
            self.retire_start(task, old, retired)
            modes = self.writer_modes
            await self.retire(task, old, modes[rng.randrange(len(modes))], rng)

    def retire_start(self, task: Task, old: _Rtort, retired: deque[_Rtort]) -> None:
        """Pipe count 1 from now (caller synced)."""
        self.s.retire_slot(old, self.rcu.get_state_synchronize_rcu(task), retired)

    async def retire(
        self, task: Task, old: _Rtort, mode: str, rng: random.Random | None = None
    ) -> None:
        """Free ``old`` one grace period from now, the way ``mode`` says.

        The waiting modes are ``rcu_torture_writer``'s (v6.1 ``kernel/rcu/rcutorture.c``):
        RTWS_SYNC and RTWS_EXP_SYNC take a full cookie first and, after the wait (the
        expedited one twice, as v6.1 does), ``WARN`` unless ``poll_state_synchronize_rcu_full``
        says it is done ("Cookie check"); RTWS_COND_GET sleeps up to ``gp_cond_wi`` (16
        jiffies) between ``get_state_synchronize_rcu()`` and ``cond_synchronize_rcu()``;
        RTWS_POLL_GET sleeps up to 16 jiffies between polls of its
        ``start_poll_synchronize_rcu()`` cookie. Then the object is freed at once, so a wait
        that returned early is a use after free for any reader still holding it.
        """
        ptr = old.ptr
        rcu = self.rcu
        tick = self.tick_ns
        try:
            if mode == "call_rcu":
                rcu.call_rcu(task, _FreeHead(old, ptr), self.free_cb)
                return
            if mode == "kvfree_rcu":
                await self.kv.kvfree_rcu(task, ptr, ptr + RTORT_RH_OFFSET)
                return
            if mode == "kvfree_rcu_mightsleep":
                await self.kv.kvfree_rcu_mightsleep(task, ptr)
                return
            if mode == "synchronize_rcu_expedited":
                full = rcu.get_state_synchronize_rcu_full(task)
                await rcu.synchronize_rcu_expedited(task)
                await rcu.synchronize_rcu_expedited(task)
                self.cookie_check(task, rcu.poll_state_synchronize_rcu_full(full), mode)
            elif mode == "cond_synchronize_rcu":
                cookie = rcu.get_state_synchronize_rcu(task)
                if rng is not None:
                    await task.sleep_ns(rng.randrange(16 * tick))
                await rcu.cond_synchronize_rcu(task, cookie)
                self.cookie_check(task, rcu.poll_state_synchronize_rcu(cookie), mode)
            elif mode == "poll_state_synchronize_rcu":
                cookie = rcu.start_poll_synchronize_rcu(task)
                while True:
                    await task.sync()
                    if rcu.poll_state_synchronize_rcu(cookie):
                        break
                    await task.sleep_ns((rng.randrange(16) if rng else 0) * tick + tick)
            else:
                full = rcu.get_state_synchronize_rcu_full(task)
                await rcu.synchronize_rcu(task)
                self.cookie_check(task, rcu.poll_state_synchronize_rcu_full(full), mode)
            old.mbtest = 0
            await self.kfree(task, ptr, f"{mode} retirement")
        except MemoryDebugError as exc:
            self.s.memory_error(exc, mode)

    def cookie_check(self, task: Task, done: bool, mode: str) -> None:
        """``do_rtws_sync``'s "Cookie check": the wait must have completed the cookie."""
        if not done:
            self.s.warn(f"{task.comm}: Cookie check failed {mode}() on CPU {task.cpu.id} at "
                        f"{task.now_ns} ns: the grace period taken before it is not over")

    # -- readers ----------------------------------------------------------------------------
    async def reader(self, task: Task) -> None:
        me: int = task.data["me"]
        rng = self.rng("reader", me)
        s = self.s
        pause = self.p.reader_delay_us * 1000
        while task.now_ns < s.end_ns:
            await self.one_read(task, rng)
            await task.sleep_ns(rng.randint(pause // 2, pause + pause // 2))

    async def one_read(self, task: Task, rng: random.Random) -> None:
        """``rcu_torture_one_read``."""
        rcu = self.rcu
        s = self.s
        rcu.rcu_read_lock(task)
        try:
            await task.sync()
            started = rcu.gp_seq
            p = s.current
            if p is None:
                return
            ptr = p.ptr
            gen = p.gen
            kv_ptr = s.kv_current[rng.randrange(2)]
            if p.mbtest == 0:
                s.mberror += 1
                s.error(f"reader {task.comm} found element {p.idx} marked free (rtmbe)")
            cpu = task.cpu.id
            await self.read_delay(task, rng)
            await task.sync()
            pipe = self.pipe_seen(p, gen)
            completed = min(rcu_seq_diff(rcu.gp_seq, started), RCU_TORTURE_PIPE_LEN)
            where = f"reader {task.comm}"
            if task.cpu.id != cpu:
                where += f" (migrated from CPU {cpu} inside its section)"
            for held in (ptr, kv_ptr):
                if not held:
                    continue
                try:
                    self.mm.check_access(held, task)
                except MemoryDebugError as exc:
                    s.memory_error(exc, where)
            s.record_read(pipe, completed,
                          f"reader {task.comm} on CPU {task.cpu.id} at {task.now_ns} ns", p.idx)
        finally:
            rcu.rcu_read_unlock(task)

    async def read_delay(self, task: Task, rng: random.Random) -> None:
        """``rcu_read_delay``: a long spin rarely, a short one sometimes, a preemption maybe.

        The odds are rcutorture's scaled to far fewer reads per second: the long delay
        (300 ms, to push the GP machinery) about once per ``nreaders * 20000`` reads, the short
        one (200 µs) once per ``2 * nreaders``. Every delay spins *inside* the section a tick
        at a time with a preemption point at each boundary, as rcutorture's ``mdelay``/
        ``udelay`` inside ``rcu_torture_one_read`` do, so the scheduling-clock interrupt lands
        inside the reader: on a PREEMPT_RCU build ``rcu_sched_clock_irq`` must see the reader
        and report no quiescent state, and a task woken meanwhile preempts it (round robin at
        the tick), which queues it on the blocked list; on !PREEMPT the tick waits for the
        outermost ``rcu_read_unlock`` (preemption is off). One read in
        ``_SPAN_TICKS_ONE_IN`` spans up to ``_SPAN_TICKS_MAX`` ticks. Preemptible builds are
        also preempted (``torture_preempt_schedule``) or blocked for up to a jiffy inside the
        section one read in ``2 * nreaders``. The kvfree torture adds 30..80 ms sections.
        """
        n = self.nreaders
        tick = self.tick_ns
        if not rng.randrange(n * 20_000):
            await self.spin(task, _LONGDELAY_MS * 1_000_000)
        if not rng.randrange(2 * n):
            await self.spin(task, _SHORTDELAY_US * 1000)
        if not rng.randrange(_SPAN_TICKS_ONE_IN):
            await self.spin(task, rng.randrange(tick // 2, _SPAN_TICKS_MAX * tick))
        if self.p.kvfree_torture and not rng.randrange(_KV_LONG_READ_ONE_IN):
            await self.spin(task, rng.randrange(30, 80) * 1_000_000)
        if self.rcu.preemptible:
            r = rng.randrange(4 * n)
            if r == 0:
                await task.sleep_ns(rng.randrange(1, tick))
            elif r < 2:
                await task.yield_cpu()

    async def spin(self, task: Task, ns: int) -> None:
        """``mdelay``: busy for ``ns``, a tick at a time (preemptible where the build allows)."""
        tick = self.tick_ns
        while ns > 0:
            step = min(ns, tick)
            task.charge(step)
            ns -= step
            await task.preempt_point()

    # -- fake writers, hotplug, stall -------------------------------------------------------
    async def fakewriter(self, task: Task) -> None:
        """``rcu_torture_fakewriter``: update-side primitives at random, no updates."""
        me: int = task.data["me"]
        rng = self.rng("fakewriter", me)
        rcu = self.rcu
        s = self.s
        tick = self.tick_ns
        nfake = max(1, self.p.nfakewriters)
        while True:
            await task.sleep_ns(rng.randrange(10) * tick + rng.randrange(tick))
            if task.now_ns >= s.end_ns:
                return
            if not rng.randrange(nfake * 8):
                await self.barrier(task)
                continue
            op = FAKEWRITER_OPS[rng.randrange(len(FAKEWRITER_OPS))]
            if op == "sync":
                await rcu.synchronize_rcu(task)
            elif op == "exp_sync":
                await rcu.synchronize_rcu_expedited(task)
            elif op == "cond_sync":
                cookie = rcu.get_state_synchronize_rcu(task)
                await task.sleep_ns(rng.randrange(16) * tick)
                await rcu.cond_synchronize_rcu(task, cookie)
            else:
                cookie = rcu.start_poll_synchronize_rcu(task)
                while True:
                    await task.sync()
                    if rcu.poll_state_synchronize_rcu(cookie):
                        break
                    await task.sleep_ns((rng.randrange(16) + 1) * tick)
            s.fake[op] += 1

    def barrier_cb(self, task: Task, head: RcuHead) -> None:
        assert isinstance(head, _BarrierHead)
        head.invoked += 1

    async def barrier(self, task: Task) -> None:
        """``rcu_torture_barrier``: queue a callback, ``rcu_barrier()``, check it ran.

        rcutorture's barrier kthreads each ``call_rcu()`` one callback, then
        ``rcu_barrier()`` must not return before every one of them was invoked
        ("rcu_barrier() failed", ``n_barrier_errors``; v6.1 ``kernel/rcu/rcutorture.c``,
        ``rcu_torture_barrier``); here the fake writer queues its own.
        """
        head = _BarrierHead()
        self.rcu.call_rcu(task, head, self.barrier_cb)
        await self.rcu.rcu_barrier(task)
        self.s.fake["barrier"] += 1
        if head.invoked != 1:
            self.s.warn(f"{task.comm}: rcu_barrier() failed: a callback queued before it was "
                        f"invoked {head.invoked} times when it returned (CPU {task.cpu.id}, "
                        f"{task.now_ns} ns)")

    # -- kvfree torture ---------------------------------------------------------------------
    async def kv_alloc(self, task: Task, chan: int) -> int:
        """A 48-byte object for ``chan``: kmalloc (slab channel) or vmalloc (vmalloc one).

        Its leak check is the count (queued against freed by kvfree_rcu): its address is
        reused by other slab users, so it does not join ``allocated``."""
        if chan:
            ptr = await self.mm.vmalloc(task, RTORT_SIZE)
        else:
            ptr = await self.mm.kmalloc(task, RTORT_SIZE, _GFP_KERNEL)
        return ptr

    async def kv_queue(self, task: Task, ptrs: list[int], where: str) -> None:
        s = self.s
        for ptr in ptrs:
            try:
                await self.kv.kvfree_rcu(task, ptr, ptr + RTORT_RH_OFFSET)
            except MemoryDebugError as exc:
                s.memory_error(exc, where)
            s.kv_queued += 1
            s.retired += 1

    async def kvfree_flood(self, task: Task) -> None:
        """rcukit's kvfree torture: bursts of ``kvfree_rcu()`` in runs on one channel.

        Each burst publishes a fresh object of one channel (slab or vmalloc) for readers to
        hold, then queues the previous one and ``_KV_BURST - 1`` more of that channel; bursts
        come every ``_KV_GAP_MS`` to 10 ms more, and one in ``_KV_SWITCH_ONE_IN`` switches
        channel. The kvfree readers keep grace periods tens of milliseconds long, so a
        ``krwp`` that took one channel's blocks while the previous grace period ran waits
        through its own grace period with its other channel free; a switch then makes the
        monitor detach the other channel. Before ``need_wait_for_krwp_work()`` (5da7cb193db3,
        v6.3-rc6; backported to stable) it attaches it to that busy ``krwp``,
        ``queue_rcu_work()`` of the pending work asks for no new grace period, and the new
        objects are freed when the one already running ends: the reclaim's ``gp_violations``
        (and, when a reader still holds one, KASAN) sees it.
        """
        rng = self.rng("kvfree", 0)
        s = self.s
        chan = 0
        while True:
            await task.sleep_ns(rng.randrange(_KV_GAP_MS, _KV_GAP_MS + 10) * 1_000_000)
            if task.now_ns >= s.end_ns:
                return
            fresh = await self.kv_alloc(task, chan)
            if not fresh:
                continue
            await task.sync()
            old = s.kv_current[chan]
            s.kv_current[chan] = fresh
            ptrs = [old] if old else []
            for _ in range(_KV_BURST - 1):
                ptr = await self.kv_alloc(task, chan)
                if ptr:
                    ptrs.append(ptr)
            await self.kv_queue(task, ptrs, "kvfree torture")
            if not rng.randrange(_KV_SWITCH_ONE_IN):
                chan ^= 1

    async def kvfree_reader(self, task: Task) -> None:
        """rcukit's kvfree torture reader: back-to-back 40..80 ms read sections.

        It is inside a section almost all the time, so most grace periods start while it
        reads and last until it leaves: long enough for the monitor to detach the next burst's
        channel while the previous batch still waits (see :meth:`kvfree_flood`). It holds the
        objects published for readers and checks them at the end, like the other readers.
        """
        rng = self.rng("kvfree_reader", task.data["me"])
        rcu = self.rcu
        s = self.s
        lo, hi = _KV_READER_MS
        while task.now_ns < s.end_ns:
            rcu.rcu_read_lock(task)
            try:
                await task.sync()
                held = [ptr for ptr in s.kv_current if ptr]
                await self.spin(task, rng.randrange(lo, hi) * 1_000_000)
                await task.sync()
                for ptr in held:
                    try:
                        self.mm.check_access(ptr, task)
                    except MemoryDebugError as exc:
                        s.memory_error(exc, f"reader {task.comm}")
            finally:
                rcu.rcu_read_unlock(task)
            await task.sleep_ns(rng.randrange(1, self.tick_ns))

    async def onoff(self, task: Task) -> None:
        """``torture_onoff``: every interval, flip a random non-boot CPU offline or online."""
        rng = self.rng("onoff", 0)
        rcu = self.rcu
        s = self.s
        ncpus = self.k.config.nr_cpus
        interval = int(self.p.onoff_interval * 1e9)
        await task.sleep_ns(int(self.p.onoff_holdoff * 1e9))
        while True:
            await task.sleep_ns(interval)
            if task.now_ns >= s.end_ns:
                return
            cpu = 1 + rng.randrange(ncpus - 1)
            await task.sync()
            op, flip = (
                ("offline", rcu.cpu_down) if self.k.cpus[cpu].online else ("online", rcu.cpu_up)
            )
            s.onoff[op] += 1
            try:
                await flip(task, cpu)
            except CpuHotplugError as exc:
                s.log.append(f"rcu-torture: torture_onoff: {op} {cpu} failed: {exc}")
            else:
                s.onoff[f"{op}_ok"] += 1

    async def stall(self, task: Task) -> None:
        """``rcu_torture_stall``: spin ``stall_cpu`` seconds inside a read-side section."""
        await task.sleep_ns(int(self.p.stall_holdoff() * 1e9))
        s = self.s
        s.log.append(f"rcu-torture: rcu_torture_stall start on CPU {task.cpu.id}.")
        with self.rcu.read_lock(task):
            await self.spin(task, int(self.p.stall_cpu * 1e9))
        s.log.append("rcu-torture: rcu_torture_stall end.")

    # -- the end ----------------------------------------------------------------------------
    async def cleanup(self, task: Task) -> None:
        """``rcu_torture_cleanup``: CPUs back, the last element retired, barriers until empty."""
        rcu = self.rcu
        s = self.s
        for cpu in self.k.cpus:
            if not cpu.online:
                await rcu.cpu_up(task, cpu.id)
        await task.sync()
        last = s.current
        s.current = None
        if last is not None:
            self.retire_start(task, last, s.retired_lists[-1])
            await self.retire(task, last, "synchronize_rcu")
        kv_last = [ptr for ptr in s.kv_current if ptr]
        s.kv_current = [0, 0]
        await self.kv_queue(task, kv_last, "kvfree torture cleanup")
        await self.drain(partial(rcu.synchronize_rcu, task), task.sync)
        await rcu.rcu_barrier(task)
        await self.kv.kvfree_rcu_barrier(task)
        s.finished = True


def _spawn_all(k: Kernel, t: _Torture, p: TortureParams) -> None:
    n = k.config.nr_cpus
    slot = 0

    def place(fn: Callable[[Task], Any], name: str, me: int) -> None:
        nonlocal slot
        task = k.spawn(fn, slot % n, name)
        task.data["me"] = me
        slot += 1

    for i in range(p.nwriters):
        place(t.writer, f"rcu_torture_writer/{i}", i)
    for i in range(t.nreaders):
        place(t.reader, f"rcu_torture_reader/{i}", i)
    for i in range(p.nfakewriters):
        place(t.fakewriter, f"rcu_torture_fakewriter/{i}", i)
    if p.kvfree_torture:
        k.spawn(t.kvfree_flood, 0, "rcu_torture_kvfree")
        # Two, overlapping, so a grace period that starts as one leaves still waits for the
        # other; not on the GP kthread's CPU (the last): on !PREEMPT that delays GP starts.
        for i in range(2):
            cpu = (1 + i) % max(1, n - 1)
            k.spawn(t.kvfree_reader, cpu, f"rcu_torture_kvfree_reader/{i}").data["me"] = i
    if p.onoff_interval > 0 and n > 1:
        k.spawn(t.onoff, 0, "torture_onoff")
    if p.stall_cpu > 0:
        k.spawn(t.stall, 1 % n, "rcu_torture_stall")


def _stall_config(cfg: KernelConfig, p: TortureParams, log: list[str]) -> KernelConfig:
    """Make the stall outlive the stall timeout (which is what ``stall_cpu`` is for)."""
    if p.stall_cpu <= 0:
        return cfg
    stall_ms = int(p.stall_cpu * 1000)
    if stall_ms > cfg.rcu_stall_timeout_ms:
        return cfg
    timeout = max(1, stall_ms // 2)
    log.append(
        f"rcu-torture: stall_cpu={p.stall_cpu:g} s is shorter than the stall timeout "
        f"({cfg.rcu_stall_timeout_ms} ms): timeout lowered to {timeout} ms"
    )
    return cfg.replace(rcu_stall_timeout_ms=timeout)


async def run_torture_async(
    params: TortureParams,
    config: KernelConfig | None = None,
    *,
    subsystems: Subsystems = ALL_SUBSYSTEMS,
) -> TortureResult:
    """Run rcutorture on a fresh simulated kernel (from inside ``trio.run`` on a MockClock).

    ``subsystems`` may swap in another class for a subsystem, e.g. an RCU engine with a bug
    the test should catch.
    """
    t0 = time.perf_counter()
    log: list[str] = []
    cfg = _stall_config(config or torture_config(), params, log)
    if params.fault_rate:
        cfg = cfg.replace(**{
            "mm.fail_page_alloc_probability": params.fault_rate,
            "mm.failslab_probability": params.fault_rate,
        })
    if cfg.nr_cpus < 2 and params.onoff_interval > 0:
        raise ConfigError("onoff_interval needs at least 2 CPUs (CPU 0 never goes offline)")
    state = _State.new(_Rtort, params.nwriters, (*FAKEWRITER_OPS, "barrier"),
                       end_ns=int(params.duration * 1e9), log=log)
    crash: BaseException | None = None
    try:
        async with boot(cfg, subsystems=subsystems) as k:
            state.kernel = k
            t = _Torture(k, params, state)
            _spawn_all(k, t, params)
            await k.run()
            k.spawn(t.cleanup, 0, "rcu_torture_cleanup")
            await k.run()
    except* MemoryDebugError as eg:
        crash = eg
        for exc in eg.exceptions:
            assert isinstance(exc, MemoryDebugError)
            state.memory_error(exc, "kernel")
    except* KernelPanic as panicked:
        # panic_on_warn: the first report stopped the machine.
        crash = panicked
        for oops in panicked.exceptions:
            state.error(f"kernel: {getattr(oops, 'title', oops)}")
    except* SimulationError as hung:
        # A hung kernel (every task blocked: an rcu_barrier() or a grace period that never
        # ends) is rcutorture's hung-task failure: the run does not finish.
        crash = hung
        for err in hung.exceptions:
            state.error(f"kernel: {err}")
    if crash is not None:
        state.error("the run stopped early: the kernel hit the error above")
    return _result(params, cfg, state, time.perf_counter() - t0)


def _live(mm: Mm, ptr: int) -> bool:
    try:
        mm.check_access(ptr)
    except MemoryDebugError:
        return False
    return True


def _result(p: TortureParams, cfg: KernelConfig, s: _State, wall: float) -> TortureResult:
    k = s.kernel
    assert k is not None
    kv = k.kvfree.statistics()
    if kv.gp_violations:
        s.error(f"kvfree_rcu: {kv.gp_violations} freed before a full grace period had passed "
                "since they were queued (gp_violations)")
    freed = s.kfreed + kv.objects_freed
    live = sum(1 for ptr in s.allocated if _live(k.mm, ptr)) if s.finished else 0
    stats = k.rcu.statistics()
    log = list(s.log)
    for sp in k.locks.splats:
        if sp.kind == "rcu_stall":
            log.append(sp.format())
    reports = k.panic.reports
    if reports:
        log.append(reports[0].text)  # the first bug report, as the console shows it
    cur = s.current
    return s.result(
        p,
        mode="sim",
        seed=cfg.seed,
        nreaders=p.real_readers(cfg.nr_cpus),
        settings={
            "nr_cpus": cfg.nr_cpus,
            "variant": cfg.kvfree.variant,
            "profile": cfg.kvfree.profile,
            "kernel_config": "rt" if cfg.preempt_rt else (
                "lockdep" if cfg.prove_raw_lock_nesting else "default"
            ),
            "preempt_rcu": cfg.rcu_preemptible,
            **({"kvfree_torture": True} if p.kvfree_torture else {}),
        },
        rtc=cur.ptr if cur is not None else 0,
        failures=s.failures(kv.gp_violations),
        splats=k.splat_counts(),
        stalls=stats.stalls,
        objects_freed=freed,
        leaks=max(live, s.retired - freed) if s.finished else 0,
        double_free=s.double_free + max(0, freed - s.retired),
        kvfree={
            "calls": kv.calls,
            "fallback_rcu_head": kv.fallback_rcu_head,
            "fallback_synchronize": kv.fallback_synchronize,
            "block_alloc_failures": kv.block_alloc_failures,
            "objects_freed": kv.objects_freed,
            "gp_violations": kv.gp_violations,
            "grace_periods": stats.completed_gps,
        },
        log=tuple(log),
        sim_ns=k.sim.max_local_ns(),
        wall_s=wall,
        taint=k.panic.taint,
        reports=tuple(r.title for r in reports),
    )


def run_torture(
    params: TortureParams | None = None,
    config: KernelConfig | None = None,
    *,
    subsystems: Subsystems = ALL_SUBSYSTEMS,
) -> TortureResult:
    """Run rcutorture in its own ``trio.run`` on a MockClock and return what it saw.

    ``config`` defaults to :func:`torture_config` (seed 0, the default build); ``subsystems``
    as for :func:`run_torture_async`.
    """
    p = params or TortureParams()
    box: list[TortureResult] = []

    async def main() -> None:
        box.append(await run_torture_async(p, config, subsystems=subsystems))

    run_sim(main)
    return box[0]
