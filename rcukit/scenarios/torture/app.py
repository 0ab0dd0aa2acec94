"""rcutorture for the application API (``rcukit torture --mode app``), on Trio's real clock.

The same test as :mod:`.sim` (:mod:`.common`), with the simulated kernel replaced by an
:func:`rcukit.app.open_domain` domain and the slab by a debug :class:`~rcukit.app.ObjectPool`
(freed objects are poisoned and a stale reference is caught by its generation, KASAN-style):

* writers publish through an :class:`~rcukit.app.RcuPointer` and retire the old object through
  ``call_rcu``, ``kvfree_rcu``, ``kvfree_rcu_wait`` (``kvfree_rcu_mightsleep``) and
  ``synchronize_rcu`` in turn; the object goes back to the pool one grace period later;
* each retirement takes a ``get_state_synchronize_rcu()`` cookie; the element's pipe count is 1
  plus the full grace periods polled as done since (``cookie``, ``cookie + 4``, ...), so a
  reader that sees 2 or more held an element across a whole grace period (``Reader Batch``
  counts the full grace periods polled as done during each read the same way);
* readers hold their section across awaits now and then; some are cancelled inside it (the
  section must be released by the cancellation); QSBR readers (``register_qsbr``) hold the
  element between two quiescent states, across awaits now and then, in every run, and with
  ``onoff_interval`` they also go offline and online (the application's CPU hotplug);
* fake writers run ``synchronize_rcu``, ``cond_synchronize_rcu``, polling and both barriers,
  some cancelled mid-wait (the engine must stay consistent);
* ``fault_rate`` makes ``call_rcu`` callbacks and kvfree release functions raise after doing
  their work: every exception must reach the error handler, none may stop the machinery or
  lose the rest of a batch;
* ``stall_cpu`` holds one read section that long; a watchdog prints a stall report when a grace
  period outlives the stall timeout.

``run_app_torture(..., torture_cls=...)`` runs an :class:`AppTorture` subclass instead: the
tests' broken build (``tests/torture_broken.py``) frees the ``synchronize_rcu`` retirements
without waiting for the grace period, which the readers must catch. The package ships no
broken build.
"""

from __future__ import annotations

import random
import time
from collections import deque

import attrs
import trio

from rcukit.app import ObjectPool, RcuDomain, RcuPointer, open_domain
from rcukit.errors import MemoryDebugError
from rcukit.rcu.gpseq import ULONG_MASK
from rcukit.rcu.profiles import DEFAULT_PROFILES
from rcukit.scenarios.torture.common import (
    RCU_TORTURE_PIPE_LEN,
    Slot,
    TortureParams,
    TortureResult,
    TortureRun,
    TortureState,
)

__all__ = [
    "APP_NR_CPUS",
    "AppTorture",
    "TortureInjectedError",
    "run_app_torture",
    "run_app_torture_async",
]

#: What ``nreaders = -1`` counts as CPUs in app mode (one reader per CPU but one: 3 readers).
APP_NR_CPUS = 4
#: The stall timeout of the app watchdog (the kernel's default ``CONFIG_RCU_CPU_STALL_TIMEOUT``).
APP_STALL_TIMEOUT_S = 21.0
_APP_MODES = ("call_rcu", "kvfree_rcu", "kvfree_rcu_wait", "synchronize_rcu")
_FAKE_OPS = ("sync", "cond_sync", "poll", "barrier", "kvfree_rcu_barrier")


class TortureInjectedError(Exception):
    """Raised on purpose by a callback or release function under ``fault_rate``."""


class _Obj:
    """The RCU-protected object (``struct rcu_torture``'s memory): from the debug pool."""

    __slots__ = ("mbtest", "slot")

    def __init__(self) -> None:
        self.slot = -1
        self.mbtest = 0


def _poison(obj: _Obj) -> None:
    obj.slot = -1
    obj.mbtest = 0


class _Slot(Slot):
    """A pool slot's pipe bookkeeping (outside the object, which is freed after one GP)."""

    __slots__ = ("obj",)

    def __init__(self, idx: int) -> None:
        super().__init__(idx)
        self.obj: _Obj | None = None

    def recycle(self) -> None:
        self.obj = None


@attrs.define(eq=False, kw_only=True)
class _AppState(TortureState[_Slot]):
    """The shared state plus the application's side: cancellations, injected faults, stalls."""

    DOUBLE_FREE_WORDS = ("double free",)
    USE_AFTER_FREE_WORDS = ("use after free", "write after free")

    cancelled_reads: int = 0
    injected: int = 0
    injected_seen: int = 0
    stalls: int = 0


