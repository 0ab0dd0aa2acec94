"""``RcuDomain`` and ``open_domain``: real RCU for an asyncio or Trio program, on its real clock.

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
runs ``rcu_barrier()`` and ``kvfree_rcu_barrier()`` until nothing is pending (at most
``close_timeout``, then :class:`~rcukit.errors.RcuLeakError`). Leaving it by an
exception or a cancellation stops accepting work, then (shielded, bounded by
``close_timeout``) waits for the readers still inside a section, runs one last grace period
inline and releases everything; if readers never leave, what could not be released is reported
as an :class:`~rcukit.errors.RcuLeakError` instead. Exceptions raised by callbacks and release
functions never stop the machinery or the rest of their batch: they go to ``on_error``, or are
raised together as an ``ExceptionGroup`` when the domain exits.

The domain belongs to the event loop it was opened in (asyncio or Trio, through AnyIO; see
:mod:`rcukit.app.loop`). Worker threads read with the same ``read_lock()``; their ``call_rcu``,
``kvfree_rcu`` and other non-blocking updates run on the loop (the thread waits for the
result), and what blocks has a blocking form in :attr:`RcuDomain.from_thread`.

:class:`RcuDomain` holds no machinery of its own: it composes the parts, each owning its state,
the way the kernel splits ``tree.c`` and its plugins — the read side
(:class:`~rcukit.app.readers.Readers`), grace periods (:mod:`rcukit.app.grace`), callbacks
(:mod:`rcukit.app.callbacks`), the pending cap (:mod:`rcukit.app.backpressure`), kvfree_rcu
(:mod:`rcukit.app.kvfree_host` over :mod:`rcukit.app.kvfree`) and the domain's life
(:mod:`rcukit.app.lifecycle`) — and wires what one part must tell another.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from rcukit.app.backpressure import PendingCap
from rcukit.app.callbacks import Callbacks
from rcukit.app.config import APP_DRAIN_DELAY, DEFAULT_MAX_PENDING, DomainConfig
from rcukit.app.gp import GpState
from rcukit.app.grace import GracePeriods, check_cookie
from rcukit.app.kvfree import KvfreeQueue, ReleaseTarget, check_kvfree_size
from rcukit.app.kvfree_host import DomainKvfree
from rcukit.app.lifecycle import DomainLifecycle
from rcukit.app.loop import EventLoop, thread_in_read_lock
from rcukit.app.readers import DebugReadSection, QsbrWorker, Readers, ReadSection
from rcukit.app.sites import call_site
from rcukit.app.stats import DomainStatistics
from rcukit.app.status import DomainStatus, ErrorLog, raise_exit_errors
from rcukit.app.wakeup import Wakeup
from rcukit.errors import ConfigError, RcuLeakError, RcuUsageError
from rcukit.rcu.gpseq import RCU_GET_STATE_COMPLETED
from rcukit.rcu.profiles import DEFAULT_PROFILES

__all__ = ["RcuDomain", "open_domain"]


class RcuDomain:
    """An RCU domain for one asyncio or Trio program (get one from :func:`open_domain`).

    Read side: ``with rcu.read_lock():`` (or ``rcu_read_lock()``/``rcu_read_unlock(token)``),
    QSBR workers from :meth:`register_qsbr`. Update side: :meth:`synchronize_rcu`,
    :meth:`call_rcu`, :meth:`kvfree_rcu`, the polled API, and the two barriers.
    """

    def __init__(self, config: DomainConfig) -> None:
        self._cfg = config
        self._loop = loop = EventLoop()
        self._status = status = DomainStatus()
        self._errors = errors = ErrorLog(config.on_error)
        gp_wake = Wakeup(loop)
        self._readers = readers = Readers(
            config.debug, loop, gp_wake.set_threadsafe, request_flip=self._request_gp_threadsafe
        )
        self._cap = cap = PendingCap(config.max_pending, loop, config.max_pending_bytes)
        self._gp = gp = GracePeriods(
            GpState(config.initial_gp_seq, loop),
            loop,
            readers,
            gp_wake,
            status,
            on_start=self._gp_started,
            on_end=self._gp_ended,
            stall_timeout=config.stall_timeout,
        )
        self._callbacks = callbacks = Callbacks(gp, loop, readers, cap, status, errors)
        self._kvfree = kvfree = DomainKvfree(
            config, gp, readers, cap, status, errors, monitor_armed=callbacks.wake_by
        )
        self._krc = kvfree.default
        # The hot path is the default queue's own bound method, so ``rcu.kvfree_rcu(obj)`` costs
        # exactly what ``KvfreeQueue.kvfree_rcu`` costs (the method below documents the call).
        self.kvfree_rcu = self._krc.kvfree_rcu  # type: ignore[method-assign]
        self._life = DomainLifecycle(config, status, errors, readers, gp, callbacks, kvfree, cap)
        #: Blocking forms of the update side, for worker threads (see :class:`FromThread`).
        self.from_thread = FromThread(self)

    def _request_gp_threadsafe(self) -> None:
        gp = self._gp
        self._loop.call_soon_threadsafe(lambda: gp.request_gp(gp.state.snap))

    def _gp_started(self) -> None:
        self._kvfree.withdraw_grants()

    def _gp_ended(self) -> None:
        self._kvfree.withdraw_grants()
        self._callbacks.gp_ended(self._kvfree.counters.batches_in_flight > 0)

    def __repr__(self) -> str:
        state = "closed" if self._status.closed else "open"
        gp_seq = self._gp.state.core.gp_seq.current
        return (
            f"<RcuDomain {state} on {self._loop.name} gp_seq={gp_seq:#x} debug={self.debug}>"
        )

    # ================================================================ properties

    @property
    def debug(self) -> bool:
        return self._cfg.debug

    @property
    def closed(self) -> bool:
        """The domain has closed (everything released); it accepts no more work."""
        return self._status.closed

    @property
    def closing(self) -> bool:
        """The ``async with`` block was left: a callback that re-queues itself should stop."""
        st = self._status
        return st.closing or st.stopping or st.closed

    @property
    def event_loop(self) -> str:
        """"asyncio" or "trio": the loop the domain was opened in."""
        return self._loop.name

    @property
    def stalls(self) -> int:
        """RCU stall warnings logged so far (see ``stall_timeout``)."""
        return self._gp.stalls

    @property
    def config(self) -> DomainConfig:
        return self._cfg

    @property
    def block_capacity(self) -> int:
        """``KVFREE_BULK_MAX_ENTR``: objects per kvfree_rcu block."""
        return self._kvfree.block_capacity

    # ================================================================ readers

    def read_lock(self) -> ReadSection:
        """``with rcu.read_lock():`` — an RCU read section; nestable, may await inside.

        Grace periods wait for every section that began before them. Enter the returned guard
        right away (it belongs to the current reader phase).
        """
        return self._readers.current

    def rcu_read_lock(self) -> ReadSection:
        """Enter a read section and return the token :meth:`rcu_read_unlock` needs (SRCU-style)."""
        g = self._readers.current
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
        self._status.check_open("register_qsbr()")
        return self._readers.register(call_site())

    def _reader_check(self, what: str) -> None:
        """``rcu_dereference_check()``: debug mode only, called by RcuPointer."""
        self._readers.reader_check(what)

    # ================================================================ grace periods

    async def synchronize_rcu(self) -> None:
        """Wait until every read section that began before this call has ended.

        Concurrent callers share grace periods. Must not be called inside a read section (it
        would wait for itself; debug mode raises). From an online QSBR worker it counts as a
        quiescent state, as in liburcu.
        """
        await self._gp.synchronize_rcu("synchronize_rcu()")

    def get_state_synchronize_rcu(self) -> int:
        """A cookie for :meth:`poll_state_synchronize_rcu`; does not start a grace period."""
        return self._gp.state.snap

    def start_poll_synchronize_rcu(self) -> int:
        """Like :meth:`get_state_synchronize_rcu`, and make sure a grace period will run."""
        if not self._loop.in_loop_thread():
            return self._loop.run_sync("start_poll_synchronize_rcu()", self._gp.start_poll)
        return self._gp.start_poll()

    def poll_state_synchronize_rcu(self, cookie: int) -> bool:
        """Has a full grace period elapsed since ``cookie`` was taken? Never blocks."""
        return self._gp.state.done(check_cookie(cookie))

    def get_completed_synchronize_rcu(self) -> int:
        """A cookie every poll reports as done (``RCU_GET_STATE_COMPLETED``)."""
        return RCU_GET_STATE_COMPLETED

    async def cond_synchronize_rcu(self, cookie: int) -> None:
        """Wait for a grace period only if none has elapsed since ``cookie`` was taken."""
        await self._gp.synchronize_rcu("cond_synchronize_rcu()", check_cookie(cookie))

    async def synchronize_rcu_expedited(self) -> None:
        """``synchronize_rcu_expedited()``: a grace period now, for a latency-sensitive updater.

        The kernel's expedited GP (``kernel/rcu/tree_exp.h``) skips the normal GP's pacing: it
        does not wait for the GP kthread's ``jiffies_till_first_fqs`` scans but IPIs every CPU
        and has each reader report as it leaves. A domain's normal GP already works that way
        (it starts as soon as it is needed, and the last reader of the old phase wakes it;
        nothing is scanned on a timer), so the guarantee and the latency are those of
        :meth:`synchronize_rcu`; what this adds is the reclaim side of "now": every
        kvfree_rcu queue's monitor runs at once (:meth:`flush`), so what was retired before
        the call rides on the next grace period instead of waiting for a drain. Same rules as
        :meth:`synchronize_rcu` (never inside a read section).
        """
        if self._loop.in_loop_thread() and not self._status.closed:
            self._cap.flush()
        await self._gp.synchronize_rcu("synchronize_rcu_expedited()")

    # ================================================================ callbacks

    def call_rcu(self, func: Callable[..., object], *args: Any) -> None:
        """Call ``func(*args)`` from the domain's callback task after a grace period.

        Never blocks. At the pending cap it raises :class:`~rcukit.errors.RcuBackpressureError`
        (use :meth:`call_rcu_wait` to wait for room instead). ``func`` must be a plain
        function; what it raises is reported, never lost, and never stops other callbacks.
        """
        self._callbacks.call_rcu(func, args, None)

    async def call_rcu_wait(self, func: Callable[..., object], *args: Any) -> None:
        """:meth:`call_rcu`, but at the pending cap wait for room instead of raising."""
        await self._callbacks.call_rcu_wait(func, args, call_site() if self.debug else None)

    async def rcu_barrier(self) -> None:
        """Wait until every callback queued by :meth:`call_rcu` before this call has run.

        Like the kernel's, it says nothing about :meth:`kvfree_rcu` objects (use
        :meth:`kvfree_rcu_barrier`), and returns at once if no callback is queued.
        """
        await self._callbacks.rcu_barrier()

    # ================================================================ kvfree_rcu

    def kvfree_rcu(
        self, obj: object, release: ReleaseTarget = None, size: int | None = None
    ) -> None:
        """Release ``obj`` after a grace period, batched in blocks and released in bulk.

        ``release``: None uses the domain's default (``open_domain(release=...)``: an
        :class:`~rcukit.app.pool.ObjectPool`, a function, or "drop the reference"); a pool (or
        anything with ``free_bulk(list)``) gets one call per block; a function is called with
        each object. ``size``: the bytes ``obj`` counts for against ``max_pending_bytes`` (else
        ``weight(obj)``; not counted when the domain does not weigh objects, but checked on
        every domain: an ``int`` >= 0, 0 meaning "weighs nothing"; a float or a bool raises
        :class:`~rcukit.errors.RcuArgumentError`, a ``TypeError``, a negative count
        :class:`~rcukit.errors.RcuValueError`, a ``ValueError``, and nothing is queued). Never
        blocks; at the pending cap (objects or bytes) it raises
        :class:`~rcukit.errors.RcuBackpressureError` (await :meth:`kvfree_rcu_wait` instead).
        """
        self._krc.kvfree_rcu(obj, release, size)

    async def kvfree_rcu_wait(
        self, obj: object, release: ReleaseTarget = None, size: int | None = None
    ) -> None:
        """``kvfree_rcu_mightsleep``: at the pending cap, wait a GP and release ``obj`` inline.

        ``size`` as for :meth:`kvfree_rcu`; a bad one raises before anything waits or queues.
        """
        await self._krc.kvfree_rcu_wait(obj, release, size)

    kvfree_rcu_mightsleep = kvfree_rcu_wait

    def kvfree_queue(self, name: str = "") -> KvfreeQueue:
        """A kvfree_rcu queue of its own (a per-worker ``krcp``) for a busy worker."""
        return self._kvfree.new_queue(name)

    async def kvfree_rcu_barrier(self) -> None:
        """Wait until every object given to ``kvfree_rcu`` before this call has been released.

        The kernel's ``__kvfree_rcu_barrier``: per queue, hand what is queued to a batch
        (waiting for a batch slot if both are in flight), then wait for every batch in flight.
        Objects freed inline by :meth:`kvfree_rcu_wait` are the caller's business.
        """
        await self._kvfree.kvfree_rcu_barrier()

    def flush(self) -> None:
        """Start reclaim now: every kvfree_rcu queue's monitor runs on the callback task's
        next pass (its batch asks for a grace period at once) and pending callbacks get theirs.

        What the kernel's shrinker does (``kfree_rcu_shrink_scan`` calls ``kfree_rcu_monitor``
        on every CPU). Returns at once; ``await rcu.kvfree_rcu_barrier()`` waits for the
        release. Safe from a worker thread (the call runs on the loop).
        """
        if not self._loop.in_loop_thread():
            self._loop.run_sync("flush()", self.flush)
            return
        self._status.check_open("flush()")
        self._cap.flush()

    # ================================================================ statistics

    def statistics(self) -> DomainStatistics:
        """A frozen snapshot; cheap enough to call from a metrics loop (or a worker thread)."""
        if not self._loop.in_loop_thread():
            return self._loop.run_sync("statistics()", self.statistics)
        kvfree = self._kvfree
        kvfree.settle(drop_grants=False)
        gp = self._gp
        seq = gp.state.core.gp_seq
        cbs = self._callbacks
        kv = kvfree.counters
        r = self._readers
        return DomainStatistics(
            gp_seq=seq.current,
            gp_in_progress=seq.in_progress(),
            gps_completed=seq.completed,
            sync_waits=gp.sync_waits,
            sync_shared=gp.sync_shared,
            callbacks_queued=cbs.invoked + cbs.pending,
            callbacks_invoked=cbs.invoked,
            callbacks_pending=cbs.pending,
            kvfree_queued=kv.objects_freed + kv.pending,
            kvfree_freed=kv.objects_freed,
            kvfree_pending=kv.pending,
            kvfree_pending_bytes=self._cap.pending_bytes,
            max_pending_bytes=self._cap.max_pending_bytes,
            kvfree_freed_early=kv.freed_early_polled,
            kvfree_freed_inline=kv.fallback_synchronize,
            kvfree_batches=kv.batches_queued,
            blocks_in_use=kvfree.blocks_in_use(),
            blocks_cached=kvfree.blocks_cached(),
            kvfree_queues=len(kvfree.queues),
            readers=r.n_readers,
            qsbr_workers=len(r.by_task),
            qsbr_online=r.n_online,
            max_pending=self._cap.max_pending,
            backpressure_events=self._cap.backpressure,
            errors=self._errors.count,
            closed=self._status.closed,
            stall_warnings=gp.stalls,
            event_loop=self._loop.name,
        )


class _DebugRcuDomain(RcuDomain):
    """Debug mode: every read section knows its task and site; every misuse is an error."""

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
        self._callbacks.call_rcu(func, args, call_site())


class FromThread:
    """``rcu.from_thread``: the domain's blocking calls for a worker thread.

    Each runs the domain's own coroutine on its event loop and blocks the thread until it
    returns (AnyIO's ``from_thread.run`` with the domain's loop token), so it works from
    ``trio.to_thread.run_sync``, ``asyncio.to_thread``, ``anyio.to_thread.run_sync`` and plain
    threads alike. Called in the loop's own thread they raise ``RcuUsageError`` (they would
    block the loop they wait for); on a stopped loop, ``RcuClosedError``. Called inside the
    thread's own read section they raise ``RcuUsageError`` too (the thread would wait for
    itself): debug mode knows the thread's sections, production reads the thread's code for
    ``with rcu.read_lock():`` (:func:`~rcukit.app.loop.thread_in_read_lock`).
    """

    __slots__ = ("_rcu",)

    def __init__(self, rcu: RcuDomain) -> None:
        self._rcu = rcu

    def _run(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        rcu = self._rcu
        if rcu._loop.in_loop_thread():
            rcu._loop.run(what, fn, *args)  # raises: the loop's own thread
        r = rcu._readers
        if r.debug:
            held = r.in_read_section(r.whoami()[0]) is not None
        else:
            held = thread_in_read_lock(sys._getframe(2), r.is_held_section_owner)
        if held:
            raise RcuUsageError(
                f"rcu.from_thread.{what} inside this thread's own RCU read section: it would "
                "wait for a grace period that waits for this very reader (deadlock)"
            )
        rcu._loop.run(what, fn, *args)

    def synchronize_rcu(self) -> None:
        self._run("synchronize_rcu()", self._rcu.synchronize_rcu)

    def cond_synchronize_rcu(self, cookie: int) -> None:
        self._run("cond_synchronize_rcu()", self._rcu.cond_synchronize_rcu, cookie)

    def rcu_barrier(self) -> None:
        self._run("rcu_barrier()", self._rcu.rcu_barrier)

    def kvfree_rcu_barrier(self) -> None:
        self._run("kvfree_rcu_barrier()", self._rcu.kvfree_rcu_barrier)

    def call_rcu_wait(self, func: Callable[..., object], *args: Any) -> None:
        self._run("call_rcu_wait()", self._rcu.call_rcu_wait, func, *args)

    def kvfree_rcu_wait(
        self, obj: object, release: ReleaseTarget = None, size: int | None = None
    ) -> None:
        if size is not None:  # refused in this thread, before the loop is asked
            check_kvfree_size(size, "rcu.from_thread.kvfree_rcu_wait()")
        self._run("kvfree_rcu_wait()", self._rcu.kvfree_rcu_wait, obj, release, size)

    def synchronize_rcu_expedited(self) -> None:
        self._run("synchronize_rcu_expedited()", self._rcu.synchronize_rcu_expedited)


@asynccontextmanager
async def _nursery_or(nursery: Any) -> AsyncIterator[Any]:
    if nursery is not None:
        if not callable(getattr(nursery, "start", None)):
            raise ConfigError(
                f"nursery = {nursery!r}: expected an AnyIO task group or a Trio nursery to "
                "run the domain's tasks in (or None: the domain opens its own)"
            )
        yield nursery
        return
    async with anyio.create_task_group() as own:
        yield own


@asynccontextmanager
async def open_domain(
    *,
    debug: bool = False,
    max_pending: int = DEFAULT_MAX_PENDING,
    release: ReleaseTarget = None,
    on_error: Callable[[Exception], object] | None = None,
    profile: str = DEFAULT_PROFILES["app"],
    drain_delay: float | None = APP_DRAIN_DELAY,
    kick_delay: float = 0.0,
    page_size: int = 4096,
    close_timeout: float = 5.0,
    initial_gp_seq: int = 0,
    stall_timeout: float | None = 21.0,
    max_pending_bytes: int | None = None,
    weight: Callable[[Any], int] | None = None,
    nursery: Any = None,
) -> AsyncIterator[RcuDomain]:
    """Open an RCU domain: ``async with rcukit.open_domain() as rcu:``, under asyncio or Trio.

    The grace-period and callback tasks run in a task group of the domain's own, or in
    ``nursery`` if given (an AnyIO task group, or a Trio nursery under Trio). Every keyword but
    ``nursery`` is a :class:`DomainConfig` field (see there). Leaving the block releases
    everything queued (see the module docstring).
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
        stall_timeout=stall_timeout,
        max_pending_bytes=max_pending_bytes,
        weight=weight,
    )
    dom = (_DebugRcuDomain if debug else RcuDomain)(cfg)
    life = dom._life
    body: BaseException | None = None
    leak: RcuLeakError | None = None
    async with _nursery_or(nursery) as n:
        await life.start(n)
        try:
            yield dom
            flushed = await life.flush()
        except BaseException as exc:
            body = exc
        with anyio.CancelScope(shield=True):
            if body is not None:
                await life.shutdown(aborted=True)
            else:
                # a flush that ran out of time gives the final drain none either
                leak = await life.shutdown(aborted=False, patience=None if flushed else 0.0)
    raise_exit_errors(body if body is not None else leak, dom._errors.take())
