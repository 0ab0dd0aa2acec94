"""``kvfree_rcu()`` for Python objects: the kernel's batching, block for block (kernel.md §1).

One :class:`KvfreeQueue` is one ``struct kfree_rcu_cpu`` (krcp); what it needs of its domain
comes through a :class:`~rcukit.app.kvfree_host.KvfreeHost`. The domain has a default queue;
workers that retire a lot can have their own (:meth:`RcuDomain.kvfree_queue`), the way each CPU
has its own krcp, so one worker's burst kicks only its own monitor.

* **Blocks.** Objects are stored in page-sized pointer blocks (``kvfree_rcu_bulk_data``) of
  ``KVFREE_BULK_MAX_ENTR`` slots, computed with the profile's formula for the configured page
  size and 8-byte pointers: 508 with the default v6.3 profile, 510 with v6.1. A block is filled
  per *channel*: the kernel's channels are "slab pointers" (``kfree_bulk``) and "vmalloc
  pointers" (``vfree`` each); here a channel is one release target, so a block of pooled
  objects goes back to its pool with exactly one ``free_bulk()`` call, a block of objects with a
  per-object release function is walked object by object (the vmalloc channel's shape), and the
  default channel just drops the references.
* **Snapshots (v6.3).** Each insert stamps its block with ``get_state_synchronize_rcu()``
  (``bnode->gp_snap``), so the monitor frees blocks whose grace period has already passed
  without asking for a new one (``kvfree_rcu_drain_ready``).
* **Monitor.** The first object after the queue went idle arms it to run ``KFREE_DRAIN_JIFFIES``
  later (5 s from v6.1, HZ/50 before); once a block's worth of objects is queued it is pulled in
  ("kick", v6.1). It detaches every channel into one of ``KFREE_N_BATCHES`` = 2 batches
  (``krwp``), stamps the batch with a polled GP cookie and requests that GP (``queue_rcu_work``).
  If both batches are still in flight it re-arms; the kernel then polls every jiffy, here the
  reclaim of a batch re-kicks the monitor instead, which is the same thing without the polling.
* **Reclaim.** After the grace period the domain's callback task releases each block in bulk and
  keeps up to ``rcu_min_cached_objs`` empty blocks for reuse (the per-CPU page cache).
* **Backpressure.** The domain caps pending objects (and, with ``max_pending_bytes``, their
  bytes: each object weighs ``size=`` or ``weight(obj)``, counted per block and given back
  when the block is released; weighed inserts always take the slow path). At a cap the
  non-blocking :meth:`KvfreeQueue.kvfree_rcu` raises, and :meth:`KvfreeQueue.kvfree_rcu_wait`
  does what the kernel's head-less path does when it cannot get a block:
  ``synchronize_rcu()``, then release inline (``kvfree_rcu_mightsleep``).

The hot path is one dict lookup, one length check and one ``list.append``: each channel's
current records carry a *grant* (``limit``) of slots the fast path may fill without
bookkeeping, sized so that the block, the kick threshold and the domain's pending cap are all
honoured exactly; the slow path settles the accounts. Grants are withdrawn whenever ``gp_seq``
moves, so the stamp every block carries is the snapshot of its last insert, as in the kernel.
The dict looked up maps release targets to records in the *calling thread's* namespace (a
``threading.local``): only the loop thread's is ever filled, so that one lookup is also the
thread check the kernel's ``krc_this_cpu_lock()`` stands for here, and a worker thread always
falls through to the slow path, which runs the insert on the loop. Released block shells are
reused (beyond the kernel's page cache, as a freed page comes back from the page allocator), so
a burst's blocks are not new objects for the garbage collector to trace.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import anyio

from rcukit.app.pool import ObjectPool
from rcukit.app.sites import call_site
from rcukit.errors import RcuArgumentError, RcuUsageError, RcuValueError
from rcukit.rcu.kvfree.core import KFREE_N_BATCHES, KfreeRcuCpu, KfreeRcuCpuWork, KvfreeRcuBulkData

if TYPE_CHECKING:
    from rcukit.app.kvfree_host import KvfreeHost

__all__ = ["KFREE_N_BATCHES", "MAX_CHANNELS", "KvfreeQueue", "ReleaseTarget", "check_kvfree_size"]

#: What ``release=`` accepts: None (drop the reference), an object with ``free_bulk(list)``
#: (an :class:`ObjectPool`), or a function called with each object.
ReleaseTarget = Any

#: Distinct release targets one queue may have pending at once; more means the caller is
#: passing a fresh callable per object (``conn.close`` rather than ``Conn.close``).
MAX_CHANNELS: Final = 256

DROP, BULK, CALL = 0, 1, 2
_get_ident = threading.get_ident
_KIND_NAMES = {DROP: "drop", BULK: "free_bulk", CALL: "call"}


def _describe(obj: object) -> str:
    return f"{type(obj).__name__} object at {id(obj):#x}"


def check_kvfree_size(size: object, what: str, shown: str = "size=") -> int:
    """``size`` as a byte count, or the error that names the call and the value.

    A byte count is an ``int`` >= 0 (0: the object weighs nothing against
    ``max_pending_bytes``, it still counts against ``max_pending``). It is checked whether or
    not the domain weighs objects: a size that is wrong on one domain is wrong on all, and a
    negative one would lower the pending bytes under a cap. A ``bool`` is refused though it
    is an ``int`` (``size=True`` is a slip, not one byte); so are floats (``nan``, ``1e3``):
    the cap's arithmetic is exact.
    """
    if type(size) is int and size >= 0:
        return size
    if isinstance(size, bool) or not isinstance(size, int):
        raise RcuArgumentError(
            f"{what}: {shown}{size!r} ({type(size).__name__}); expected an integer >= 0, the "
            "bytes the object counts for against max_pending_bytes"
        )
    if size < 0:
        raise RcuValueError(
            f"{what}: {shown}{size!r}; expected an integer >= 0, the bytes the object counts "
            "for against max_pending_bytes (0: it weighs nothing)"
        )
    return int(size)  # an int subclass (IntEnum, say): its plain value


class _Recs(list[Any]):
    """A block's records, and how far the fast path may fill them without bookkeeping.

    The grant lives on the list itself so that the fast path reaches both with one lookup.
    """

    __slots__ = ("limit",)

    def __init__(self) -> None:
        super().__init__()
        self.limit = 0


class _Block(KvfreeRcuBulkData):
    """``struct kvfree_rcu_bulk_data``: records, a GP snapshot, and (debug) the queue sites."""

    __slots__ = ("chan", "nbytes", "sites")

    records: _Recs

    def __init__(self) -> None:
        super().__init__(_Recs())
        self.chan: _Channel | None = None
        self.sites: list[str] = []
        #: Bytes its records weigh (byte accounting only).
        self.nbytes = 0


class _Channel:
    """One release target's chain of blocks (``krcp->bulk_head[idx]``), oldest first."""

    __slots__ = ("base", "blocks", "cur", "idx", "key", "kind", "recs", "target")

    def __init__(self, key: object, kind: int, target: Any, idx: int, blocks: list[_Block]) -> None:
        self.key = key
        self.kind = kind
        self.target = target
        #: This channel's index in the krcp's ``bulk`` and that list itself.
        self.idx = idx
        self.blocks = blocks
        self.cur: _Block | None = None
        #: The current block's records (or an empty list no block owns, with no grant).
        self.recs = _Recs()
        #: len(recs) when the accounts were last settled; the fast path may fill up to
        #: ``recs.limit``.
        self.base = 0

    def __repr__(self) -> str:
        return f"<channel {_KIND_NAMES[self.kind]} {self.target!r} blocks={len(self.blocks)}>"