class AppTorture(TortureRun[_Slot]):
    """The tasks of one app-mode run, bound to one domain and one debug pool.

    A subclass may change how writers retire (:meth:`retire_sync`); the tests' broken build
    does, to show the readers catch a writer that skips the grace period.
    """

    RNG_PREFIX = "rcutorture-app"
    s: _AppState

    def __init__(
        self, rcu: RcuDomain, pool: ObjectPool[_Obj], p: TortureParams, s: _AppState,
        seed: int,
    ) -> None:
        super().__init__(p, s, seed)
        self.rcu = rcu
        self.pool = pool
        self.nreaders = p.real_readers(APP_NR_CPUS)
        self.fault_rng = random.Random(f"rcutorture-app:{seed}:faults")
        self.cur: RcuPointer[_Obj | None] = RcuPointer(rcu, None)
        self.stop = trio.Event()

    def full_gps(self, cookie: int) -> int:
        """Full grace periods polled as done since ``cookie`` (at most the pipe length)."""
        n = 0
        poll = self.rcu.poll_state_synchronize_rcu
        while n < RCU_TORTURE_PIPE_LEN and poll(cookie):
            n += 1
            cookie = (cookie + 4) & ULONG_MASK
        return n

    # -- faults -----------------------------------------------------------------------------
    def maybe_fail(self, what: str) -> None:
        rate = self.p.fault_rate
        if rate and self.fault_rng.random() < rate:
            self.s.injected += 1
            raise TortureInjectedError(f"injected fault in {what}")

    def free_cb(self, obj: _Obj) -> None:
        """The ``call_rcu`` retirement: back to the pool, then perhaps an injected fault."""
        self.pool.free(obj)
        self.maybe_fail("call_rcu callback")

    def release_fn(self, obj: _Obj) -> None:
        """kvfree_rcu's release function under fault injection (called per object)."""
        self.pool.free(obj)
        self.maybe_fail("kvfree_rcu release function")

    def on_error(self, exc: Exception) -> None:
        s = self.s
        if isinstance(exc, TortureInjectedError):
            s.injected_seen += 1
        elif isinstance(exc, MemoryDebugError):
            s.memory_error(exc, "reported by the domain")
        else:
            s.internal_errors += 1
            s.error(f"reported by the domain: {type(exc).__name__}: {exc}")

    # -- writers ----------------------------------------------------------------------------
    async def writer(self, me: int) -> None:
        rng = self.rng("writer", me)
        s = self.s
        retired = s.retired_lists[me]
        turn = me
        while not self.stop.is_set():
            await trio.sleep(rng.uniform(0.0005, 0.0015))
            self.reap(retired)
            if not s.free:
                s.rtaf += 1
                continue
            slot = s.take_slot()
            obj = self.pool.alloc()
            obj.slot = slot.idx
            obj.mbtest = 1
            slot.obj = obj
            old = self.cur.assign(obj)
            s.version += 1
            if old is None:
                continue
            self.retire_start(old, retired)
            mode = _APP_MODES[turn % len(_APP_MODES)]
            turn += 1
            await self.retire(old, mode)

    def retire_start(self, old: _Obj, retired: deque[_Slot]) -> None:
        self.s.retire_slot(self.s.slots[old.slot], self.rcu.get_state_synchronize_rcu(), retired)

    async def retire(self, old: _Obj, mode: str) -> None:
        rcu = self.rcu
        fault = self.p.fault_rate > 0
        if mode == "call_rcu":
            await rcu.call_rcu_wait(self.free_cb, old)
        elif mode == "kvfree_rcu":
            rcu.kvfree_rcu(old, release=self.release_fn if fault else self.pool)
        elif mode == "kvfree_rcu_wait":
            await rcu.kvfree_rcu_wait(old, release=self.release_fn if fault else self.pool)
        else:
            await self.retire_sync(old)

    async def retire_sync(self, old: _Obj) -> None:
        """``synchronize_rcu()``, then free: the retirement a writer may not shortcut."""
        await self.rcu.synchronize_rcu()
        self.free_now(old)

    def free_now(self, old: _Obj) -> None:
        try:
            self.pool.free(old)
        except MemoryDebugError as exc:
            self.s.memory_error(exc, "synchronize_rcu retirement")

    # -- readers ----------------------------------------------------------------------------
    async def reader(self, me: int) -> None:
        rng = self.rng("reader", me)
        pause = self.p.reader_delay_us / 1e6
        while not self.stop.is_set():
            if not rng.randrange(50):
                await self.cancelled_read(rng)
            else:
                await self.one_read(rng)
            await trio.sleep(rng.uniform(pause / 2, pause * 1.5))

    async def one_read(self, rng: random.Random) -> None:
        rcu = self.rcu
        with rcu.read_lock():
            obj = self.cur.dereference()
            if obj is None:
                return
            start = rcu.get_state_synchronize_rcu()
            await self.observe(obj, rng, start)

    async def observe(self, obj: _Obj, rng: random.Random, start: int | None) -> None:
        """Take the element, dawdle across awaits maybe, then record and check it."""
        s = self.s
        pool = self.pool
        gen_obj = pool.generation(obj)
        idx = obj.slot
        if obj.mbtest == 0 or idx < 0:
            s.mberror += 1
            s.error(f"a reader found object {id(obj):#x} marked free (rtmbe)")
            return
        slot = s.slots[idx]
        gen = slot.gen
        r = rng.random()
        if r < 0.2:
            for _ in range(rng.randrange(1, 4)):
                await trio.lowlevel.checkpoint()
        elif r < 0.25:
            await trio.sleep(rng.random() * 0.002)
        pipe = self.pipe_seen(slot, gen)
        try:
            pool.check(obj, gen_obj)
        except MemoryDebugError as exc:
            s.memory_error(exc, "reader")
        s.record_read(pipe, None if start is None else self.full_gps(start), "a reader", idx)

    async def cancelled_read(self, rng: random.Random) -> None:
        """A reader cancelled inside its section: leaving by Cancelled must release it."""
        with trio.move_on_after(rng.random() * 0.001):
            with self.rcu.read_lock():
                self.cur.dereference()
                await trio.sleep(1.0)
        self.s.cancelled_reads += 1

    async def qsbr_reader(self, me: int) -> None:
        """A QSBR reader (liburcu's ``urcu-qsbr``): between two quiescent states it holds the
        element, so a grace period that ignores online QSBR workers frees it under the reader.
        With ``onoff_interval`` it also goes offline that often (the app's CPU hotplug)."""
        rng = self.rng("qsbr", me)
        s = self.s
        interval = self.p.onoff_interval
        pause = self.p.reader_delay_us / 1e6
        with self.rcu.register_qsbr() as w:
            next_flip = trio.current_time() + interval
            while not self.stop.is_set():
                obj = self.cur.dereference()
                if obj is not None:
                    await self.observe(obj, rng, self.rcu.get_state_synchronize_rcu())
                w.quiescent_state()
                if interval > 0 and trio.current_time() >= next_flip:
                    s.onoff["offline"] += 1
                    s.onoff["offline_ok"] += 1
                    with w.extended_qs():
                        await trio.sleep(rng.uniform(0.1, 0.5) * interval)
                    s.onoff["online"] += 1
                    s.onoff["online_ok"] += 1
                    next_flip = trio.current_time() + interval
                await trio.sleep(rng.uniform(pause / 2, pause * 1.5))
                w.quiescent_state()

    # -- fake writers, stall, watchdog --------------------------------------------------------
    async def fakewriter(self, me: int) -> None:
        rng = self.rng("fakewriter", me)
        rcu = self.rcu
        s = self.s
        while not self.stop.is_set():
            await trio.sleep(rng.random() * 0.01)
            op = _FAKE_OPS[rng.randrange(len(_FAKE_OPS))]
            cancel = not rng.randrange(20)
            with trio.move_on_after(rng.random() * 0.0005 if cancel else 60.0) as cs:
                if op == "sync":
                    await rcu.synchronize_rcu()
                elif op == "cond_sync":
                    cookie = rcu.get_state_synchronize_rcu()
                    await trio.sleep(rng.random() * 0.002)
                    await rcu.cond_synchronize_rcu(cookie)
                elif op == "poll":
                    cookie = rcu.start_poll_synchronize_rcu()
                    while not rcu.poll_state_synchronize_rcu(cookie):  # noqa: ASYNC110
                        await trio.sleep(0.0005)
                elif op == "barrier":
                    await rcu.rcu_barrier()
                else:
                    await rcu.kvfree_rcu_barrier()
            if cs.cancelled_caught:
                s.fake["cancelled"] += 1
            else:
                s.fake[op] += 1

    async def stall(self) -> None:
        p = self.p
        await trio.sleep(p.stall_holdoff())
        self.s.log.append("rcu-torture: rcu_torture_stall start.")
        with self.rcu.read_lock():
            await trio.sleep(p.stall_cpu)
        self.s.log.append("rcu-torture: rcu_torture_stall end.")

    async def watchdog(self, stall_after: float) -> None:
        """A stall detector: a grace period running longer than ``stall_after`` is reported."""
        s = self.s
        seen: tuple[int, float] | None = None
        reported = -1
        while not self.stop.is_set():
            await trio.sleep(min(0.05, stall_after / 4))
            st = self.rcu.statistics()
            if not st.gp_in_progress:
                seen = None
                continue
            now = trio.current_time()
            if seen is None or seen[0] != st.gp_seq:
                seen = (st.gp_seq, now)
            elif now - seen[1] > stall_after and reported != st.gp_seq:
                reported = st.gp_seq
                s.stalls += 1
                s.log.append(
                    f"INFO: rcu detected stall: grace period g={st.gp_seq:#x} running for "
                    f"{now - seen[1]:.2f} s ({st.readers} read sections held, "
                    f"{st.qsbr_online} QSBR workers online, q={st.callbacks_pending})"
                )

    # -- the end ----------------------------------------------------------------------------
    async def cleanup(self) -> None:
        s = self.s
        last = self.cur.assign(None)
        if last is not None:
            self.retire_start(last, s.retired_lists[-1])
            await self.retire(last, "synchronize_rcu")
        s.finished = await self.drain(self.rcu.synchronize_rcu)


