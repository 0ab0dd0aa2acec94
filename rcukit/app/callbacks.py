"""``call_rcu`` and ``rcu_barrier`` for the domain, and the callback task that runs them.

Callbacks wait in a :class:`~rcukit.rcu.segcblist.SegCbList`, the engine the simulated kernel
uses: each is accelerated to the ``gp_seq`` that must pass before it runs, and the callback
task (``rcu_core`` plus the kvfree kworker) invokes the ready ones in chunks, letting other
tasks in every ``RESCHED_NS``. What a callback raises is reported through the domain's
:class:`~rcukit.app.status.ErrorLog`; it never stops the machinery or the rest of the batch.
Callbacks count against the domain's :class:`~rcukit.app.backpressure.PendingCap`.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

import anyio
import attrs

from rcukit.app.backpressure import PendingCap
from rcukit.app.grace import GracePeriods
from rcukit.app.loop import EventLoop
from rcukit.app.readers import QuiescentWhileWaiting, Readers
from rcukit.app.status import DomainStatus, ErrorLog
from rcukit.app.wakeup import Wakeup
from rcukit.errors import RcuArgumentError, RcuClosedError
from rcukit.rcu.segcblist import RcuHead, SegCbList

__all__ = ["CB_GRANT", "INVOKE_CHUNK", "RESCHED_NS", "Callbacks", "KvfreeWork"]

#: ``rcu_resched_ns``: the longest the callback task runs callbacks or releases blocks before it
#: lets other tasks in (a checkpoint costs microseconds, so no per-10-callbacks ``blimit``).
RESCHED_NS: Final = 3_000_000
#: Callbacks extracted per chunk; a chunk is invoked completely before any checkpoint, so a
#: cancellation can never strand extracted callbacks.
INVOKE_CHUNK: Final = 256
#: Room ``call_rcu`` reserves at once against the pending cap (its fast path then only counts).
CB_GRANT: Final = 512
#: ``CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR``: code that cannot run as a
#: plain callback.
_ASYNC_CODE: Final = 0x80 | 0x100 | 0x200
_get_ident = threading.get_ident


def plain_callable(func: object) -> bool:
    """Callable, and not an ``async def`` (nor a partial or method of one): refused at the call."""
    code = getattr(func, "__code__", None)
    if code is not None:
        return not code.co_flags & _ASYNC_CODE
    return callable(func) and not inspect.iscoroutinefunction(func)


class _Head(RcuHead):
    """A ``call_rcu`` callback: the function and its arguments ride in the head."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.func = None
        self.fn = fn
        self.args = args

    def describe(self) -> str:
        return f"in call_rcu() callback {self.fn!r}"


class _DebugHead(_Head):
    __slots__ = ("site",)

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...], site: str) -> None:
        super().__init__(fn, args)
        self.site = site

    def describe(self) -> str:
        return f"in call_rcu() callback {self.fn!r} queued at {self.site}"


class KvfreeWork(Protocol):
    """What the callback task does for kvfree_rcu on each pass (the kvfree kworker)."""

    def next_deadline(self) -> float:
        """The earliest monitor deadline of any queue (the loop's clock; inf when all are idle)."""
        ...

    async def kvfree_work(self) -> None:
        """Release batches whose GP has passed, then run the monitors that are due."""
        ...