class _Batch(KfreeRcuCpuWork[_Block]):
    """``struct kfree_rcu_cpu_work``: detached blocks waiting for one grace period
    (``gp_snap``), and an event for the barrier."""

    __slots__ = ("done",)

    def __init__(self, idx: int, done: anyio.Event) -> None:
        super().__init__(idx, 0)
        self.done = done


class _Krc(KfreeRcuCpu[_Block, _Batch, _Block]):
    """The queue's ``krcp``: one channel per release target, no list channel."""

    def __init__(self, event: Callable[[], anyio.Event]) -> None:
        super().__init__(0, [_Batch(i, event()) for i in range(KFREE_N_BATCHES)])


class KvfreeQueue:
    """A per-worker ``kvfree_rcu()`` queue: the kernel's ``struct kfree_rcu_cpu``.

    Get one from :meth:`RcuDomain.kvfree_queue`; the domain's own ``kvfree_rcu`` uses a default
    queue. Every queue's objects are covered by ``kvfree_rcu_barrier()`` and the domain's close.
    """

    __slots__ = (
        "_channels",
        "_ctr",
        "_host",
        "_kicked",
        "_krc",
        "_policy",
        "_recs",
        "_spare",
        "_thread",
        "_thread_recs",
        "deadline",
        "name",
    )

    def __init__(self, host: KvfreeHost, name: str) -> None:
        self._host = host
        self._ctr = host.counters
        self._policy = host.policy
        self.name = name
        #: The loop's thread: the fast path runs there only (``krc_this_cpu_lock``'s part).
        self._thread = host.loop.thread
        assert _get_ident() == self._thread, "a kvfree_rcu queue is built on its loop's thread"
        #: Each thread's own map of release target -> the channel's current records: only the
        #: loop thread's is ever filled, so looking a target up in the calling thread's map is
        #: the thread check and the lookup in one step (a worker thread finds nothing and takes
        #: the slow path, which marshals the call to the loop).
        self._thread_recs = threading.local()
        #: The loop thread's map (kept equal to each channel's ``recs``).
        self._recs = cast("dict[object, _Recs]", self._thread_recs.__dict__)
        #: Release target -> channel; insertion order is the channel's index in ``_krc.bulk``.
        self._channels: dict[object, _Channel] = {}
        #: Empty block shells beyond the kernel's page cache (``krc.cache``), reused before new
        #: ones are built: the page allocator's part (a freed page comes back from the per-CPU
        #: lists). Bounded by the blocks the pending cap allows; reuse keeps a burst's blocks
        #: out of the garbage collector's young generation.
        self._spare: list[_Block] = []
        self._krc = _Krc(host.loop.event)
        #: When the monitor runs next (trio clock); inf while idle.
        self.deadline = math.inf
        self._kicked = False

    def __repr__(self) -> str:
        return f"<KvfreeQueue {self.name!r} count={self.count} blocks={self.blocks_in_use()}>"

    @property
    def count(self) -> int:
        """``krc_count()``: objects in this queue's blocks, not yet detached (settled value)."""
        return self._krc.count

    # ---------------------------------------------------------------- enqueue

    def kvfree_rcu(
        self, obj: object, release: ReleaseTarget = None, size: int | None = None
    ) -> None:
        """Release ``obj`` after a grace period, batched with everything else in this queue.

        ``release`` is None (use the domain's default: an :class:`ObjectPool`, a function, or
        "drop the reference"), an object with ``free_bulk(list)``, or a function called as
        ``release(obj)`` (pass ``Conn.close``, not ``conn.close``: each distinct target gets its
        own blocks). ``size``: the bytes ``obj`` counts for when the domain weighs objects
        (``max_pending_bytes`` or ``weight``); an ``int`` >= 0 on every domain (0: the object
        weighs nothing, it still counts against ``max_pending``), else
        :class:`~rcukit.errors.RcuArgumentError` (a ``TypeError``: a float, a bool) or
        :class:`~rcukit.errors.RcuValueError` (a ``ValueError``: a negative count), raised
        before anything is queued or counted. Never blocks; raises
        :class:`~rcukit.errors.RcuBackpressureError` at the domain's pending cap (use
        :meth:`kvfree_rcu_wait` there). From a worker thread the call
        is made on the domain's loop (the kernel takes the krcp lock on every call; finding the
        channel in the calling thread's own map is this queue's equivalent), so nothing is
        queued unless it succeeds.
        """
        try:
            recs = self._thread_recs.__dict__[release]
        except (KeyError, TypeError):
            # a new release target, an unhashable one (the slow path explains), or a call
            # from a worker thread (whose map is always empty)
            self._enqueue_any_thread(obj, release, size)
            return
        if len(recs) < recs.limit:
            if size is not None:  # a grant means no byte accounting: checked, not weighed
                check_kvfree_size(size, "kvfree_rcu()")
            recs.append(obj)
            return
        self.enqueue_slow(obj, release, None, False, size)

    def _enqueue_any_thread(self, obj: object, release: ReleaseTarget, size: int | None) -> None:
        """The fast path found no channel: insert on the slow path, on the loop's thread."""
        if _get_ident() != self._thread:
            if size is not None:  # refused in the caller's thread, before the loop is asked
                check_kvfree_size(size, "kvfree_rcu()")
            site = call_site() if self._host.debug else None
            self._host.loop.run_sync(
                "kvfree_rcu()", self.enqueue_slow, obj, release, site, False, size
            )
            return
        self.enqueue_slow(obj, release, None, False, size)

    async def kvfree_rcu_wait(
        self, obj: object, release: ReleaseTarget = None, size: int | None = None
    ) -> None:
        """``kvfree_rcu_mightsleep()``: like :meth:`kvfree_rcu`, but waits at the pending cap.

        Below the cap it queues ``obj`` (and checkpoints). At the cap it does what the kernel's
        head-less path does when no block can be had: waits for a grace period
        (``synchronize_rcu()``, shared with concurrent callers) and releases ``obj`` inline.
        Must not be called inside a read section (it may wait for a GP). A bad ``size`` is
        refused as by :meth:`kvfree_rcu`, before anything else (no wait, nothing queued).
        """
        if size is not None:
            check_kvfree_size(size, "kvfree_rcu_wait()")
        h = self._host
        if not h.loop.in_loop_thread():
            h.loop.refuse_thread("kvfree_rcu_wait()", "rcu.from_thread.kvfree_rcu_wait(obj)")
        worker = h.might_sleep("kvfree_rcu_wait()")
        h.check_open("kvfree_rcu_wait()")
        site = call_site() if h.debug else None
        nbytes = 0 if h.weigh is None else h.weigh(obj, size)
        if h.room(1) >= 1 and h.cap.bytes_fit(nbytes):
            self.enqueue_slow(obj, release, site, False, size)
            await h.loop.checkpoint()
            return
        kind, target = self._resolve(release)
        if site is not None:
            h.debug_check(obj, target if kind == BULK else None, site)
        h.note_backpressure()
        try:
            await h.wait_gp(h.gp.snap, worker, "kvfree_rcu_wait()")
        except BaseException:
            # Cancelled while waiting: never lose the object; queue it past the cap (bounded
            # by the number of tasks that can be in here at once).
            if h.accepting():
                self.enqueue_slow(obj, release, site, True, size)
            raise
        self._ctr.fallback_synchronize += 1
        self._release_objects(kind, target, [obj], [site] if site else None)

    def enqueue_slow(
        self,
        obj: object,
        release: ReleaseTarget,
        site: str | None,
        force: bool,
        size: int | None = None,
    ) -> None:
        """Everything the fast path leaves out: validation, blocks, the monitor, the cap.

        The object is weighed (or ``size`` checked) first: a refusal leaves the queue as it
        was, with no new channel and no settlement.
        """
        h = self._host
        if not h.accepting():
            h.check_open("kvfree_rcu()")
        weigh = h.weigh
        if weigh is not None:
            nbytes = weigh(obj, size)
        else:
            nbytes = 0
            if size is not None:
                check_kvfree_size(size, "kvfree_rcu()")
        try:
            ch = self._channels.get(release)
        except TypeError:
            ch = None
        if ch is None:
            ch = self._new_channel(release)
        self._settle(ch)
        self._drop_grant(ch)
        if h.debug:
            if site is None:
                site = call_site()
            h.debug_check(obj, ch.target if ch.kind == BULK else None, site)
        if not force and h.room(1) < 1:
            h.note_backpressure()
            raise h.cap_error("kvfree_rcu()", "await rcu.kvfree_rcu_wait(obj)")
        if not force and not h.cap.bytes_fit(nbytes):
            h.note_backpressure()
            raise h.cap.cap_error_bytes("kvfree_rcu()", nbytes, "await rcu.kvfree_rcu_wait(obj)")
        pol = self._policy
        cap = pol.capacity
        blk = ch.cur
        if blk is None or len(blk.records) >= cap:
            blk = self._new_block(ch)
        recs = blk.records
        blk.gp_snap = h.gp.snap
        recs.append(obj)
        if nbytes:
            blk.nbytes += nbytes
            h.cap.pending_bytes += nbytes
        if site is not None:
            blk.sites.append(site)
            h.debug_sites[id(obj)] = (obj, site)
        ch.base = recs.limit = len(recs)
        krc = self._krc
        krc.count += 1
        ctr = self._ctr
        ctr.pending += 1
        if self.deadline == math.inf or (pol.kick_now(krc.count) and not self._kicked):
            self.schedule_delayed_monitor_work()
        if h.debug or weigh is not None:
            # debug mode keeps every insert on this path (sites, double-free checks), and so
            # does byte accounting (every object is weighed)
            return
        want = cap - len(recs)
        if pol.kick and not self._kicked and not self._all_busy():
            # The insert that brings the queue to a block's worth must take this path: it
            # kicks. (With both batches in flight a kick could not queue anything; their
            # reclaim re-kicks instead.)
            want = min(want, cap - 1 - krc.count)
        grant = h.room(want)
        recs.limit = len(recs) + grant
        ctr.reserved += grant

    def _resolve(self, release: ReleaseTarget) -> tuple[int, Any]:
        target = self._host.default_release if release is None else release
        if target is None:
            return DROP, None
        if callable(getattr(target, "free_bulk", None)):
            return BULK, target
        if callable(target):
            if not _takes_one_argument(target):
                raise RcuArgumentError(
                    f"release={target!r} cannot be called with the object (release(obj)); pass "
                    "a function of one argument such as `Conn.close`, not a bound method "
                    "`conn.close` or a function of none"
                )
            if inspect.iscoroutinefunction(target):
                raise RcuArgumentError(
                    f"release={target!r} is an async function; release functions run "
                    "synchronously in the domain's callback task"
                )
            return CALL, target
        raise RcuArgumentError(
            f"release={target!r}: expected None, an object with a free_bulk(list) method "
            "(an ObjectPool), or a function taking the object"
        )

    def _new_channel(self, release: ReleaseTarget) -> _Channel:
        """A channel for a new release target, checked here (once per target), at the call."""
        try:
            hash(release)
        except TypeError:
            raise RcuArgumentError(
                f"release={release!r} is not hashable; pass a plain function or a pool"
            ) from None
        kind, target = self._resolve(release)
        if len(self._channels) >= MAX_CHANNELS:
            raise RcuUsageError(
                f"kvfree_rcu(): {len(self._channels)} distinct release targets are pending in "
                f"queue {self.name!r} (at most {MAX_CHANNELS}); pass one shared function such as "
                "`Conn.close` rather than a bound method or a lambda per object"
            )
        bulk = self._krc.bulk
        blocks: list[_Block] = []
        ch = _Channel(release, kind, target, len(bulk), blocks)
        bulk.append(blocks)
        self._channels[release] = ch
        self._recs[release] = ch.recs
        return ch

    def _new_block(self, ch: _Channel) -> _Block:
        blk: _Block | None = self._krc.get_cached_bnode()
        if blk is None:
            blk = self._spare.pop() if self._spare else _Block()
        blk.chan = ch
        ch.blocks.append(blk)
        ch.cur = blk
        ch.recs = self._recs[ch.key] = recs = blk.records
        ch.base = recs.limit = 0
        return blk

    # ---------------------------------------------------------------- accounting

    def _settle(self, ch: _Channel) -> None:
        """Account for the objects the fast path appended since the last settlement."""
        used = len(ch.recs) - ch.base
        if used:
            ch.base += used
            self._krc.count += used
            ctr = self._ctr
            ctr.pending += used
            ctr.reserved -= used

    def _drop_grant(self, ch: _Channel) -> None:
        recs = ch.recs
        self._ctr.reserved -= recs.limit - ch.base
        recs.limit = ch.base

    def settle_all(self, drop_grants: bool) -> None:
        for ch in self._channels.values():
            self._settle(ch)
            if drop_grants:
                self._drop_grant(ch)

    # ---------------------------------------------------------------- monitor

    def schedule_delayed_monitor_work(self) -> None:
        """Arm the monitor, or pull it in once a block's worth is queued (the kick)."""
        h = self._host
        kick = self._policy.kick_now(self._krc.count)
        if kick and self._all_busy():
            # Both batches in flight: their reclaim re-kicks us (see the module docstring).
            kick = False
        now = h.loop.current_time()
        deadline = now + (h.kick_delay if kick else h.drain_delay)
        if kick:
            self._kicked = True
        if deadline < self.deadline:
            self.deadline = deadline
            h.monitor_armed(deadline)

    def kick(self) -> None:
        """Run the monitor on the callback task's next pass (memory pressure, backpressure)."""
        if self._krc.need_offload_krc() or self.deadline != math.inf:
            self._kicked = True
            now = self._host.loop.current_time()
            if now < self.deadline:
                self.deadline = now
                self._host.monitor_armed(now)

    def kfree_rcu_monitor(self) -> None:
        """``kfree_rcu_monitor``: drain ready blocks, queue one batch, re-arm if needed."""
        self.deadline = math.inf
        self._kicked = False
        self.settle_all(drop_grants=True)
        if self._policy.polled_snapshots:
            self.kvfree_rcu_drain_ready()
        self.kvfree_rcu_queue_batch()
        if self._krc.need_offload_krc():
            self.schedule_delayed_monitor_work()

    def kvfree_rcu_drain_ready(self) -> None:
        """``kvfree_rcu_drain_ready``: release blocks whose snapshot GP already completed."""
        krc = self._krc
        ready, _ = krc.kvfree_rcu_drain_ready(self._host.gp.done)
        if not ready:
            return
        chans = list(self._channels.values())
        ctr = self._ctr
        for idx, blocks in ready:
            ch = chans[idx]
            if ch.cur is not None and ch.cur in blocks:
                self._detach_current(ch)
            for blk in blocks:
                n = len(blk.records)
                krc.count -= n
                ctr.freed_early_polled += n
                self.release_block(blk)

    def _detach_current(self, ch: _Channel) -> None:
        ch.cur = None
        ch.recs = self._recs[ch.key] = _Recs()
        ch.base = 0

    def need_offload_krc(self) -> bool:
        return self._krc.need_offload_krc()

    def _all_busy(self) -> bool:
        return all(b.busy() for b in self._krc.krw)

    def kvfree_rcu_queue_batch(self) -> bool:
        """``kvfree_rcu_queue_batch``: detach every channel into a free batch, request its GP."""
        self.settle_all(drop_grants=True)
        h = self._host
        ctr = self._ctr

        def queue_rcu_work(b: _Batch) -> bool:
            b.gp_snap = h.gp.snap
            b.done = h.loop.event()
            ctr.batches_in_flight += 1
            h.request_gp(b.gp_snap)
            return True

        krc = self._krc
        queued = krc.kvfree_rcu_queue_batch(self._policy, ctr, lambda: h.gp.snap, queue_rcu_work)
        if queued:
            for ch in self._channels.values():
                self._detach_current(ch)
            self._channels.clear()
            self._recs.clear()
            krc.bulk.clear()
            self._kicked = False
        return queued

    def ready_batches(self) -> list[_Batch]:
        done = self._host.gp.done
        return [b for b in self._krc.krw if b.busy() and done(b.gp_snap)]

    @staticmethod
    def take_block(b: _Batch) -> _Block | None:
        """The next block of a ready batch to release (newest first), or None when empty."""
        for chan in reversed(b.bulk_free):
            if chan:
                return chan.pop()
        return None

    def finish_batch(self, b: _Batch) -> None:
        """A batch's last block was released: it is free again (``krwp`` reusable)."""
        self._ctr.batches_in_flight -= 1
        b.done.set()
        krc = self._krc
        if krc.need_offload_krc() and self._policy.kick_now(krc.count):
            self.kick()

    def inflight_events(self) -> list[anyio.Event]:
        return [b.done for b in self._krc.krw if b.busy()]

    # ---------------------------------------------------------------- release

    def release_block(self, blk: _Block) -> None:
        """``kvfree_rcu_bulk``: one bulk release per block, errors reported, block recycled."""
        h = self._host
        ch = blk.chan
        assert ch is not None
        recs = blk.records
        n = len(recs)
        if n:
            if h.debug and not h.gp.done(blk.gp_snap):
                h.report(
                    RcuUsageError(
                        f"rcukit bug: releasing a kvfree_rcu block whose GP snapshot "
                        f"{blk.gp_snap:#x} has not completed (gp_seq {h.gp.core.gp_seq.current:#x})"
                    ),
                    "the kernel WARNs here (kvfree_rcu_bulk, v6.4+)",
                )
            self._release_objects(ch.kind, ch.target, recs, blk.sites if blk.sites else None)
            recs.clear()
            blk.sites.clear()
            self._ctr.pending -= n
            if blk.nbytes:
                h.cap.pending_bytes -= blk.nbytes
                blk.nbytes = 0
        blk.chan = None
        pol = self._policy
        if not self._krc.put_cached_bnode(blk, pol.min_cached):
            spare = self._spare
            if len(spare) <= h.cap.max_pending // pol.capacity:
                spare.append(blk)
        h.room_changed()

    def _release_objects(
        self, kind: int, target: Any, objs: list[Any], sites: list[str] | None
    ) -> None:
        h = self._host
        self._ctr.objects_freed += len(objs)
        if sites is not None:
            for obj in objs:
                h.debug_sites.pop(id(obj), None)
        if kind == BULK:
            if sites is not None and isinstance(target, ObjectPool) and target.debug:
                for err in target._free_bulk_debug(objs, [f"kvfree_rcu() at {s}" for s in sites]):
                    h.report(err, f"releasing kvfree_rcu objects into {target!r}")
                return
            try:
                target.free_bulk(objs)
            except Exception as exc:
                h.report(exc, f"free_bulk() of {len(objs)} kvfree_rcu objects into {target!r}")
        elif kind == CALL:
            fn: Callable[[Any], object] = target
            fatal: BaseException | None = None
            for i, obj in enumerate(objs):
                try:
                    fn(obj)
                except Exception as exc:
                    where = f" queued by kvfree_rcu() at {sites[i]}" if sites is not None else ""
                    h.report(exc, f"release function {fn!r} on {_describe(obj)}{where}")
                except BaseException as exc:  # the rest of the block is still released
                    if fatal is None:
                        fatal = exc
            if fatal is not None:
                raise fatal

    def take_everything(self) -> list[_Block]:
        """Detach every block, queued or in flight (a closing domain releases or reports them)."""
        self.settle_all(drop_grants=True)
        krc = self._krc
        out: list[_Block] = []
        for chan in krc.bulk:
            out.extend(chan)
            chan.clear()
        for ch in self._channels.values():
            self._detach_current(ch)
        self._channels.clear()
        self._recs.clear()
        krc.bulk.clear()
        for b in krc.krw:
            if b.busy():
                for chan in b.bulk_free:
                    out.extend(chan)
                    chan.clear()
                b.done.set()
        krc.count = 0
        self.deadline = math.inf
        return out

    # ---------------------------------------------------------------- statistics

    def blocks_in_use(self) -> int:
        krc = self._krc
        n = sum(len(chan) for chan in krc.bulk)
        return n + sum(len(chan) for b in krc.krw for chan in b.bulk_free)

    def blocks_cached(self) -> int:
        return len(self._krc.cache)


def _takes_one_argument(fn: Callable[..., object]) -> bool:
    """Can ``fn(obj)`` be called? (Unknown signatures, builtins say, are given the benefit.)"""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(None)
    except TypeError:
        return False
    return True
