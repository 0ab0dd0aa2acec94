"""rcutorture on the simulated kernel: readers, writers, fake writers, hotplug, faults, stalls.

What the kernel's ``rcutorture`` checks, checked here on virtual time (peers.md §1.6 and §5.3;
the liburcu ``stress`` test is the same design):

* A small pool of ``struct rcu_torture`` elements (``10 * RCU_TORTURE_PIPE_LEN`` of them, as in
  the kernel); each one in use is a ``kmalloc()`` object of the simulated slab, so a reader can
  ask KASAN (``mm.check_access``) whether the memory it holds is still live.
* Writers publish a fresh element as ``rcu_torture_current`` (``rcu_assign_pointer``) and retire
  the old one, cycling through ``call_rcu`` (the callback frees it), two-argument ``kvfree_rcu``,
  head-less ``kvfree_rcu`` and ``synchronize_rcu`` (then ``kfree``): every retirement frees the
  object one grace period later, so each path is checked by the readers' KASAN check. A
  retired element's *pipe count* is 1 at removal and advances by one at every grace period after
  that, up to ``RCU_TORTURE_PIPE_LEN``, when its slot goes back to the free list.
* Readers take ``rcu_read_lock``, read ``rcu_torture_current``, maybe dawdle (rcutorture's
  ``rcu_read_delay``: a short spin now and then, a long one rarely, a preemption in preemptible
  builds), then record the element's pipe count in the ``Reader Pipe`` histogram and the grace
  periods that elapsed meanwhile in ``Reader Batch``, and check its memory is live. A pipe count
  of 2 or more means a whole grace period ended while the reader still held the element: an RCU
  failure. So is a use after free.
* Fake writers hammer the update side: ``synchronize_rcu``, ``synchronize_rcu_expedited``,
  ``cond_synchronize_rcu`` on a cookie, polling, and now and then ``rcu_barrier``.
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

The broken build: ``run_torture(..., _broken_gp=True)`` boots a kernel whose grace periods forget
one holdout that is inside a read-side critical section when the GP starts, so the GP ends one
reader early. It exists so the tests can show this torture test catches a real RCU bug; the
command line cannot reach it.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from rcukit.config import KERNEL_CONFIG_NAMES, KernelConfig
from rcukit.errors import ConfigError, CpuHotplugError, MemoryDebugError
from rcukit.kernel import Kernel, run_sim
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.gpseq import RCU_SEQ_STATE_MASK, ULONG_MASK, ULONG_MAX_HALF, rcu_seq_diff
from rcukit.rcu.kvfree.variants import builtin_variants
from rcukit.rcu.profiles import PROFILES
from rcukit.rcu.segcblist import RcuHead
from rcukit.rcu.tree import RcuState
from rcukit.sched.sim import Task

__all__ = [
    "RCU_TORTURE_PIPE_LEN",
    "WRITER_MODES",
    "TortureParams",
    "TortureResult",
    "run_torture",
    "run_torture_async",
    "torture_config",
]

#: ``RCU_TORTURE_PIPE_LEN``: pipe stages an element passes before it is freed.
RCU_TORTURE_PIPE_LEN: Final = 10
#: ``rcu_tortures[10 * RCU_TORTURE_PIPE_LEN]``: the element pool.
RTORT_POOL: Final = 10 * RCU_TORTURE_PIPE_LEN
#: ``struct rcu_torture`` on 64-bit: rcu_head (16) + pipe count + list_head + mbtest = 48 bytes.
RTORT_SIZE: Final = 48
#: ``rtort_rcu`` is the first member, so the rcu_head sits at the object's address.
RTORT_RH_OFFSET: Final = 0
#: How writers retire the old element, in turn.
WRITER_MODES: Final = ("call_rcu", "kvfree_rcu", "kvfree_rcu_mightsleep", "synchronize_rcu")
#: What fake writers do (``rcu_torture_fakewriter``'s sync types), plus ``rcu_barrier``.
FAKEWRITER_OPS: Final = ("sync", "exp_sync", "cond_sync", "poll")

_GFP_KERNEL = int(GFP_KERNEL)
_CTR_MASK = ULONG_MASK & ~RCU_SEQ_STATE_MASK
#: ``rcu_read_delay``: the short spin and the long one (µs, ms).
_SHORTDELAY_US = 200
_LONGDELAY_MS = 300


def _check_int(lo: int, hi: int | None = None) -> Callable[[Any, Any, Any], None]:
    def check(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            allowed = f"an integer >= {lo}" if hi is None else f"an integer in {lo} .. {hi}"
            raise ConfigError(f"{att.name} = {v!r}: expected {allowed}")

    return check


def _check_num(lo: float, hi: float | None = None, *, above: bool = False) -> Any:
    def check(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if ok:
            ok = (v > lo if above else v >= lo) and (hi is None or v <= hi)
        if not ok:
            rel = ">" if above else ">="
            rng = f"{rel} {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ConfigError(f"{att.name} = {v!r}: expected a finite number {rng}")

    return check


@attrs.frozen
class TortureParams:
    """rcutorture's module parameters that apply here (same meaning, seconds as floats).

    ``nreaders = -1`` is the kernel's default: one reader per CPU but one. Times are simulated
    seconds. ``reader_delay_us`` is rcukit's: readers pause about that long between reads
    (rcutorture's readers run back to back; a pause keeps the Python cost of a simulated second
    bounded, so 60 simulated seconds take a few wall-clock seconds).
    """

    duration: float = attrs.field(default=10.0, validator=_check_num(0.0, above=True))
    nreaders: int = attrs.field(default=-1, validator=_check_int(-1, 1024))
    nwriters: int = attrs.field(default=1, validator=_check_int(0, 64))
    nfakewriters: int = attrs.field(default=4, validator=_check_int(0, 256))
    #: ``onoff_interval``: seconds between CPU hotplug operations; 0 disables hotplug.
    onoff_interval: float = attrs.field(default=0.0, validator=_check_num(0.0))
    #: ``onoff_holdoff``: seconds after boot before the first hotplug operation.
    onoff_holdoff: float = attrs.field(default=0.0, validator=_check_num(0.0))
    #: Probability of failing each page allocation and each slab allocation.
    fault_rate: float = attrs.field(default=0.0, validator=_check_num(0.0, 1.0))
    #: ``stall_cpu``: seconds one reader spins in a read section; 0 disables the stall.
    stall_cpu: float = attrs.field(default=0.0, validator=_check_num(0.0))
    #: ``stall_cpu_holdoff``: seconds before the stall starts; None: a quarter of the run
    #: (at most the kernel's 10 s).
    stall_cpu_holdoff: float | None = attrs.field(default=None)
    reader_delay_us: int = attrs.field(default=2000, validator=_check_int(1, 10**7))

    def __attrs_post_init__(self) -> None:
        h = self.stall_cpu_holdoff
        if h is not None:
            _check_num(0.0)(self, attrs.fields(TortureParams).stall_cpu_holdoff, h)

    def real_readers(self, nr_cpus: int) -> int:
        """``nrealreaders``: ``nreaders``, or if negative ``num_online_cpus() - 2 - nreaders``."""
        return self.nreaders if self.nreaders >= 0 else max(1, nr_cpus - 2 - self.nreaders)

    def stall_holdoff(self) -> float:
        return self.stall_cpu_holdoff if self.stall_cpu_holdoff is not None else min(
            10.0, self.duration / 4
        )


def torture_config(
    base: KernelConfig | None = None,
    *,
    seed: int = 0,
    variant: str | None = None,
    profile: str | None = None,
    kernel_config: str = "default",
) -> KernelConfig:
    """The kernel a torture run boots: ``base`` with the run's seed, build, variant and faults.

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
                f"unknown allocator variant {variant!r}; known: {', '.join(sorted(known))}"
            )
    if profile is not None and profile not in PROFILES:
        raise ConfigError(
            f"kvfree_rcu profile {profile!r} is unknown; allowed: {', '.join(PROFILES)}"
        )
    changes: dict[str, Any] = {"seed": seed, "kvfree.debug_objects": True}
    if variant is not None:
        changes["kvfree.variant"] = variant
    if profile is not None:
        changes["kvfree.profile"] = profile
    return cfg.with_kernel_config(kernel_config).replace(**changes)