async def run_app_torture_async(
    params: TortureParams,
    *,
    seed: int = 0,
    profile: str = DEFAULT_PROFILES["app"],
    torture_cls: type[AppTorture] = AppTorture,
) -> TortureResult:
    """Run the app-mode torture inside the caller's ``trio.run`` (real or mock clock).

    ``torture_cls`` runs an :class:`AppTorture` subclass instead (see the module doc).
    """
    t0 = time.perf_counter()
    s = _AppState.new(_Slot, params.nwriters, (*_FAKE_OPS, "cancelled"))
    pool: ObjectPool[_Obj] = ObjectPool(_Obj, debug=True, poison=_poison, name="rcu_torture")
    stall_timeout = APP_STALL_TIMEOUT_S
    if 0 < params.stall_cpu <= stall_timeout:
        stall_timeout = params.stall_cpu / 2
        s.log.append(
            f"rcu-torture: stall_cpu={params.stall_cpu:g} s is shorter than the stall timeout "
            f"({APP_STALL_TIMEOUT_S:g} s): timeout lowered to {stall_timeout:g} s"
        )
    holder: list[AppTorture] = []

    def on_error(exc: Exception) -> None:
        holder[0].on_error(exc)

    try:
        async with open_domain(
            debug=True, release=pool, on_error=on_error, profile=profile, drain_delay=0.005,
        ) as rcu:
            t = torture_cls(rcu, pool, params, s, seed)
            holder.append(t)
            async with trio.open_nursery() as n:
                n.start_soon(t.watchdog, stall_timeout)
                async with trio.open_nursery() as workers:
                    for i in range(params.nwriters):
                        workers.start_soon(t.writer, i)
                    for i in range(t.nreaders):
                        workers.start_soon(t.reader, i)
                    for i in range(params.nfakewriters):
                        workers.start_soon(t.fakewriter, i)
                    for i in range(max(1, t.nreaders // 2)):
                        workers.start_soon(t.qsbr_reader, i)
                    if params.stall_cpu > 0:
                        workers.start_soon(t.stall)
                    await trio.sleep(params.duration)
                    t.stop.set()
                await t.cleanup()
    except* MemoryDebugError as eg:
        for exc in eg.exceptions:
            assert isinstance(exc, MemoryDebugError)
            s.memory_error(exc, "run")
        s.finished = False
    return _app_result(params, s, pool, seed, profile, time.perf_counter() - t0)


def _app_result(
    p: TortureParams, s: _AppState, pool: ObjectPool[_Obj], seed: int, profile: str,
    wall: float,
) -> TortureResult:
    ps = pool.statistics()
    lost = s.injected - s.injected_seen
    if lost:
        s.error(f"{lost} injected exceptions never reached the error handler")
    return s.result(
        p,
        mode="app",
        seed=seed,
        nreaders=p.real_readers(APP_NR_CPUS),
        settings={"profile": profile},
        rtc=0,
        failures=s.failures(max(0, lost)),
        splats={},
        stalls=s.stalls,
        objects_freed=ps.frees,
        leaks=ps.in_use if s.finished else 0,
        double_free=s.double_free,
        kvfree={
            "injected_faults": s.injected,
            "faults_reported": s.injected_seen,
            "cancelled_reads": s.cancelled_reads,
        },
        log=tuple(s.log),
        sim_ns=0,
        wall_s=wall,
    )


def run_app_torture(
    params: TortureParams | None = None,
    *,
    seed: int = 0,
    profile: str = DEFAULT_PROFILES["app"],
    torture_cls: type[AppTorture] = AppTorture,
) -> TortureResult:
    """Run the app-mode torture in its own ``trio.run`` on the real clock."""
    p = params or TortureParams()
    box: list[TortureResult] = []

    async def main() -> None:
        box.append(
            await run_app_torture_async(p, seed=seed, profile=profile, torture_cls=torture_cls)
        )

    trio.run(main)
    return box[0]
