"""What rcutorture is, independent of the clock it runs on: parameters, the pipe, the result.

Both modes (:mod:`.sim` on the simulated kernel, :mod:`.app` on the application API) run the
kernel's ``rcutorture`` design (peers.md §1.6 and §5.3; the liburcu ``stress`` test is the same):

* A small pool of ``struct rcu_torture`` slots (``10 * RCU_TORTURE_PIPE_LEN`` of them, as in the
  kernel). Writers publish a fresh element as ``rcu_torture_current`` and retire the old one
  through each retirement primitive in turn; every retirement frees the memory one grace period
  later, and readers check the memory they hold is still live.
* A retired element's *pipe count* is 1 at removal and advances by one at every full grace
  period after that, up to ``RCU_TORTURE_PIPE_LEN``, when its slot goes back to the free list
  (``Free-Block Circulation`` counts those steps). Each mode counts full grace periods from the
  ``get_state_synchronize_rcu()`` cookie taken at removal, in its own way.
* Readers record the pipe count they saw in ``Reader Pipe`` and the grace periods that elapsed
  during the read in ``Reader Batch``. A pipe count of 2 or more means a whole grace period
  ended while the reader still held the element: an RCU failure. So is a use after free.

This module holds that shared part: :class:`TortureParams`, the slot and the run state with the
pipe bookkeeping (:class:`TortureState`, :class:`TortureRun`), and :class:`TortureResult` with
rcutorture's end-of-test printout. The modes differ in how they allocate, retire, wait and
classify memory errors, and keep that to themselves.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

import attrs

from rcukit.errors import ConfigError, MemoryDebugError

__all__ = [
    "RCU_TORTURE_PIPE_LEN",
    "RTORT_POOL",
    "Slot",
    "TortureParams",
    "TortureResult",
    "TortureRun",
    "TortureState",
]

#: ``RCU_TORTURE_PIPE_LEN``: pipe stages an element passes before it is freed.
RCU_TORTURE_PIPE_LEN: Final = 10
#: ``rcu_tortures[10 * RCU_TORTURE_PIPE_LEN]``: the element pool.
RTORT_POOL: Final = 10 * RCU_TORTURE_PIPE_LEN
#: Errors kept verbatim for the report; the counters keep counting past it.
_MAX_ERRORS: Final = 20


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
    seconds in sim mode, real ones in app mode. ``reader_delay_us`` is rcukit's: readers pause
    about that long between reads (rcutorture's readers run back to back; a pause keeps the
    Python cost of a simulated second bounded, so 60 simulated seconds take a few wall-clock
    seconds).
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
    #: rcukit's kvfree torture (sim mode): a flood task queues ``kvfree_rcu()`` objects in
    #: bursts that alternate between the slab and the vmalloc channel, readers hold some
    #: sections for tens of milliseconds, so the monitor attaches a channel to a ``krwp``
    #: whose batch still waits for an older grace period (the pre-fix krwp reuse).
    kvfree_torture: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

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


class Slot(ABC):
    """``struct rcu_torture``'s pipe bookkeeping: one pool slot.

    ``gen`` counts the slot's allocations, so a reader can tell that the slot it holds was
    recycled under it; ``cookie`` is the grace-period snapshot taken when it was retired. Each
    mode adds the reference to the memory the slot stands for, and forgets it in :meth:`recycle`.
    """

    __slots__ = ("cookie", "gen", "idx", "retired")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.gen = 0
        self.cookie = 0
        self.retired = False

    @abstractmethod
    def recycle(self) -> None:
        """The slot reached the end of the pipe: drop the (long freed) memory it referred to."""


SlotT = TypeVar("SlotT", bound=Slot)


@attrs.define(eq=False, kw_only=True)
class TortureState(Generic[SlotT]):
    """One run's shared state: the pool and free list, the pipes, the counters, the reports."""

    #: What :meth:`memory_error` counts as a double free and as a use after free, in the words
    #: of the mode's memory checker.
    DOUBLE_FREE_WORDS: ClassVar[tuple[str, ...]]
    USE_AFTER_FREE_WORDS: ClassVar[tuple[str, ...]]

    slots: list[SlotT]
    free: deque[SlotT]
    #: Retired slots per writer, and a last list for the cleanup, oldest first.
    retired_lists: list[deque[SlotT]]
    #: Fake writers' operations by kind.
    fake: dict[str, int]
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
    #: rcutorture's ``WARN_ON_ONCE``s of the update side: a cookie not done after the wait
    #: that should have completed it, an ``rcu_barrier()`` that returned before a callback
    #: queued before it ran, a callback invoked twice.
    warnings: int = 0
    #: Elements retired (objects queued for freeing).
    retired: int = 0
    errors: list[str] = attrs.field(factory=list)
    log: list[str] = attrs.field(factory=list)
    onoff: dict[str, int] = attrs.field(
        factory=lambda: {"online": 0, "online_ok": 0, "offline": 0, "offline_ok": 0}
    )
    finished: bool = False

    @classmethod
    def new(cls, slot: Callable[[int], SlotT], nwriters: int, fake_ops: tuple[str, ...],
            **fields: Any) -> Self:
        """A fresh run: every slot free, one retired list per writer and one for cleanup."""
        slots = [slot(i) for i in range(RTORT_POOL)]
        return cls(slots=slots, free=deque(slots),
                   retired_lists=[deque() for _ in range(nwriters + 1)],
                   fake=dict.fromkeys(fake_ops, 0), **fields)

    def error(self, msg: str) -> None:
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(msg)

    def warn(self, msg: str) -> None:
        """An update-side check failed (rcutorture's ``WARN_ON_ONCE``): an RCU failure."""
        self.warnings += 1
        self.error(msg)

    def memory_error(self, exc: MemoryDebugError, where: str) -> None:
        """Count a memory checker's report by kind and keep its text."""
        text = str(exc)
        if any(w in text for w in self.DOUBLE_FREE_WORDS):
            self.double_free += 1
        elif any(w in text for w in self.USE_AFTER_FREE_WORDS):
            self.uaf += 1
        else:
            self.internal_errors += 1
        self.error(f"{where}: {text}")

    # -- the pipe ---------------------------------------------------------------------------
    def take_slot(self) -> SlotT:
        """``rcu_torture_alloc``'s bookkeeping (the caller checked ``free`` is not empty)."""
        slot = self.free.popleft()
        slot.gen += 1
        slot.retired = False
        self.rta += 1
        return slot

    def retire_slot(self, slot: SlotT, cookie: int, retired: deque[SlotT]) -> None:
        """Pipe count 1: unpublished, its grace periods counted from ``cookie``."""
        slot.retired = True
        slot.cookie = cookie
        retired.append(slot)
        self.retired += 1

    def record_read(self, pipe: int, batch: int | None, reader: str, idx: int) -> None:
        """One read's ``Reader Pipe`` and ``Reader Batch`` entries; pipe >= 2 is a failure."""
        self.pipe[pipe] += 1
        if batch is not None:
            self.batch[batch] += 1
        self.reads += 1
        if pipe > 1:
            self.rcu_errors += 1
            self.error(f"{reader} saw element {idx} at pipe count {pipe}: a grace period "
                       "ended during its read")

    # -- the end ----------------------------------------------------------------------------
    def failures(self, more: int) -> int:
        """RCU failures: reads at pipe >= 2, reads of an element marked free, internal errors,
        update-side warnings, ``more`` the mode's own, and one if the run did not finish its
        cleanup."""
        n = self.rcu_errors + self.mberror + self.internal_errors + self.warnings + more
        return n if self.finished else n + 1

    def result(
        self,
        p: TortureParams,
        *,
        mode: str,
        seed: int,
        nreaders: int,
        settings: dict[str, Any],
        rtc: int,
        failures: int,
        splats: dict[str, int],
        stalls: int,
        objects_freed: int,
        leaks: int,
        double_free: int,
        kvfree: dict[str, int],
        log: tuple[str, ...],
        sim_ns: int,
        wall_s: float,
        taint: str = "",
        reports: tuple[str, ...] = (),
    ) -> TortureResult:
        """The :class:`TortureResult`: the state's counters plus what only the mode knows.

        ``settings`` are the mode's own, printed after the parameters both modes share.
        """
        return TortureResult(
            mode=mode,
            seed=seed,
            duration=p.duration,
            nreaders=nreaders,
            nwriters=p.nwriters,
            nfakewriters=p.nfakewriters,
            settings={
                "nreaders": nreaders,
                "nwriters": p.nwriters,
                "nfakewriters": p.nfakewriters,
                "duration": p.duration,
                "onoff_interval": p.onoff_interval,
                "fault_rate": p.fault_rate,
                "stall_cpu": p.stall_cpu,
                "seed": seed,
                **settings,
            },
            reader_pipe=tuple(self.pipe),
            reader_batch=tuple(self.batch),
            free_block_circulation=tuple(self.wcount),
            rtc=rtc,
            version=self.version,
            tfle=int(not self.free),
            rta=self.rta,
            rtaf=self.rtaf,
            rtf=self.rtf,
            rtmbe=self.mberror,
            failures=failures,
            splats=splats,
            stalls=stalls,
            objects_queued=self.retired,
            objects_freed=objects_freed,
            leaks=leaks,
            use_after_free=self.uaf,
            double_free=double_free,
            reads=self.reads,
            updates=self.version,
            fake_ops=dict(self.fake),
            onoff=dict(self.onoff),
            kvfree=kvfree,
            errors=tuple(self.errors),
            log=log,
            sim_ns=sim_ns,
            wall_s=wall_s,
            taint=taint,
            reports=reports,
        )