@attrs.frozen
class TortureResult:
    """What a torture run saw; :meth:`summary_lines` prints it the way rcutorture does."""

    mode: str
    seed: int
    duration: float
    nreaders: int
    nwriters: int
    nfakewriters: int
    settings: dict[str, Any]
    #: ``Reader Pipe``: reads by the pipe count they saw (index 10: 10 or more).
    reader_pipe: tuple[int, ...]
    #: ``Reader Batch``: reads by the grace periods that elapsed during them.
    reader_batch: tuple[int, ...]
    #: ``Free-Block Circulation``: elements that went from pipe stage i to i + 1.
    free_block_circulation: tuple[int, ...]
    #: rtc (the current element's address), ver, tfle, rta, rtaf, rtf, rtmbe.
    rtc: int
    version: int
    tfle: int
    rta: int
    rtaf: int
    rtf: int
    rtmbe: int
    #: RCU failures: reads at pipe >= 2, reads of an element marked free, frees before their
    #: grace period (kvfree_rcu's debug objects), and errors that stopped the run.
    failures: int
    splats: dict[str, int]
    stalls: int
    objects_queued: int
    objects_freed: int
    leaks: int
    use_after_free: int
    double_free: int
    reads: int
    updates: int
    fake_ops: dict[str, int]
    onoff: dict[str, int]
    kvfree: dict[str, int]
    #: Messages of the first failures (reader reports, KASAN reports, a crash).
    errors: tuple[str, ...]
    #: Stall reports and notes the run printed on its way.
    log: tuple[str, ...]
    sim_ns: int
    wall_s: float

    @property
    def passed(self) -> bool:
        """Exit status 0: no failure, no leak, no use after free, no double free."""
        return not (self.failures or self.leaks or self.use_after_free or self.double_free)

    def summary_lines(self) -> list[str]:
        """rcutorture's end-of-test statistics (``rcu_torture_stats_print``) and verdict."""
        bad = "!!! " if any(self.reader_pipe[2:]) else ""
        o = self.onoff
        lines = list(self.log)
        lines.append(
            f"rcu-torture: {bad}rtc: {self.rtc:#018x} ver: {self.version} tfle: {self.tfle} "
            f"rta: {self.rta} rtaf: {self.rtaf} rtf: {self.rtf} rtmbe: {self.rtmbe} "
            f"uaf: {self.use_after_free} dfree: {self.double_free} leaks: {self.leaks} "
            f"stalls: {self.stalls} onoff: {o.get('online_ok', 0)}/{o.get('online', 0)}:"
            f"{o.get('offline_ok', 0)}/{o.get('offline', 0)} "
            f"barrier: {self.fake_ops.get('barrier', 0)}"
        )
        lines.append("rcu-torture: Reader Pipe: " + "".join(f" {n}" for n in self.reader_pipe))
        lines.append("rcu-torture: Reader Batch: " + "".join(f" {n}" for n in self.reader_batch))
        lines.append(
            "rcu-torture: Free-Block Circulation: "
            + "".join(f" {n}" for n in self.free_block_circulation)
        )
        for e in self.errors:
            lines.append(f"rcu-torture: {e}")
        verdict = "SUCCESS" if self.passed else "FAILURE"
        parms = " ".join(f"{k}={v}" for k, v in self.settings.items())
        lines.append(f"--- End of test: {verdict}: {parms}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "passed": self.passed,
            "seed": self.seed,
            "duration": self.duration,
            "nreaders": self.nreaders,
            "nwriters": self.nwriters,
            "nfakewriters": self.nfakewriters,
            "settings": self.settings,
            "reader_pipe": list(self.reader_pipe),
            "reader_batch": list(self.reader_batch),
            "free_block_circulation": list(self.free_block_circulation),
            "version": self.version,
            "rta": self.rta,
            "rtaf": self.rtaf,
            "rtf": self.rtf,
            "rtmbe": self.rtmbe,
            "failures": self.failures,
            "splats": self.splats,
            "stalls": self.stalls,
            "objects_queued": self.objects_queued,
            "objects_freed": self.objects_freed,
            "leaks": self.leaks,
            "use_after_free": self.use_after_free,
            "double_free": self.double_free,
            "reads": self.reads,
            "updates": self.updates,
            "fake_ops": self.fake_ops,
            "onoff": self.onoff,
            "kvfree": self.kvfree,
            "errors": list(self.errors),
            "sim_ns": self.sim_ns,
            "wall_s": round(self.wall_s, 3),
        }