@attrs.define(eq=False)
class Callbacks:
    """The domain's callback list, its barrier, and its callback task (module docstring)."""

    _gp: GracePeriods
    _loop: EventLoop
    _readers: Readers
    _cap: PendingCap
    _status: DomainStatus
    _errors: ErrorLog
    _cbs: SegCbList = attrs.field(factory=SegCbList, init=False)
    _barrier_heads: int = attrs.field(default=0, init=False)
    _barrier_events: set[anyio.Event] = attrs.field(factory=set, init=False)
    #: Room left of this domain's grant under the pending cap (the fast path's budget).
    _allow: int = attrs.field(default=0, init=False)
    _kicked: bool = attrs.field(default=False, init=False)
    invoked: int = attrs.field(default=0, init=False)
    #: The callback task's wakeup, and when it will wake by itself (-inf while awake).
    _wake: Wakeup = attrs.field(init=False)
    _sleep_until: float = attrs.field(default=-math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        self._wake = Wakeup(self._loop)
        self._cap.add_user(self)

    @property
    def queued(self) -> int:
        """Heads in the list, barrier heads included (zero means the list is empty)."""
        return len(self._cbs)

    @property
    def pending(self) -> int:
        """``call_rcu`` callbacks not yet invoked."""
        return len(self._cbs) - self._barrier_heads

    # ---------------------------------------------------------------- call_rcu

    def call_rcu(
        self, func: Callable[..., object], args: tuple[Any, ...], site: str | None
    ) -> None:
        """Queue ``func(*args)``; ``site`` (debug mode) names the caller in error reports.

        From a worker thread the call is made on the domain's loop (the thread waits for it),
        so what it raises is raised in the thread and nothing is queued half-way.
        """
        if _get_ident() != self._loop.thread:
            self._loop.run_sync("call_rcu()", self.call_rcu, func, args, site)
            return
        code = getattr(func, "__code__", None)
        if self._allow > 0 and code is not None and not code.co_flags & _ASYNC_CODE:
            self._allow -= 1
        else:
            self._call_rcu_slow(func)
        self._cbs.enqueue(_Head(func, args) if site is None else _DebugHead(func, args, site))
        if not self._kicked:
            self._kicked = True
            self._wake.set()

    def _call_rcu_slow(self, func: object) -> None:
        if not self._status.accepting:
            self._status.check_open("call_rcu()")
        if not callable(func):
            raise RcuArgumentError(f"call_rcu({func!r}, ...): the callback must be callable")
        if not plain_callable(func):
            raise RcuArgumentError(
                f"call_rcu({func!r}, ...): the callback is an async function; callbacks run "
                "synchronously in the domain's callback task and must be plain functions"
            )
        if self._allow > 0:
            self._allow -= 1
            return
        grant = self._cap.room(CB_GRANT)
        if grant < 1:
            self._cap.note_backpressure()
            raise self._cap.cap_error("call_rcu()", "await rcu.call_rcu_wait(func, *args)")
        self._allow = grant - 1

    async def call_rcu_wait(
        self, func: Callable[..., object], args: tuple[Any, ...], site: str | None
    ) -> None:
        if not self._loop.in_loop_thread():
            self._loop.refuse_thread("call_rcu_wait()", "rcu.from_thread.call_rcu_wait(...)")
        worker = self._readers.might_sleep("call_rcu_wait()")
        cap = self._cap
        while True:
            self._status.check_open("call_rcu_wait()")
            if self._allow > 0 or cap.room(1) >= 1:
                self.call_rcu(func, args, site)
                await self._loop.checkpoint()
                return
            cap.note_backpressure()
            me = self._gp.sleeper("call_rcu_wait()", cap.room_changed)
            try:
                with QuiescentWhileWaiting(worker):
                    await cap.wait_for_room()
            finally:
                self._gp.sleepers.discard(me)
            if me.deadlock:
                raise me.refuse()

    async def rcu_barrier(self) -> None:
        """``rcu_barrier()``: entrain a barrier head behind every callback queued so far.

        As the kernel's (kernel/rcu/tree.c ``rcu_barrier``, v6.1), it waits only for callbacks
        queued before it: one that a callback queues lands behind the barrier head, so a
        callback that re-queues itself does not keep the barrier waiting.
        """
        if not self._loop.in_loop_thread():
            self._loop.refuse_thread("rcu_barrier()", "rcu.from_thread.rcu_barrier()")
        worker = self._readers.might_sleep("rcu_barrier()")
        self._status.check_open("rcu_barrier()")
        ev = self._loop.event()
        if not self._cbs.entrain(_Head(self._barrier_done, (ev,))):
            await self._loop.checkpoint()
            return
        self._barrier_heads += 1
        self._barrier_events.add(ev)
        self._wake.set()
        me = self._gp.sleeper("rcu_barrier()", ev.set)
        try:
            with QuiescentWhileWaiting(worker):
                await ev.wait()
        finally:
            self._gp.sleepers.discard(me)
        if me.deadlock:
            raise me.refuse()  # the barrier head stays queued and runs after the next GP
        if ev in self._barrier_events:  # woken by a stopping domain, not by the barrier head
            self._barrier_events.discard(ev)
            self._status.check_open("rcu_barrier()")
            raise RcuClosedError("rcu_barrier(): the RCU domain stopped before the barrier")

    def _barrier_done(self, ev: anyio.Event) -> None:
        self._barrier_heads -= 1
        self._barrier_events.discard(ev)
        ev.set()

    # ---------------------------------------------------------------- the pending cap

    def cap_load(self) -> int:
        return len(self._cbs) - self._barrier_heads + self._allow

    def cap_reserved(self) -> int:
        return self._allow

    def cap_withdraw(self) -> None:
        self._allow = 0

    def cap_pressure(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- the callback task

    def wake(self) -> None:
        self._wake.set()

    def wake_by(self, deadline: float) -> None:
        """A kvfree monitor is due at ``deadline``: wake the task if it would sleep past it."""
        if deadline < self._sleep_until:
            self._wake.set()

    def gp_ended(self, kvfree_in_flight: bool) -> None:
        if self._cbs.pend_cbs() or kvfree_in_flight:
            self._wake.set()

    async def rcu_core_kthread(self, kvfree: KvfreeWork) -> None:
        """The callback task's body: sleep until woken or a monitor is due, then one pass."""
        while True:
            deadline = kvfree.next_deadline()
            self._sleep_until = deadline
            if deadline == math.inf:
                await self._wake.wait()
            elif deadline > self._loop.current_time():
                with anyio.CancelScope(deadline=deadline):
                    await self._wake.wait()
            else:
                await self._loop.checkpoint()
            self._sleep_until = -math.inf
            await self._rcu_core()
            await kvfree.kvfree_work()

    async def _rcu_core(self) -> None:
        """``rcu_core``: accelerate new callbacks (requesting their GP), invoke ready ones."""
        gp = self._gp.state
        cbs = self._cbs
        self._kicked = False
        if cbs.pend_cbs():
            cbs.advance(gp.core.gp_seq.current)
            snap = gp.snap
            if cbs.accelerate(snap):
                self._gp.request_gp(snap)
        if cbs.ready_cbs():
            await self._invoke_ready()

    async def _invoke_ready(self) -> None:
        cbs = self._cbs
        until = time.perf_counter_ns() + RESCHED_NS
        while cbs.ready_cbs():
            self._invoke(cbs.extract_done(INVOKE_CHUNK))
            if cbs.ready_cbs() and time.perf_counter_ns() > until:
                await self._loop.checkpoint()
                until = time.perf_counter_ns() + RESCHED_NS
        self._cap.room_changed()

    def _invoke(self, batch: list[RcuHead]) -> None:
        """Invoke one chunk. An exception is reported; a ``BaseException`` (KeyboardInterrupt,
        SystemExit) is not swallowed, but only re-raised once the rest of the chunk has run:
        one callback's interrupt never drops the callbacks queued beside it."""
        before = self._barrier_heads
        report = self._errors.report
        fatal: BaseException | None = None
        for h in cast(list[_Head], batch):
            try:
                r = h.fn(*h.args)
            except Exception as exc:
                report(exc, h.describe())
            except BaseException as exc:
                exc.add_note(h.describe())
                if fatal is None:
                    fatal = exc
            else:
                if r is not None and inspect.isawaitable(r):
                    if inspect.iscoroutine(r):
                        r.close()
                    report(
                        RcuArgumentError(
                            f"call_rcu() callback {h.fn!r} returned an awaitable; callbacks "
                            "run synchronously and must be plain functions"
                        ),
                        h.describe(),
                    )
        self.invoked += len(batch) - (before - self._barrier_heads)
        if fatal is not None:
            raise fatal

    # ---------------------------------------------------------------- closing

    def stop(self) -> None:
        """No more fast-path room: the domain stopped accepting work."""
        self._allow = 0

    def release_barriers(self) -> None:
        """The machinery stopped: every ``rcu_barrier`` caller wakes (and raises)."""
        for ev in list(self._barrier_events):
            ev.set()

    def prepare_final_gp(self) -> bool:
        """Closing: advance past completed GPs; True if callbacks still need one more."""
        gp = self._gp.state
        cbs = self._cbs
        cbs.advance(gp.core.gp_seq.current)
        if cbs.pend_cbs():
            cbs.accelerate(gp.snap)
            return True
        return False

    def invoke_all_ready(self) -> None:
        """Closing, after the last GP: run everything ready at once (no checkpoints)."""
        cbs = self._cbs
        while cbs.ready_cbs():
            self._invoke(cbs.extract_done(INVOKE_CHUNK))

    def drop_all(self) -> None:
        """Closing with readers that never left: forget every callback (reported as leaked)."""
        self._cbs = SegCbList()
        self._barrier_heads = 0
