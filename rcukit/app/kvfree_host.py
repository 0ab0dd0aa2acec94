"""The domain's side of kvfree_rcu: its :class:`KvfreeHost`, its queues and the entry points.

A :class:`~rcukit.app.kvfree.KvfreeQueue` is one ``krcp``; :class:`DomainKvfree` is the set of
them a domain owns (the default one behind ``rcu.kvfree_rcu`` and any ``kvfree_queue()``), plus
what the kernel does across CPUs: ``kvfree_rcu_barrier`` over every queue, the kworker pass that
releases batches whose GP has passed and runs due monitors, and the pending count the domain's
cap (:class:`~rcukit.app.backpressure.PendingCap`) sees.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import attrs

from rcukit.app.backpressure import PendingCap
from rcukit.app.callbacks import RESCHED_NS
from rcukit.app.config import DomainConfig
from rcukit.app.gp import GpState
from rcukit.app.grace import GracePeriods
from rcukit.app.kvfree import KvfreeQueue, ReleaseTarget, check_kvfree_size
from rcukit.app.loop import EventLoop
from rcukit.app.pool import ObjectPool
from rcukit.app.readers import QsbrWorker, QuiescentWhileWaiting, Readers
from rcukit.app.status import DomainStatus, ErrorLog
from rcukit.errors import MemoryDebugError, RcuArgumentError
from rcukit.rcu.kvfree.core import KvfreeCounters, KvfreePolicy
from rcukit.rcu.profiles import get_profile

__all__ = ["DomainKvfree", "KvfreeHost"]


def _describe(obj: object) -> str:
    return f"{type(obj).__name__} object at {id(obj):#x}"


@attrs.frozen(eq=False)
class KvfreeHost:
    """What a :class:`KvfreeQueue` needs from its domain, and nothing else.

    The domain builds one and hands it to each of its queues; the queue adds the loop's clock, the
    grants and the release targets on top of the engine in :mod:`rcukit.rcu.kvfree.core`.
    """

    #: The domain's event loop: its clock, events, and the way in from worker threads.
    loop: EventLoop
    #: The domain-wide kvfree_rcu accounting (every queue adds to it).
    counters: KvfreeCounters
    #: The profile's facts (kick, polled snapshots, block capacity, cache size).
    policy: KvfreePolicy
    #: The domain's grace-period state: ``snap`` (stamp), ``done(cookie)``, ``gp_seq``.
    gp: GpState
    #: ``KFREE_DRAIN_JIFFIES`` and the kick delay, in seconds.
    drain_delay: float
    kick_delay: float
    debug: bool
    #: What ``release=None`` means (``open_domain(release=...)``).
    default_release: ReleaseTarget
    #: ptr id -> (object, queue site) in debug mode (double-kvfree checks, leak reports).
    debug_sites: dict[int, tuple[object, str]]
    accepting: Callable[[], bool]
    check_open: Callable[[str], None]
    might_sleep: Callable[[str], QsbrWorker | None]
    wait_gp: Callable[[int, QsbrWorker | None, str], Awaitable[None]]
    request_gp: Callable[[int], None]
    #: How much of ``want`` fits under the domain's pending cap.
    room: Callable[[int], int]
    room_changed: Callable[[], None]
    note_backpressure: Callable[[], None]
    cap_error: Callable[[str, str], Exception]
    #: The queue's monitor deadline moved earlier (wake the callback task if it sleeps past it).
    monitor_armed: Callable[[float], None]
    report: Callable[[BaseException, str], None]
    debug_check: Callable[[object, object, str], None]
    #: The domain's pending cap itself, for the byte count (``max_pending_bytes``).
    cap: PendingCap
    #: ``weigh(obj, size) -> bytes`` when the domain weighs objects, else None (no byte
    #: accounting: every insert may take the fast path).
    weigh: Callable[[object, int | None], int] | None


class DomainKvfree:
    """Every kvfree_rcu queue of one domain (see the module docstring)."""

    __slots__ = (
        "_cap",
        "_debug",
        "_gp",
        "_host",
        "_loop",
        "_readers",
        "_status",
        "_weight",
        "counters",
        "default",
        "queues",
    )

    def __init__(
        self,
        config: DomainConfig,
        gp: GracePeriods,
        readers: Readers,
        cap: PendingCap,
        status: DomainStatus,
        errors: ErrorLog,
        monitor_armed: Callable[[float], None],
    ) -> None:
        self._debug = config.debug
        self._readers = readers
        self._gp = gp
        self._loop = loop = gp.loop
        self._status = status
        self.counters = KvfreeCounters()
        # The app's batches each carry one GP cookie, so a batch in flight never takes more
        # blocks: need_wait_for_krwp_work() (v6.3-rc6) holds on every profile here.
        policy = attrs.evolve(
            KvfreePolicy.from_profile(get_profile(config.profile), config.block_capacity),
            need_wait_for_krwp_work=True,
            one_batch_per_run=True,
        )
        self._host = KvfreeHost(
            loop=loop,
            counters=self.counters,
            policy=policy,
            gp=gp.state,
            drain_delay=config.effective_drain_delay,
            kick_delay=float(config.kick_delay),
            debug=config.debug,
            default_release=config.release,
            debug_sites={},
            accepting=lambda: status.accepting,
            check_open=status.check_open,
            might_sleep=readers.might_sleep,
            wait_gp=gp.wait_gp,
            request_gp=gp.request_gp,
            room=cap.room,
            room_changed=cap.room_changed,
            note_backpressure=cap.note_backpressure,
            cap_error=cap.cap_error,
            monitor_armed=monitor_armed,
            report=errors.report,
            debug_check=self._debug_check_kvfree,
            cap=cap,
            weigh=self._weigh if config.byte_accounting else None,
        )
        self._weight = config.weight
        self._cap = cap
        #: The domain's own queue (``rcu.kvfree_rcu``), first of ``queues``.
        self.default = KvfreeQueue(self._host, "default")
        self.queues = [self.default]
        cap.add_user(self)

    @property
    def block_capacity(self) -> int:
        return self._host.policy.capacity

    def new_queue(self, name: str) -> KvfreeQueue:
        if not self._loop.in_loop_thread():
            return self._loop.run_sync("kvfree_queue()", self.new_queue, name)
        self._status.check_open("kvfree_queue()")
        q = KvfreeQueue(self._host, name or f"queue{len(self.queues)}")
        self.queues.append(q)
        return q

    def _weigh(self, obj: object, size: int | None) -> int:
        """The bytes ``obj`` counts for: ``size=`` if given, else ``weight(obj)``; either is
        checked like ``size=`` (an ``int`` >= 0) before the queue changes anything."""
        if size is not None:
            return check_kvfree_size(size, "kvfree_rcu()")
        weight = self._weight
        if weight is None:
            raise RcuArgumentError(
                f"kvfree_rcu({_describe(obj)}): the domain caps pending bytes "
                "(max_pending_bytes) but this call gave no size= and open_domain() has no "
                "weight= function"
            )
        return check_kvfree_size(weight(obj), "kvfree_rcu()", f"weight({_describe(obj)}) returned ")

    def flush(self) -> None:
        """Run every queue's monitor on the callback task's next pass (``rcu.flush()``)."""
        for q in self.queues:
            q.kick()

    def _debug_check_kvfree(self, obj: object, pool: object, site: str) -> None:
        prev = self._host.debug_sites.get(id(obj))
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

    async def kvfree_rcu_barrier(self) -> None:
        """``__kvfree_rcu_barrier`` over every queue (see ``RcuDomain.kvfree_rcu_barrier``)."""
        loop = self._loop
        if not loop.in_loop_thread():
            loop.refuse_thread("kvfree_rcu_barrier()", "rcu.from_thread.kvfree_rcu_barrier()")
        check_open = self._status.check_open
        worker = self._readers.might_sleep("kvfree_rcu_barrier()")
        check_open("kvfree_rcu_barrier()")
        waited = False
        woken = loop.event()
        me = self._gp.sleeper("kvfree_rcu_barrier()", woken.set)

        async def wait(ev: anyio.Event) -> None:
            # the batch's event, or an early wake by the self-deadlock check
            if ev.is_set():
                return
            async with anyio.create_task_group() as tg:

                async def one(e: anyio.Event) -> None:
                    await e.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(one, ev)
                tg.start_soon(one, woken)
            if me.deadlock:
                raise me.refuse()

        try:
            with QuiescentWhileWaiting(worker):
                for q in list(self.queues):
                    while q.need_offload_krc():
                        if q.kvfree_rcu_queue_batch():
                            break
                        for ev in q.inflight_events():
                            await wait(ev)
                            waited = True
                        check_open("kvfree_rcu_barrier()")
                for ev in [ev for q in self.queues for ev in q.inflight_events()]:
                    await wait(ev)
                    waited = True
        finally:
            self._gp.sleepers.discard(me)
        check_open("kvfree_rcu_barrier()")
        if not waited:
            await loop.checkpoint()

    # ---------------------------------------------------------------- the kworker pass

    def next_deadline(self) -> float:
        return min(q.deadline for q in self.queues)

    async def kvfree_work(self) -> None:
        if self.counters.batches_in_flight:
            await self._reclaim_ready()
        now = self._loop.current_time()
        for q in list(self.queues):
            if q.deadline <= now:
                q.kfree_rcu_monitor()

    async def _reclaim_ready(self) -> None:
        until = time.perf_counter_ns() + RESCHED_NS
        for q in list(self.queues):
            for b in q.ready_batches():
                blk = q.take_block(b)
                while blk is not None:
                    q.release_block(blk)
                    blk = q.take_block(b)
                    if blk is not None and time.perf_counter_ns() > until:
                        await self._loop.checkpoint()
                        until = time.perf_counter_ns() + RESCHED_NS
                q.finish_batch(b)

    # ---------------------------------------------------------------- accounts

    def settle(self, drop_grants: bool) -> None:
        """Count what the fast paths appended; with ``drop_grants``, take their room back."""
        for q in self.queues:
            q.settle_all(drop_grants)

    def withdraw_grants(self) -> None:
        """``gp_seq`` moved: the next insert must restamp its block with the new snapshot."""
        if not self._debug:
            self.settle(drop_grants=True)

    @property
    def pending(self) -> int:
        """Objects queued and not yet released (settled value)."""
        return self.counters.pending

    def cap_load(self) -> int:
        return self.counters.pending + self.counters.reserved

    def cap_reserved(self) -> int:
        return self.counters.reserved

    def cap_withdraw(self) -> None:
        self.settle(drop_grants=True)

    def cap_pressure(self) -> None:
        for q in self.queues:
            q.kick()

    def blocks_in_use(self) -> int:
        return sum(q.blocks_in_use() for q in self.queues)

    def blocks_cached(self) -> int:
        return sum(q.blocks_cached() for q in self.queues)

    # ---------------------------------------------------------------- closing

    def release_barriers(self) -> None:
        """The machinery stopped: every ``kvfree_rcu_barrier`` caller wakes (and raises)."""
        for q in self.queues:
            for ev in q.inflight_events():
                ev.set()

    def release_everything(self) -> None:
        """Closing, a full GP after the domain stopped accepting work: release it all."""
        for q in self.queues:
            for blk in q.take_everything():
                q.release_block(blk)
        self.counters.batches_in_flight = 0

    def drop_everything(self) -> None:
        """Closing with readers that never left: forget every object (reported as leaked)."""
        for q in self.queues:
            for blk in q.take_everything():
                blk.records.clear()
                blk.sites.clear()
                blk.nbytes = 0
        self.counters.pending = 0
        self.counters.batches_in_flight = 0
        self._cap.pending_bytes = 0
        self._host.debug_sites.clear()