# ---------------------------------------------------------------------------- the broken build


class _BrokenRcuState(RcuState):
    """Tree RCU whose grace periods end one reader early (tests only; see the module doc)."""

    def _gp_init(self, task: Task) -> None:
        super()._gp_init(task)
        cpus = self.kernel.sim.cpus
        for cpu_id in sorted(self._gp_cpus):
            cur = cpus[cpu_id].current
            if cur is not None and cur.rcu_read_nesting:
                self._gp_cpus.discard(cpu_id)
                self._rdp[cpu_id].qs_pending = False
                return
        for t in self._gp_tasks:
            del self._gp_tasks[t]
            return


class _BrokenKernel(Kernel):
    def _init_subsystems(self) -> None:
        from rcukit.mm.page_alloc import PageAllocator
        from rcukit.rcu.kvfree import KvfreeRcu

        self.mm = PageAllocator(self)
        self.rcu = _BrokenRcuState(self)
        self.kvfree = KvfreeRcu(self)
        self._subsystems.extend([self.mm, self.rcu, self.kvfree])


@asynccontextmanager
async def _boot(cfg: KernelConfig, broken: bool) -> AsyncIterator[Kernel]:
    kernel = (_BrokenKernel if broken else Kernel)(cfg)
    async with trio.open_nursery() as nursery:
        kernel._start(nursery)
        try:
            yield kernel
        finally:
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- the run