class TortureRun(ABC, Generic[SlotT]):
    """The kthreads' shared logic: per-thread random streams and the pipe arithmetic."""

    #: Seeds each thread's stream, so the modes' streams differ for one seed.
    RNG_PREFIX: ClassVar[str]

    def __init__(self, p: TortureParams, state: TortureState[SlotT], seed: int) -> None:
        self.p = p
        self.s = state
        self.seed = seed

    def rng(self, what: str, me: int) -> random.Random:
        return random.Random(f"{self.RNG_PREFIX}:{self.seed}:{what}:{me}")

    @abstractmethod
    def full_gps(self, cookie: int) -> int:
        """Whole grace periods over since ``cookie`` (``get_state_synchronize_rcu()``)."""

    def pipe_count(self, slot: SlotT) -> int:
        """0 while published, 1 once retired, +1 per full grace period since (capped)."""
        if not slot.retired:
            return 0
        return min(RCU_TORTURE_PIPE_LEN, 1 + self.full_gps(slot.cookie))

    def pipe_seen(self, slot: SlotT, gen: int) -> int:
        """The pipe count of the element a reader took at generation ``gen``.

        A slot recycled under the reader went through the whole pipe meanwhile.
        """
        return self.pipe_count(slot) if slot.gen == gen else RCU_TORTURE_PIPE_LEN

    def reap(self, retired: deque[SlotT]) -> None:
        """``rcu_torture_free`` for every element at the end of its pipe."""
        s = self.s
        while retired and self.pipe_count(retired[0]) >= RCU_TORTURE_PIPE_LEN:
            slot = retired.popleft()
            for i in range(RCU_TORTURE_PIPE_LEN):
                s.wcount[i] += 1
            slot.recycle()
            s.rtf += 1
            s.free.append(slot)

    async def drain(
        self,
        synchronize: Callable[[], Awaitable[object]],
        sync: Callable[[], Awaitable[object]] | None = None,
    ) -> bool:
        """``rcu_torture_cleanup``'s wait: reap, wait a grace period, until every pipe is empty.

        ``sync`` (sim mode: ``task.sync``) runs before each look at the shared pipes. Returns
        whether they emptied within ``4 * RCU_TORTURE_PIPE_LEN`` grace periods.
        """
        lists = self.s.retired_lists
        for _ in range(4 * RCU_TORTURE_PIPE_LEN):
            if sync is not None:
                await sync()
            for lst in lists:
                self.reap(lst)
            if not any(lists):
                break
            await synchronize()
        return not any(lists)


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
    #: The kernel's taint flags at the end (``/proc/sys/kernel/tainted`` letters: B for a
    #: KASAN or bad-page report, W for a WARNING or a might-sleep splat); "" untainted.
    taint: str = ""
    #: The first line of every bug report the kernel printed (:mod:`rcukit.panic`).
    reports: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Exit status 0: no failure, no leak, no use after free, no double free, and an
        untainted kernel (rcutorture's console check fails a run whose log has a BUG or
        WARNING: tools/testing/selftests/rcutorture/bin/parse-console.sh)."""
        return not (
            self.failures or self.leaks or self.use_after_free or self.double_free or self.taint
        )

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
        if self.taint:
            lines.append(f"rcu-torture: !!! the kernel is tainted ({self.taint}): "
                         f"{len(self.reports)} bug report(s)")
            lines.extend(f"rcu-torture: {r}" for r in self.reports[:_MAX_ERRORS])
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
            "taint": self.taint,
            "reports": list(self.reports),
            "sim_ns": self.sim_ns,
            "wall_s": round(self.wall_s, 3),
        }
