"""``RcuDomain`` and ``open_domain``: real RCU for a Trio program, on Trio's real clock.

A domain runs two background tasks, mirroring the kernel's split of labour:

* the **grace-period task** (``rcu_gp_kthread``): sleeps until someone needs a GP
  (``gp_seq_needed``), then ``rcu_seq_start``, flips the reader phase, sleeps until the old
  phase's readers have left and every online QSBR worker has reported (both wake it; nothing
  polls), and ``rcu_seq_end``, waking whoever waited for that ``gp_seq``;
* the **callback task** (``rcu_core`` + the kvfree kworker): accelerates new ``call_rcu``
  callbacks in a :class:`~rcukit.rcu.segcblist.SegCbList`, invokes the ready ones, runs the
  kvfree_rcu monitors when their timers expire and releases batches whose GP has passed.

``synchronize_rcu`` callers that need the same ``gp_seq`` share one GP; with no readers a GP
takes two scheduler passes (the GP task's and the waiter's). Leaving the ``async with`` block
runs ``rcu_barrier()`` and ``kvfree_rcu_barrier()`` until nothing is pending. Leaving it by an
exception or a cancellation stops accepting work, then (shielded, bounded by
``close_timeout``) waits for the readers still inside a section, runs one last grace period
inline and releases everything; if readers never leave, what could not be released is reported
as an :class:`~rcukit.errors.RcuLeakError` instead. Exceptions raised by callbacks and release
functions never stop the machinery or the rest of their batch: they go to ``on_error``, or are
raised together as an ``ExceptionGroup`` when the domain exits.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import attrs
import trio

from rcukit.app.config import DEFAULT_MAX_PENDING, DomainConfig
from rcukit.app.gp import GpState
from rcukit.app.kvfree import KvfreeHost, KvfreeQueue, ReleaseTarget
from rcukit.app.pool import ObjectPool
from rcukit.app.readers import DebugReadSection, QsbrWorker, Readers, ReadSection
from rcukit.app.sites import call_site
from rcukit.app.stats import DomainStatistics
from rcukit.app.wakeup import Wakeup
from rcukit.errors import (
    MemoryDebugError,
    RcuArgumentError,
    RcuBackpressureError,
    RcuClosedError,
    RcukitError,
    RcuLeakError,
    RcuUsageError,
)
from rcukit.rcu.gpseq import RCU_GET_STATE_COMPLETED
from rcukit.rcu.kvfree.core import KvfreeCounters, KvfreePolicy
from rcukit.rcu.profiles import get_profile
from rcukit.rcu.segcblist import RcuHead, SegCbList

__all__ = ["RcuDomain", "open_domain"]

#: ``rcu_resched_ns``: the longest the callback task runs callbacks or releases blocks before it
#: lets other tasks in (a Trio checkpoint costs microseconds, so no per-10-callbacks ``blimit``).
RESCHED_NS: Final = 3_000_000
#: Callbacks extracted per chunk; a chunk is invoked completely before any checkpoint, so a
#: cancellation can never strand extracted callbacks.
INVOKE_CHUNK: Final = 256
#: Room ``call_rcu`` reserves at once against the pending cap (its fast path then only counts).
CB_GRANT: Final = 512
#: Exceptions kept for the exit ExceptionGroup; the rest are counted.
MAX_KEPT_ERRORS: Final = 100


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


class _OfflineWhileWaiting:
    """A QSBR worker waiting for a GP is quiescent (liburcu's qsbr synchronize_rcu does this)."""

    __slots__ = ("_was_online", "_worker")

    def __init__(self, worker: QsbrWorker | None) -> None:
        self._worker = worker
        self._was_online = False

    def __enter__(self) -> None:
        w = self._worker
        if w is not None and w.is_online:
            self._was_online = True
            w.offline()

    def __exit__(self, *exc: object) -> None:
        w = self._worker
        if self._was_online and w is not None and w._registered:
            w.online()


class RcuDomain:
    """An RCU domain for one Trio program (get one from :func:`open_domain`).

    Read side: ``with rcu.read_lock():`` (or ``rcu_read_lock()``/``rcu_read_unlock(token)``),
    QSBR workers from :meth:`register_qsbr`. Update side: :meth:`synchronize_rcu`,
    :meth:`call_rcu`, :meth:`kvfree_rcu`, the polled API, and the two barriers.
    """

    __slots__ = (
        "__weakref__",
        "_accepting",
        "_backpressure",
        "_barrier_events",
        "_barrier_heads",
        "_cb_allow",
        "_cb_invoked",
        "_cb_kicked",
        "_cb_sleep_until",
        "_cb_wake",
        "_cbs",
        "_cfg",
        "_closed",
        "_dead",
        "_debug",
        "_errors",
        "_errors_dropped",
        "_gp",
        "_gp_wake",
        "_guard",
        "_krc",
        "_krc_chan_get",
        "_kv",
        "_kv_debug",
        "_kv_host",
        "_max_pending",
        "_n_errors",
        "_on_error",
        "_queues",
        "_readers",
        "_room_lot",
        "_scopes",
        "_stopping",
        "_sync_shared",
        "_sync_waits",
        "_task_done",
    )

    def __init__(self, config: DomainConfig) -> None:
        self._cfg = config
        self._debug = config.debug
        self._max_pending = config.max_pending
        self._on_error = config.on_error
        self._gp = GpState(config.initial_gp_seq)
        self._gp_wake = Wakeup()
        self._cb_wake = Wakeup()
        self._readers = Readers(config.debug, self._gp_wake.set)
        self._guard = self._readers.current
        self._cbs = SegCbList()
        self._barrier_heads = 0
        self._barrier_events: set[trio.Event] = set()
        self._cb_allow = 0
        self._cb_kicked = False
        self._cb_invoked = 0
        self._cb_sleep_until = -math.inf
        self._kv = KvfreeCounters()
        self._kv_debug: dict[int, tuple[object, str]] = {}
        self._kv_host = self._new_kvfree_host(config)
        self._queues: list[KvfreeQueue] = []
        self._krc = KvfreeQueue(self._kv_host, "default")
        self._queues.append(self._krc)
        self._krc_chan_get = self._krc.chan_get
        self._room_lot = trio.lowlevel.ParkingLot()
        self._sync_waits = 0
        self._sync_shared = 0
        self._backpressure = 0
        self._errors: list[BaseException] = []
        self._errors_dropped = 0
        self._n_errors = 0
        self._accepting = False
        self._closed = False
        self._stopping = False
        self._dead: str | None = None
        self._scopes: list[trio.CancelScope] = []
        self._task_done: list[trio.Event] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<RcuDomain {state} gp_seq={self._gp.gp_seq:#x} debug={self._debug}>"

    # ================================================================ properties

    @property
    def debug(self) -> bool:
        return self._debug

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def config(self) -> DomainConfig:
        return self._cfg

    @property
    def block_capacity(self) -> int:
        """``KVFREE_BULK_MAX_ENTR``: objects per kvfree_rcu block."""
        return self._kv_host.policy.capacity

    # ================================================================ readers

    def read_lock(self) -> ReadSection:
        """``with rcu.read_lock():`` — an RCU read section; nestable, may await inside.

        Grace periods wait for every section that began before them. Enter the returned guard
        right away (it belongs to the current reader phase).
        """
        return self._guard

    def rcu_read_lock(self) -> ReadSection:
        """Enter a read section and return the token :meth:`rcu_read_unlock` needs (SRCU-style)."""
        g = self._guard
        g.__enter__()
        return g

    def rcu_read_unlock(self, token: ReadSection) -> None:
        """Leave the section ``token`` (from :meth:`rcu_read_lock`) entered."""
        token.__exit__(None, None, None)

    def register_qsbr(self) -> QsbrWorker:
        """Register the current task as a QSBR worker (online; read side free).

        The worker must call ``quiescent_state()`` regularly and go offline around long waits
        (``with worker.extended_qs(): await ...``); every GP waits for each online worker to
        report once. Use the result as a context manager to unregister on exit.
        """
        self._check_open("register_qsbr()")
        return self._readers.register(call_site())

    # ================================================================ grace periods

    async def synchronize_rcu(self) -> None:
        """Wait until every read section that began before this call has ended.

        Concurrent callers share grace periods. Must not be called inside a read section (it
        would wait for itself; debug mode raises). From an online QSBR worker it counts as a
        quiescent state, as in liburcu.
        """
        worker = self._might_sleep("synchronize_rcu()")
        self._check_open("synchronize_rcu()")
        await self._wait_gp(self._gp.snap, worker)

    def get_state_synchronize_rcu(self) -> int:
        """A cookie for :meth:`poll_state_synchronize_rcu`; does not start a grace period."""
        return self._gp.snap

    def start_poll_synchronize_rcu(self) -> int:
        """Like :meth:`get_state_synchronize_rcu`, and make sure a grace period will run."""
        self._check_open("start_poll_synchronize_rcu()")
        snap = self._gp.snap
        self._request_gp(snap)
        return snap

    def poll_state_synchronize_rcu(self, cookie: int) -> bool:
        """Has a full grace period elapsed since ``cookie`` was taken? Never blocks."""
        return self._gp.done(self._cookie(cookie))

    def get_completed_synchronize_rcu(self) -> int:
        """A cookie every poll reports as done (``RCU_GET_STATE_COMPLETED``)."""
        return RCU_GET_STATE_COMPLETED

    async def cond_synchronize_rcu(self, cookie: int) -> None:
        """Wait for a grace period only if none has elapsed since ``cookie`` was taken."""
        cookie = self._cookie(cookie)
        worker = self._might_sleep("cond_synchronize_rcu()")
        self._check_open("cond_synchronize_rcu()")
        await self._wait_gp(cookie, worker)

    # ================================================================ callbacks

    def call_rcu(self, func: Callable[..., object], *args: Any) -> None:
        """Call ``func(*args)`` from the domain's callback task after a grace period.

        Never blocks. At the pending cap it raises :class:`~rcukit.errors.RcuBackpressureError`
        (use :meth:`call_rcu_wait` to wait for room instead). ``func`` must be a plain
        function; what it raises is reported, never lost, and never stops other callbacks.
        """
        if self._cb_allow > 0 and callable(func):
            self._cb_allow -= 1
        else:
            self._call_rcu_slow(func)
        self._cbs.enqueue(_Head(func, args))
        if not self._cb_kicked:
            self._cb_kicked = True
            self._cb_wake.set()

    async def call_rcu_wait(self, func: Callable[..., object], *args: Any) -> None:
        """:meth:`call_rcu`, but at the pending cap wait for room instead of raising."""
        worker = self._might_sleep("call_rcu_wait()")
        while True:
            self._check_open("call_rcu_wait()")
            if self._cb_allow > 0 or self._room(1) >= 1:
                self.call_rcu(func, *args)
                await trio.lowlevel.checkpoint()
                return
            self._note_backpressure()
            with _OfflineWhileWaiting(worker):
                await self._room_lot.park()

    async def rcu_barrier(self) -> None:
        """Wait until every callback queued by :meth:`call_rcu` before this call has run.

        Like the kernel's, it says nothing about :meth:`kvfree_rcu` objects (use
        :meth:`kvfree_rcu_barrier`), and returns at once if no callback is queued.
        """
        worker = self._might_sleep("rcu_barrier()")
        self._check_open("rcu_barrier()")
        ev = trio.Event()
        if not self._cbs.entrain(_Head(self._barrier_done, (ev,))):
            await trio.lowlevel.checkpoint()
            return
        self._barrier_heads += 1
        self._barrier_events.add(ev)
        self._cb_wake.set()
        with _OfflineWhileWaiting(worker):
            await ev.wait()
        if ev in self._barrier_events:  # woken by a stopping domain, not by the barrier head
            self._barrier_events.discard(ev)
            self._check_open("rcu_barrier()")
            raise RcuClosedError("rcu_barrier(): the RCU domain stopped before the barrier")

    def _barrier_done(self, ev: trio.Event) -> None:
        self._barrier_heads -= 1
        self._barrier_events.discard(ev)
        ev.set()

    # ================================================================ kvfree_rcu

    def _new_kvfree_host(self, config: DomainConfig) -> KvfreeHost:
        """What this domain's kvfree_rcu queues may use of it (see :class:`KvfreeHost`)."""
        # The app's batches each carry one GP cookie, so a batch in flight never takes more
        # blocks: v6.3's need_wait_for_krwp_work() holds on every profile here.
        policy = attrs.evolve(
            KvfreePolicy.from_profile(get_profile(config.profile), config.block_capacity),
            one_batch_per_run=True,
        )
        return KvfreeHost(
            counters=self._kv,
            policy=policy,
            gp=self._gp,
            drain_delay=config.effective_drain_delay,
            kick_delay=float(config.kick_delay),
            debug=config.debug,
            default_release=config.release,
            debug_sites=self._kv_debug,
            accepting=lambda: self._accepting,
            check_open=self._check_open,
            might_sleep=self._might_sleep,
            wait_gp=self._wait_gp,
            request_gp=self._request_gp,
            room=self._room,
            room_changed=self._room_changed,
            note_backpressure=self._note_backpressure,
            cap_error=self._cap_error,
            monitor_armed=self._monitor_armed,
            report=self._report,
            debug_check=self._debug_check_kvfree,
        )

    def kvfree_rcu(self, obj: object, release: ReleaseTarget = None) -> None:
        """Release ``obj`` after a grace period, batched in blocks and released in bulk.

        ``release``: None uses the domain's default (``open_domain(release=...)``: an
        :class:`~rcukit.app.pool.ObjectPool`, a function, or "drop the reference"); a pool (or
        anything with ``free_bulk(list)``) gets one call per block; a function is called with
        each object. Never blocks; at the pending cap it raises
        :class:`~rcukit.errors.RcuBackpressureError` (await :meth:`kvfree_rcu_wait` instead).
        """
        try:
            ch = self._krc_chan_get(release)
        except TypeError:  # unhashable release target: the slow path explains
            ch = None
        if ch is not None:
            recs = ch.recs
            if len(recs) < ch.limit:
                recs.append(obj)
                return
        self._krc.enqueue_slow(obj, release, None, False)

    async def kvfree_rcu_wait(self, obj: object, release: ReleaseTarget = None) -> None:
        """``kvfree_rcu_mightsleep``: at the pending cap, wait a GP and release ``obj`` inline."""
        await self._krc.kvfree_rcu_wait(obj, release)

    kvfree_rcu_mightsleep = kvfree_rcu_wait

    def kvfree_queue(self, name: str = "") -> KvfreeQueue:
        """A kvfree_rcu queue of its own (a per-worker ``krcp``) for a busy worker."""
        self._check_open("kvfree_queue()")
        q = KvfreeQueue(self._kv_host, name or f"queue{len(self._queues)}")
        self._queues.append(q)
        return q

    async def kvfree_rcu_barrier(self) -> None:
        """Wait until every object given to ``kvfree_rcu`` before this call has been released.

        The kernel's ``__kvfree_rcu_barrier``: per queue, hand what is queued to a batch
        (waiting for a batch slot if both are in flight), then wait for every batch in flight.
        Objects freed inline by :meth:`kvfree_rcu_wait` are the caller's business.
        """
        worker = self._might_sleep("kvfree_rcu_barrier()")
        self._check_open("kvfree_rcu_barrier()")
        waited = False
        with _OfflineWhileWaiting(worker):
            for q in list(self._queues):
                while q.need_offload_krc():
                    if q.kvfree_rcu_queue_batch():
                        break
                    for ev in q.inflight_events():
                        await ev.wait()
                        waited = True
                    self._check_open("kvfree_rcu_barrier()")
            for ev in [ev for q in self._queues for ev in q.inflight_events()]:
                await ev.wait()
                waited = True
        self._check_open("kvfree_rcu_barrier()")
        if not waited:
            await trio.lowlevel.checkpoint()

    # ================================================================ statistics

    def statistics(self) -> DomainStatistics:
        """A frozen snapshot; cheap enough to call from a metrics loop."""
        for q in self._queues:
            q.settle_all(drop_grants=False)
        cb_pending = len(self._cbs) - self._barrier_heads
        kv = self._kv
        kv_pending = kv.pending
        r = self._readers
        return DomainStatistics(
            gp_seq=self._gp.gp_seq,
            gp_in_progress=self._gp.in_progress,
            gps_completed=self._gp.completed,
            sync_waits=self._sync_waits,
            sync_shared=self._sync_shared,
            callbacks_queued=self._cb_invoked + cb_pending,
            callbacks_invoked=self._cb_invoked,
            callbacks_pending=cb_pending,
            kvfree_queued=kv.objects_freed + kv_pending,
            kvfree_freed=kv.objects_freed,
            kvfree_pending=kv_pending,
            kvfree_freed_early=kv.freed_early_polled,
            kvfree_freed_inline=kv.fallback_synchronize,
            kvfree_batches=kv.batches_queued,
            blocks_in_use=sum(q.blocks_in_use() for q in self._queues),
            blocks_cached=sum(q.blocks_cached() for q in self._queues),
            kvfree_queues=len(self._queues),
            readers=r.n_readers,
            qsbr_workers=len(r.by_task),
            qsbr_online=r.n_online,
            max_pending=self._max_pending,
            backpressure_events=self._backpressure,
            errors=self._n_errors,
            closed=self._closed,
        )

    # ================================================================ internals: checks

    def _check_open(self, what: str) -> None:
        if self._dead is not None:
            raise RcuClosedError(f"{what}: {self._dead}")
        if not self._accepting:
            state = "closed" if self._closed or self._stopping else "not started"
            raise RcuClosedError(f"{what} on a {state} RCU domain")

    def _might_sleep(self, what: str) -> QsbrWorker | None:
        """``might_sleep()`` for GP waits: refuse inside a read section (debug mode), and
        return the calling task's QSBR worker so it can be quiescent while it waits."""
        task = trio.lowlevel.current_task()
        r = self._readers
        if self._debug:
            inner = r.in_read_section(task)
            if inner is not None:
                raise RcuUsageError(
                    f"{what} inside the RCU read section entered at {inner.site}: it would "
                    "wait for a grace period that waits for this very reader (deadlock)"
                )
        return r.by_task.get(task)

    def _reader_check(self, what: str) -> None:
        """``rcu_dereference_check()``: debug mode only, called by RcuPointer."""
        task = trio.lowlevel.current_task()
        r = self._readers
        if r.in_read_section(task) is not None:
            return
        w = r.by_task.get(task)
        if w is not None and w.is_online:
            return
        raise RcuUsageError(
            f"{what} at {call_site()} outside an RCU read section; wrap it in "
            "`with rcu.read_lock():` (or use dereference_protected() on the update side)"
        )

    @staticmethod
    def _cookie(cookie: object) -> int:
        if isinstance(cookie, bool) or not isinstance(cookie, int):
            raise RcuArgumentError(
                f"cookie={cookie!r}: expected an int from get_state_synchronize_rcu() or "
                "start_poll_synchronize_rcu()"
            )
        return cookie

    def _debug_check_kvfree(self, obj: object, pool: object, site: str) -> None:
        prev = self._kv_debug.get(id(obj))
        if prev is not None and prev[0] is obj:
            raise MemoryDebugError(
                f"double kvfree_rcu() of {type(obj).__name__} object at {id(obj):#x}: first "
                f"queued at {prev[1]}, queued again at {site}"
            )
        if isinstance(pool, ObjectPool) and pool.is_freed(obj):
            raise MemoryDebugError(
                f"kvfree_rcu() at {site} of {type(obj).__name__} object at {id(obj):#x} that "
                f"is already free in pool {pool.name!r} ({pool.describe(obj)})"
            )

    # ================================================================ internals: pending cap

    def _room(self, want: int) -> int:
        """How much of ``want`` fits under the pending cap, reclaiming idle reservations."""
        used = (
            len(self._cbs)
            - self._barrier_heads
            + self._cb_allow
            + self._kv.pending
            + self._kv.reserved
        )
        room = self._max_pending - used
        if room < want and (self._cb_allow or self._kv.reserved):
            self._cb_allow = 0
            for q in self._queues:
                q.settle_all(drop_grants=True)
            used = len(self._cbs) - self._barrier_heads + self._kv.pending + self._kv.reserved
            room = self._max_pending - used
        return max(0, min(want, room))

    def _call_rcu_slow(self, func: object) -> None:
        if not self._accepting:
            self._check_open("call_rcu()")
        if not callable(func):
            raise RcuArgumentError(f"call_rcu({func!r}, ...): the callback must be callable")
        grant = self._room(CB_GRANT)
        if grant < 1:
            self._note_backpressure()
            raise self._cap_error("call_rcu()", "await rcu.call_rcu_wait(func, *args)")
        self._cb_allow = grant - 1

    def _cap_error(self, what: str, instead: str) -> RcuBackpressureError:
        return RcuBackpressureError(
            f"{what}: the domain's cap of max_pending={self._max_pending} callbacks and "
            f"kvfree_rcu objects awaiting a grace period is reached; use `{instead}` to wait "
            "for room, or raise max_pending in open_domain()"
        )

    def _note_backpressure(self) -> None:
        """Count a cap hit and get things moving: GPs for callbacks, drains for kvfree."""
        self._backpressure += 1
        self._cb_wake.set()
        for q in self._queues:
            q.kick()

    def _room_changed(self) -> None:
        if self._room_lot:
            self._room_lot.unpark_all()

    # ================================================================ internals: GP machinery

    def _request_gp(self, target: int) -> None:
        if self._gp.request(target):
            self._gp_wake.set()

    async def _wait_gp(self, target: int, worker: QsbrWorker | None) -> None:
        gp = self._gp
        if gp.done(target):
            await trio.lowlevel.checkpoint()
            return
        self._request_gp(target)
        ev, shared = gp.waiter(target)
        self._sync_waits += 1
        if shared:
            self._sync_shared += 1
        with _OfflineWhileWaiting(worker):
            await ev.wait()
        if not gp.done(target):
            self._check_open("synchronize_rcu()")
            raise RcuClosedError("the RCU domain stopped before the grace period ended")

    def _gp_start(self) -> None:
        self._gp.start()
        self._guard = self._readers.flip()
        self._withdraw_grants()

    async def _gp_wait_readers(self) -> None:
        r = self._readers
        while not r.gp_may_end():
            r.arm()
            await self._gp_wake.wait()

    def _gp_end(self) -> None:
        self._readers.end_gp()
        self._gp.end()
        self._withdraw_grants()
        if self._cbs.pend_cbs() or self._kv.batches_in_flight:
            self._cb_wake.set()

    def _withdraw_grants(self) -> None:
        # gp_seq moved: the next insert must restamp its block with the new snapshot.
        if not self._debug:
            for q in self._queues:
                q.settle_all(drop_grants=True)

    def _monitor_armed(self, deadline: float) -> None:
        if deadline < self._cb_sleep_until:
            self._cb_wake.set()

    async def _gp_task(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        done = trio.Event()
        self._task_done.append(done)
        try:
            with trio.CancelScope(shield=True) as cs:
                self._scopes.append(cs)
                task_status.started()
                gp = self._gp
                while True:
                    while not gp.needs_gp():
                        await self._gp_wake.wait()
                    self._gp_start()
                    await self._gp_wait_readers()
                    self._gp_end()
        finally:
            self._task_exited("grace-period")
            done.set()

    async def _cb_task(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        done = trio.Event()
        self._task_done.append(done)
        try:
            with trio.CancelScope(shield=True) as cs:
                self._scopes.append(cs)
                task_status.started()
                while True:
                    deadline = min(q.deadline for q in self._queues)
                    self._cb_sleep_until = deadline
                    if deadline == math.inf:
                        await self._cb_wake.wait()
                    elif deadline > trio.current_time():
                        with trio.move_on_at(deadline):
                            await self._cb_wake.wait()
                    else:
                        await trio.lowlevel.checkpoint()
                    self._cb_sleep_until = -math.inf
                    await self._cb_work()
        finally:
            self._task_exited("callback")
            done.set()

    async def _cb_work(self) -> None:
        gp = self._gp
        cbs = self._cbs
        self._cb_kicked = False
        if cbs.pend_cbs():
            cbs.advance(gp.gp_seq)
            snap = gp.snap
            if cbs.accelerate(snap):
                self._request_gp(snap)
        if cbs.ready_cbs():
            await self._invoke_ready()
        if self._kv.batches_in_flight:
            await self._reclaim_ready()
        now = trio.current_time()
        for q in list(self._queues):
            if q.deadline <= now:
                q.kfree_rcu_monitor()

    async def _invoke_ready(self) -> None:
        cbs = self._cbs
        until = time.perf_counter_ns() + RESCHED_NS
        while cbs.ready_cbs():
            self._invoke(cbs.extract_done(INVOKE_CHUNK))
            if cbs.ready_cbs() and time.perf_counter_ns() > until:
                await trio.lowlevel.checkpoint()
                until = time.perf_counter_ns() + RESCHED_NS
        self._room_changed()

    def _invoke(self, batch: list[RcuHead]) -> None:
        before = self._barrier_heads
        for h in cast(list[_Head], batch):
            try:
                r = h.fn(*h.args)
            except Exception as exc:
                self._report(exc, h.describe())
            else:
                if r is not None and inspect.isawaitable(r):
                    if inspect.iscoroutine(r):
                        r.close()
                    self._report(
                        RcuArgumentError(
                            f"call_rcu() callback {h.fn!r} returned an awaitable; callbacks "
                            "run synchronously and must be plain functions"
                        ),
                        h.describe(),
                    )
        self._cb_invoked += len(batch) - (before - self._barrier_heads)

    async def _reclaim_ready(self) -> None:
        until = time.perf_counter_ns() + RESCHED_NS
        for q in list(self._queues):
            for b in q.ready_batches():
                blk = q.take_block(b)
                while blk is not None:
                    q.release_block(blk)
                    blk = q.take_block(b)
                    if blk is not None and time.perf_counter_ns() > until:
                        await trio.lowlevel.checkpoint()
                        until = time.perf_counter_ns() + RESCHED_NS
                q.finish_batch(b)

    # ================================================================ internals: errors

    def _report(self, exc: BaseException, context: str) -> None:
        self._n_errors += 1
        exc.add_note(context)
        handler = self._on_error
        if handler is not None and isinstance(exc, Exception):
            try:
                handler(exc)
            except Exception as exc2:
                exc2.add_note(f"raised by the on_error handler {handler!r}")
                self._keep(exc2)
            return
        self._keep(exc)

    def _keep(self, exc: BaseException) -> None:
        if len(self._errors) < MAX_KEPT_ERRORS:
            self._errors.append(exc)
        else:
            self._errors_dropped += 1

    def _take_errors(self) -> list[BaseException]:
        errors, self._errors = self._errors, []
        if self._errors_dropped:
            errors.append(RcukitError(f"... and {self._errors_dropped} more errors (not kept)"))
            self._errors_dropped = 0
        return errors

    # ================================================================ internals: lifecycle

    async def _start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._gp_task)
        await nursery.start(self._cb_task)
        self._accepting = True

    def _task_exited(self, which: str) -> None:
        if self._stopping:
            return
        # Cancelled (or crashed) while the domain was open: wake every waiter so it raises.
        self._dead = (
            f"the RCU domain's {which} task has stopped (was its nursery cancelled?); "
            "the domain cannot complete grace periods any more"
        )
        self._accepting = False
        self._gp.release_all_waiters()
        for ev in list(self._barrier_events):
            ev.set()
        for q in self._queues:
            for ev in q.inflight_events():
                ev.set()
        self._room_changed()

    async def _flush(self) -> None:
        """Normal exit: barriers until nothing is pending (callbacks may queue more work)."""
        while self._dead is None:
            await self.rcu_barrier()
            await self.kvfree_rcu_barrier()
            for q in self._queues:
                q.settle_all(drop_grants=False)
            if not len(self._cbs) and not self._kv.pending:
                return

    async def _shutdown(self, aborted: bool) -> None:
        """Stop accepting work, stop the tasks, release everything (call shielded)."""
        self._accepting = False
        self._stopping = True
        self._cb_allow = 0
        for q in self._queues:
            q.settle_all(drop_grants=True)
        for cs in self._scopes:
            cs.cancel()
        for ev in self._task_done:
            await ev.wait()
        self._dead = None  # whatever stopped the tasks, the domain is now simply closing
        patience = self._cfg.close_timeout if aborted else math.inf
        try:
            await self._final_drain(patience)
        finally:
            self._closed = True
            self._readers.close()
            self._guard = self._readers.current
            self._gp.release_all_waiters()
            for ev in list(self._barrier_events):
                ev.set()
            self._room_lot.unpark_all()

    async def _final_drain(self, patience: float) -> None:
        gp = self._gp
        cbs = self._cbs
        for q in self._queues:
            q.settle_all(drop_grants=True)
        if not len(cbs) and not self._kv.pending:
            return
        with trio.move_on_after(patience):
            first = True
            while True:
                if gp.in_progress:
                    await self._gp_wait_readers()
                    self._gp_end()
                cbs.advance(gp.gp_seq)
                if cbs.pend_cbs():
                    cbs.accelerate(gp.snap)
                elif not first:
                    break
                first = False
                self._gp_start()
                await self._gp_wait_readers()
                self._gp_end()
            # A full grace period has elapsed since the domain stopped accepting work: all of
            # it is safe to release.
            while cbs.ready_cbs():
                self._invoke(cbs.extract_done(INVOKE_CHUNK))
            for q in self._queues:
                for blk in q.take_everything():
                    q.release_block(blk)
            self._kv.batches_in_flight = 0
            return
        self._report_leak()

    def _report_leak(self) -> None:
        r = self._readers
        n_cbs = len(self._cbs) - self._barrier_heads
        for q in self._queues:
            q.settle_all(drop_grants=True)
        n_kv = self._kv.pending
        holders = ""
        if self._debug:
            sites = [s.site for s in r.held_sections()]
            if sites:
                holders = "; read sections held from: " + ", ".join(sites[:10])
        online = [w.site for w in r.by_task.values() if w.is_online]
        if online:
            holders += "; QSBR workers online, registered at: " + ", ".join(online[:10])
        self._report(
            RcuLeakError(
                f"RCU domain closed but its readers did not leave within close_timeout="
                f"{self._cfg.close_timeout}s ({r.n_readers} read sections held, {r.n_online} "
                f"QSBR workers online): {n_cbs} call_rcu callbacks were not invoked and {n_kv} "
                f"kvfree_rcu objects were not released{holders}"
            ),
            "reported by the closing RCU domain",
        )
        for q in self._queues:
            for blk in q.take_everything():
                blk.records.clear()
                blk.sites.clear()
        self._cbs = SegCbList()
        self._barrier_heads = 0
        self._kv.pending = 0
        self._kv.batches_in_flight = 0
        self._kv_debug.clear()


class _DebugRcuDomain(RcuDomain):
    """Debug mode: every read section knows its task and site; every misuse is an error."""

    __slots__ = ()

    def read_lock(self) -> ReadSection:
        return DebugReadSection(self._readers, call_site())

    def rcu_read_lock(self) -> ReadSection:
        s = DebugReadSection(self._readers, call_site())
        s.__enter__()
        return s

    def rcu_read_unlock(self, token: ReadSection) -> None:
        if not isinstance(token, DebugReadSection):
            raise RcuUsageError(
                f"rcu_read_unlock({token!r}): expected the token rcu_read_lock() returned"
            )
        token.__exit__(None, None, None)

    def call_rcu(self, func: Callable[..., object], *args: Any) -> None:
        if self._cb_allow > 0 and callable(func):
            self._cb_allow -= 1
        else:
            self._call_rcu_slow(func)
        self._cbs.enqueue(_DebugHead(func, args, call_site()))
        if not self._cb_kicked:
            self._cb_kicked = True
            self._cb_wake.set()


@asynccontextmanager
async def _nursery_or(nursery: trio.Nursery | None) -> AsyncIterator[trio.Nursery]:
    if nursery is not None:
        yield nursery
        return
    async with trio.open_nursery() as own:
        yield own


def _raise_exit_errors(body: BaseException | None, errors: list[BaseException]) -> None:
    msg = f"{len(errors)} error(s) in RCU callbacks or release functions"
    if body is not None:
        if errors:
            raise BaseExceptionGroup(msg, [body, *errors])
        raise body
    if errors:
        if all(isinstance(e, Exception) for e in errors):
            raise ExceptionGroup(msg, [e for e in errors if isinstance(e, Exception)])
        raise BaseExceptionGroup(msg, errors)


@asynccontextmanager
async def open_domain(
    *,
    debug: bool = False,
    max_pending: int = DEFAULT_MAX_PENDING,
    release: ReleaseTarget = None,
    on_error: Callable[[Exception], object] | None = None,
    profile: str = "v6.3",
    drain_delay: float | None = None,
    kick_delay: float = 0.0,
    page_size: int = 4096,
    close_timeout: float = 5.0,
    initial_gp_seq: int = 0,
    nursery: trio.Nursery | None = None,
) -> AsyncIterator[RcuDomain]:
    """Open an RCU domain: ``async with rcukit.open_domain() as rcu:``.

    The grace-period and callback tasks run in a nursery of the domain's own, or in
    ``nursery`` if given. Every keyword but ``nursery`` is a :class:`DomainConfig` field (see
    there). Leaving the block releases everything queued (see the module docstring).
    """
    cfg = DomainConfig(
        debug=debug,
        max_pending=max_pending,
        release=release,
        on_error=on_error,
        profile=profile,
        drain_delay=drain_delay,
        kick_delay=kick_delay,
        page_size=page_size,
        close_timeout=close_timeout,
        initial_gp_seq=initial_gp_seq,
    )
    dom = (_DebugRcuDomain if debug else RcuDomain)(cfg)
    body: BaseException | None = None
    async with _nursery_or(nursery) as n:
        await dom._start(n)
        try:
            yield dom
            await dom._flush()
        except BaseException as exc:
            body = exc
        with trio.CancelScope(shield=True):
            await dom._shutdown(aborted=body is not None)
    _raise_exit_errors(body, dom._take_errors())