class _Rtort:
    """``struct rcu_torture``: a pool slot; ``ptr`` is its kmalloc'ed object while in use.

    ``gen`` counts the slot's allocations, so a reader can tell that the slot it holds was
    recycled under it; ``cookie`` is the grace-period snapshot taken when it was retired.
    """

    __slots__ = ("cookie", "gen", "idx", "mbtest", "ptr", "retired")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.ptr = 0
        self.gen = 0
        self.cookie = 0
        self.retired = False
        self.mbtest = 0


class _FreeHead(RcuHead):
    """The ``rcu_head`` a ``call_rcu`` retirement queues: frees the object after the GP."""

    __slots__ = ("el", "gen", "ptr")

    def __init__(self, el: _Rtort, ptr: int) -> None:
        super().__init__(None)
        self.el = el
        self.ptr = ptr
        self.gen = el.gen


@attrs.define(eq=False)
class _State:
    """One run's shared state (``rcu_torture_current``, the free list, the statistics)."""

    end_ns: int
    pool: list[_Rtort]
    free: deque[_Rtort]
    current: _Rtort | None = None
    version: int = 0
    rta: int = 0
    rtaf: int = 0
    rtf: int = 0
    mberror: int = 0
    pipe: list[int] = attrs.field(factory=lambda: [0] * (RCU_TORTURE_PIPE_LEN + 1))
    batch: list[int] = attrs.field(factory=lambda: [0] * (RCU_TORTURE_PIPE_LEN + 1))
    wcount: list[int] = attrs.field(factory=lambda: [0] * (RCU_TORTURE_PIPE_LEN + 1))
    reads: int = 0
    rcu_errors: int = 0
    uaf: int = 0
    double_free: int = 0
    internal_errors: int = 0
    errors: list[str] = attrs.field(factory=list)
    log: list[str] = attrs.field(factory=list)
    #: Retired elements per writer (and one list for the cleanup), oldest first.
    retired_lists: list[deque[_Rtort]] = attrs.field(factory=list)
    retired: int = 0
    kfreed: int = 0
    allocated: set[int] = attrs.field(factory=set)
    fake: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys((*FAKEWRITER_OPS, "barrier"), 0)
    )
    onoff: dict[str, int] = attrs.field(
        factory=lambda: {"online": 0, "online_ok": 0, "offline": 0, "offline_ok": 0}
    )
    kernel: Kernel | None = None
    finished: bool = False

    def error(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(msg)


def _classify(state: _State, exc: MemoryDebugError, where: str) -> None:
    text = str(exc)
    if "double-free" in text:
        state.double_free += 1
    elif "use-after-free" in text:
        state.uaf += 1
    else:
        state.internal_errors += 1
    state.error(f"{where}: {text}")


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


class _Torture:
    """The kthreads of one run, bound to one kernel."""

    def __init__(self, k: Kernel, p: TortureParams, state: _State) -> None:
        self.k = k
        self.p = p
        self.s = state
        self.rcu = k.rcu
        self.mm = k.mm
        self.kv = k.kvfree
        self.seed = k.config.seed
        self.tick_ns = k.config.tick_ns
        self.nreaders = p.real_readers(k.config.nr_cpus)

    def rng(self, what: str, me: int) -> random.Random:
        return random.Random(f"rcutorture:{self.seed}:{what}:{me}")

    def pipe_count(self, el: _Rtort) -> int:
        """0 while published, 1 once retired, +1 per full grace period since (capped)."""
        if not el.retired:
            return 0
        return min(RCU_TORTURE_PIPE_LEN, 1 + full_gps_since(el.cookie, self.rcu.gp_seq))

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
        el = s.free.popleft()
        el.ptr = ptr
        el.gen += 1
        el.retired = False
        el.mbtest = 1
        s.rta += 1
        s.allocated.add(ptr)
        return el

    def reap(self, retired: deque[_Rtort]) -> None:
        """``rcu_torture_free`` for every element at the end of its pipe (caller is synced)."""
        s = self.s
        while retired and self.pipe_count(retired[0]) >= RCU_TORTURE_PIPE_LEN:
            el = retired.popleft()
            for i in range(RCU_TORTURE_PIPE_LEN):
                s.wcount[i] += 1
            el.mbtest = 0
            el.ptr = 0
            s.rtf += 1
            s.free.append(el)

    async def kfree(self, task: Task, ptr: int, where: str) -> None:
        try:
            await self.mm.kfree(task, ptr)
        except MemoryDebugError as exc:
            _classify(self.s, exc, where)
            return
        self.s.kfreed += 1

    async def free_cb(self, task: Task, head: RcuHead) -> None:
        """The ``call_rcu`` retirement's callback: the object's grace period is over."""
        assert isinstance(head, _FreeHead)
        if head.el.gen == head.gen:
            head.el.mbtest = 0
        await self.kfree(task, head.ptr, "call_rcu callback")

    # -- writers ----------------------------------------------------------------------------
    async def writer(self, task: Task) -> None:
        me: int = task.data["me"]
        rng = self.rng("writer", me)
        s = self.s
        retired = s.retired_lists[me]
        turn = me
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
            mode = WRITER_MODES[turn % len(WRITER_MODES)]
            turn += 1
            await self.retire(task, old, mode)

    def retire_start(self, task: Task, old: _Rtort, retired: deque[_Rtort]) -> None:
        """Pipe count 1: unpublished, its grace periods counted from now (caller synced)."""
        old.retired = True
        old.cookie = self.rcu.get_state_synchronize_rcu(task)
        retired.append(old)
        self.s.retired += 1

    async def retire(self, task: Task, old: _Rtort, mode: str) -> None:
        ptr = old.ptr
        try:
            if mode == "call_rcu":
                self.rcu.call_rcu(task, _FreeHead(old, ptr), self.free_cb)
            elif mode == "kvfree_rcu":
                await self.kv.kvfree_rcu(task, ptr, ptr + RTORT_RH_OFFSET)
            elif mode == "kvfree_rcu_mightsleep":
                await self.kv.kvfree_rcu_mightsleep(task, ptr)
            else:
                await self.rcu.synchronize_rcu(task)
                old.mbtest = 0
                await self.kfree(task, ptr, "synchronize_rcu retirement")
        except MemoryDebugError as exc:
            _classify(self.s, exc, mode)

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
            if p.mbtest == 0:
                s.mberror += 1
                s.error(f"reader {task.comm} found element {p.idx} marked free (rtmbe)")
            await self.read_delay(task, rng)
            await task.sync()
            # A slot recycled under the reader went through the whole pipe meanwhile.
            pipe = self.pipe_count(p) if p.gen == gen else RCU_TORTURE_PIPE_LEN
            completed = min(rcu_seq_diff(rcu.gp_seq, started), RCU_TORTURE_PIPE_LEN)
            try:
                self.mm.check_access(ptr, task)
            except MemoryDebugError as exc:
                _classify(s, exc, f"reader {task.comm}")
            s.pipe[pipe] += 1
            s.batch[completed] += 1
            s.reads += 1
            if pipe > 1:
                s.rcu_errors += 1
                s.error(
                    f"reader {task.comm} on CPU {task.cpu.id} at {task.now_ns} ns saw element "
                    f"{p.idx} at pipe count {pipe}: a grace period ended during its read"
                )
        finally:
            rcu.rcu_read_unlock(task)

    async def read_delay(self, task: Task, rng: random.Random) -> None:
        """``rcu_read_delay``: a long spin rarely, a short one sometimes, a preemption maybe.

        The odds are rcutorture's scaled to far fewer reads per second: the long delay
        (300 ms, to push the GP machinery) about once per ``nreaders * 20000`` reads, the short
        one (200 µs) once per ``2 * nreaders``; preemptible builds are preempted (or, rarely,
        blocked for a while) inside the section, which queues the reader on the blocked list.
        """
        n = self.nreaders
        if not rng.randrange(n * 20_000):
            await self.spin(task, _LONGDELAY_MS * 1_000_000)
        if not rng.randrange(2 * n):
            task.charge(_SHORTDELAY_US * 1000)
        if self.rcu.preemptible:
            r = rng.randrange(n * 50)
            if r == 0:
                await task.sleep_ns(rng.randrange(1, 1_000_000))
            elif r < 5:
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
                await rcu.rcu_barrier(task)
                s.fake["barrier"] += 1
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
            if self.k.cpus[cpu].online:
                s.onoff["offline"] += 1
                try:
                    await rcu.cpu_down(task, cpu)
                except CpuHotplugError as exc:
                    s.log.append(f"rcu-torture: torture_onoff: offline {cpu} failed: {exc}")
                else:
                    s.onoff["offline_ok"] += 1
            else:
                s.onoff["online"] += 1
                try:
                    await rcu.cpu_up(task, cpu)
                except CpuHotplugError as exc:
                    s.log.append(f"rcu-torture: torture_onoff: online {cpu} failed: {exc}")
                else:
                    s.onoff["online_ok"] += 1

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
        mine: deque[_Rtort] = deque()
        s.retired_lists.append(mine)
        if last is not None:
            self.retire_start(task, last, mine)
            await self.retire(task, last, "synchronize_rcu")
        for _ in range(4 * RCU_TORTURE_PIPE_LEN):
            await task.sync()
            for lst in s.retired_lists:
                self.reap(lst)
            if not any(s.retired_lists):
                break
            await rcu.synchronize_rcu(task)
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
    params: TortureParams, config: KernelConfig | None = None, *, _broken_gp: bool = False
) -> TortureResult:
    """Run rcutorture on a fresh simulated kernel (from inside ``trio.run`` on a MockClock)."""
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
    pool = [_Rtort(i) for i in range(RTORT_POOL)]
    state = _State(end_ns=int(params.duration * 1e9), pool=pool, free=deque(pool))
    state.log.extend(log)
    state.retired_lists = [deque() for _ in range(params.nwriters)]
    crash: BaseException | None = None
    try:
        async with _boot(cfg, _broken_gp) as k:
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
            _classify(state, exc, "kernel")
    if crash is not None:
        state.error("the run stopped early: the kernel hit the error above")
    return _result("sim", params, cfg, state, time.perf_counter() - t0)


def _live(mm: Any, ptr: int) -> bool:
    try:
        mm.check_access(ptr)
    except MemoryDebugError:
        return False
    return True


def _result(
    mode: str, p: TortureParams, cfg: KernelConfig, s: _State, wall: float
) -> TortureResult:
    k = s.kernel
    assert k is not None
    kv = k.kvfree.statistics()
    freed = s.kfreed + kv.objects_freed
    live = sum(1 for ptr in s.allocated if _live(k.mm, ptr)) if s.finished else 0
    leaks = max(live, s.retired - freed) if s.finished else 0
    double = s.double_free + max(0, freed - s.retired)
    stats = k.rcu.statistics()
    failures = s.rcu_errors + s.mberror + kv.gp_violations + s.internal_errors
    if not s.finished:
        failures += 1
    settings = {
        "nreaders": p.real_readers(cfg.nr_cpus),
        "nwriters": p.nwriters,
        "nfakewriters": p.nfakewriters,
        "duration": p.duration,
        "onoff_interval": p.onoff_interval,
        "fault_rate": p.fault_rate,
        "stall_cpu": p.stall_cpu,
        "seed": cfg.seed,
        "nr_cpus": cfg.nr_cpus,
        "variant": cfg.kvfree.variant,
        "profile": cfg.kvfree.profile,
        "kernel_config": "rt" if cfg.preempt_rt else (
            "lockdep" if cfg.prove_raw_lock_nesting else "default"
        ),
    }
    log = list(s.log)
    for sp in k.locks.splats:
        if sp.kind == "rcu_stall":
            log.append(sp.format())
    cur = s.current
    return TortureResult(
        mode=mode,
        seed=cfg.seed,
        duration=p.duration,
        nreaders=p.real_readers(cfg.nr_cpus),
        nwriters=p.nwriters,
        nfakewriters=p.nfakewriters,
        settings=settings,
        reader_pipe=tuple(s.pipe),
        reader_batch=tuple(s.batch),
        free_block_circulation=tuple(s.wcount),
        rtc=cur.ptr if cur is not None else 0,
        version=s.version,
        tfle=int(not s.free),
        rta=s.rta,
        rtaf=s.rtaf,
        rtf=s.rtf,
        rtmbe=s.mberror,
        failures=failures,
        splats=k.splat_counts(),
        stalls=stats.stalls,
        objects_queued=s.retired,
        objects_freed=freed,
        leaks=leaks,
        use_after_free=s.uaf,
        double_free=double,
        reads=s.reads,
        updates=s.version,
        fake_ops=dict(s.fake),
        onoff=dict(s.onoff),
        kvfree={
            "calls": kv.calls,
            "fallback_rcu_head": kv.fallback_rcu_head,
            "fallback_synchronize": kv.fallback_synchronize,
            "block_alloc_failures": kv.block_alloc_failures,
            "objects_freed": kv.objects_freed,
            "gp_violations": kv.gp_violations,
            "grace_periods": stats.completed_gps,
        },
        errors=tuple(s.errors),
        log=tuple(log),
        sim_ns=k.sim.max_local_ns(),
        wall_s=wall,
    )


def run_torture(
    params: TortureParams | None = None,
    config: KernelConfig | None = None,
    *,
    _broken_gp: bool = False,
) -> TortureResult:
    """Run rcutorture in its own ``trio.run`` on a MockClock and return what it saw.

    ``config`` defaults to :func:`torture_config` (seed 0, the default build). ``_broken_gp``
    is for tests only: grace periods that end one reader early, which this test must catch.
    """
    p = params or TortureParams()
    box: list[TortureResult] = []

    async def main() -> None:
        box.append(await run_torture_async(p, config, _broken_gp=_broken_gp))

    run_sim(main)
    return box[0]
