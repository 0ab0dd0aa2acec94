"""``kvfree_rcu()`` for Python objects: the kernel's batching, block for block (kernel.md §1).

One :class:`KvfreeQueue` is one ``struct kfree_rcu_cpu`` (krcp). The domain has a default queue;
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
* **Backpressure.** The domain caps pending objects. At the cap the non-blocking
  :meth:`KvfreeQueue.kvfree_rcu` raises, and :meth:`KvfreeQueue.kvfree_rcu_wait` does what the
  kernel's head-less path does when it cannot get a block: ``synchronize_rcu()``, then release
  inline (``kvfree_rcu_mightsleep``).

The hot path is one dict lookup, one length check and one ``list.append``: each channel holds a
*grant* (``limit``) of slots it may fill without bookkeeping, sized so that the block, the kick
threshold and the domain's pending cap are all honoured exactly; the slow path settles the
accounts. Grants are withdrawn whenever ``gp_seq`` moves, so the stamp every block carries is
the snapshot of its last insert, as in the kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from rcukit.app.pool import ObjectPool
from rcukit.app.sites import call_site
from rcukit.errors import RcuArgumentError, RcuUsageError

if TYPE_CHECKING:
    from rcukit.app.domain import RcuDomain

__all__ = ["KFREE_N_BATCHES", "MAX_CHANNELS", "KvfreeQueue", "ReleaseTarget"]

#: What ``release=`` accepts: None (drop the reference), an object with ``free_bulk(list)``
#: (an :class:`ObjectPool`), or a function called with each object.
ReleaseTarget = Any

KFREE_N_BATCHES: Final = 2
#: Distinct release targets one queue may have pending at once; more means the caller is
#: passing a fresh callable per object (``conn.close`` rather than ``Conn.close``).
MAX_CHANNELS: Final = 256

DROP, BULK, CALL = 0, 1, 2
_KIND_NAMES = {DROP: "drop", BULK: "free_bulk", CALL: "call"}


def _describe(obj: object) -> str:
    return f"{type(obj).__name__} object at {id(obj):#x}"


class _Channel:
    """One release target's chain of blocks (``krcp->bulk_head[idx]``), oldest first."""

    __slots__ = ("base", "blocks", "cur", "key", "kind", "limit", "recs", "target")

    def __init__(self, key: object, kind: int, target: Any) -> None:
        self.key = key
        self.kind = kind
        self.target = target
        self.blocks: list[_Block] = []
        self.cur: _Block | None = None
        #: The current block's records (or an empty list no block owns).
        self.recs: list[Any] = []
        #: len(recs) when the accounts were last settled; the fast path may fill up to limit.
        self.base = 0
        self.limit = 0

    def __repr__(self) -> str:
        return f"<channel {_KIND_NAMES[self.kind]} {self.target!r} blocks={len(self.blocks)}>"


class _Block:
    """``struct kvfree_rcu_bulk_data``: records, a GP snapshot, and (debug) the queue sites."""

    __slots__ = ("chan", "gp_snap", "records", "sites")

    def __init__(self) -> None:
        self.chan: _Channel | None = None
        self.gp_snap = 0
        self.records: list[Any] = []
        self.sites: list[str] = []


class _Batch:
    """``struct kfree_rcu_cpu_work``: detached blocks waiting for one grace period."""

    __slots__ = ("blocks", "done", "target")

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self.target = 0
        self.done = trio.Event()


class KvfreeQueue:
    """A per-worker ``kvfree_rcu()`` queue: the kernel's ``struct kfree_rcu_cpu``.

    Get one from :meth:`RcuDomain.kvfree_queue`; the domain's own ``kvfree_rcu`` uses a default
    queue. Every queue's objects are covered by ``kvfree_rcu_barrier()`` and the domain's close.
    """

    __slots__ = (
        "_batches",
        "_cache",
        "_chan_get",
        "_channels",
        "_dom",
        "_kicked",
        "count",
        "deadline",
        "name",
    )

    def __init__(self, dom: RcuDomain, name: str) -> None:
        self._dom = dom
        self.name = name
        self._channels: dict[object, _Channel] = {}
        self._chan_get = self._channels.get
        self._batches = tuple(_Batch() for _ in range(KFREE_N_BATCHES))
        self._cache: list[_Block] = []
        #: ``krc_count()``: objects in this queue's blocks, not yet detached (settled value).
        self.count = 0
        #: When the monitor runs next (trio clock); inf while idle.
        self.deadline = math.inf
        self._kicked = False

    def __repr__(self) -> str:
        return f"<KvfreeQueue {self.name!r} count={self.count} blocks={self.blocks_in_use()}>"

    # ---------------------------------------------------------------- enqueue

    def kvfree_rcu(self, obj: object, release: ReleaseTarget = None) -> None:
        """Release ``obj`` after a grace period, batched with everything else in this queue.

        ``release`` is None (use the domain's default: an :class:`ObjectPool`, a function, or
        "drop the reference"), an object with ``free_bulk(list)``, or a function called as
        ``release(obj)`` (pass ``Conn.close``, not ``conn.close``: each distinct target gets its
        own blocks). Never blocks; raises :class:`~rcukit.errors.RcuBackpressureError` at the
        domain's pending cap (use :meth:`kvfree_rcu_wait` there).
        """
        try:
            ch = self._chan_get(release)
        except TypeError:  # unhashable release target: the slow path explains
            ch = None
        if ch is not None:
            recs = ch.recs
            if len(recs) < ch.limit:
                recs.append(obj)
                return
        self.enqueue_slow(obj, release, None, False)

    async def kvfree_rcu_wait(self, obj: object, release: ReleaseTarget = None) -> None:
        """``kvfree_rcu_mightsleep()``: like :meth:`kvfree_rcu`, but waits at the pending cap.

        Below the cap it queues ``obj`` (and checkpoints). At the cap it does what the kernel's
        head-less path does when no block can be had: waits for a grace period
        (``synchronize_rcu()``, shared with concurrent callers) and releases ``obj`` inline.
        Must not be called inside a read section (it may wait for a GP).
        """
        d = self._dom
        worker = d._might_sleep("kvfree_rcu_wait()")
        d._check_open("kvfree_rcu_wait()")
        site = call_site() if d._debug else None
        if d._room(1) >= 1:
            self.enqueue_slow(obj, release, site, False)
            await trio.lowlevel.checkpoint()
            return
        kind, target = self._resolve(release)
        if site is not None:
            d._debug_check_kvfree(obj, target if kind == BULK else None, site)
        d._note_backpressure()
        try:
            await d._wait_gp(d._gp.snap, worker)
        except BaseException:
            # Cancelled while waiting: never lose the object; queue it past the cap (bounded
            # by the number of tasks that can be in here at once).
            if d._accepting:
                self.enqueue_slow(obj, release, site, True)
            raise
        d._kv_freed_inline += 1
        self._release_objects(kind, target, [obj], [site] if site else None)

    def enqueue_slow(
        self, obj: object, release: ReleaseTarget, site: str | None, force: bool
    ) -> None:
        """Everything the fast path leaves out: validation, blocks, the monitor, the cap."""
        d = self._dom
        if not d._accepting:
            d._check_open("kvfree_rcu()")
        try:
            ch = self._channels.get(release)
        except TypeError:
            ch = None
        if ch is None:
            ch = self._new_channel(release)
        self._settle(ch)
        self._drop_grant(ch)
        if d._debug:
            if site is None:
                site = call_site()
            d._debug_check_kvfree(obj, ch.target if ch.kind == BULK else None, site)
        if not force and d._room(1) < 1:
            d._note_backpressure()
            raise d._cap_error("kvfree_rcu()", "await rcu.kvfree_rcu_wait(obj)")
        cap = d._capacity
        blk = ch.cur
        if blk is None or len(blk.records) >= cap:
            blk = self._new_block(ch)
        recs = blk.records
        blk.gp_snap = d._gp.snap
        recs.append(obj)
        if site is not None:
            blk.sites.append(site)
            d._kv_debug[id(obj)] = (obj, site)
        ch.base = ch.limit = len(recs)
        self.count += 1
        d._kv_committed += 1
        if self.deadline == math.inf or (d._kick and self.count >= cap and not self._kicked):
            self.schedule_monitor()
        if d._debug:
            return  # debug mode keeps every insert on this path (sites, double-free checks)
        want = cap - len(recs)
        if d._kick and not self._kicked and not self._all_busy():
            # The insert that brings the queue to a block's worth must take this path: it
            # kicks. (With both batches in flight a kick could not queue anything; their
            # reclaim re-kicks instead.)
            want = min(want, cap - 1 - self.count)
        grant = d._room(want)
        ch.limit = len(recs) + grant
        d._kv_reserved += grant

    def _resolve(self, release: ReleaseTarget) -> tuple[int, Any]:
        target = self._dom._default_release if release is None else release
        if target is None:
            return DROP, None
        if callable(getattr(target, "free_bulk", None)):
            return BULK, target
        if callable(target):
            return CALL, target
        raise RcuArgumentError(
            f"release={target!r}: expected None, an object with a free_bulk(list) method "
            "(an ObjectPool), or a function taking the object"
        )

    def _new_channel(self, release: ReleaseTarget) -> _Channel:
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
        ch = self._channels[release] = _Channel(release, kind, target)
        return ch

    def _new_block(self, ch: _Channel) -> _Block:
        blk = self._cache.pop() if self._cache else _Block()
        blk.chan = ch
        ch.blocks.append(blk)
        ch.cur = blk
        ch.recs = blk.records
        ch.base = ch.limit = 0
        return blk

    # ---------------------------------------------------------------- accounting

    def _settle(self, ch: _Channel) -> None:
        """Account for the objects the fast path appended since the last settlement."""
        used = len(ch.recs) - ch.base
        if used:
            ch.base += used
            self.count += used
            d = self._dom
            d._kv_committed += used
            d._kv_reserved -= used

    def _drop_grant(self, ch: _Channel) -> None:
        self._dom._kv_reserved -= ch.limit - ch.base
        ch.limit = ch.base

    def settle_all(self, drop_grants: bool) -> None:
        for ch in self._channels.values():
            self._settle(ch)
            if drop_grants:
                self._drop_grant(ch)

    # ---------------------------------------------------------------- monitor

    def schedule_monitor(self) -> None:
        """``schedule_delayed_monitor_work``: arm, or pull in once a block's worth is queued."""
        d = self._dom
        kick = d._kick and self.count >= d._capacity
        if kick and self._all_busy():
            # Both batches in flight: their reclaim re-kicks us (see the module docstring).
            kick = False
        now = trio.current_time()
        deadline = now + (d._kick_delay if kick else d._drain_delay)
        if kick:
            self._kicked = True
        if deadline < self.deadline:
            self.deadline = deadline
            d._monitor_armed(deadline)

    def kick(self) -> None:
        """Run the monitor on the callback task's next pass (memory pressure, backpressure)."""
        if self.need_offload() or self.deadline != math.inf:
            self._kicked = True
            now = trio.current_time()
            if now < self.deadline:
                self.deadline = now
                self._dom._monitor_armed(now)

    def monitor(self) -> None:
        """``kfree_rcu_monitor``: drain ready blocks, queue one batch, re-arm if needed."""
        self.deadline = math.inf
        self._kicked = False
        self.settle_all(drop_grants=True)
        if self._dom._profile.polled_snapshots:
            self._drain_ready()
        self.queue_batch()
        if self.need_offload():
            self.schedule_monitor()

    def _drain_ready(self) -> None:
        """``kvfree_rcu_drain_ready``: free blocks whose snapshot GP already completed."""
        d = self._dom
        done = d._gp.done
        for ch in list(self._channels.values()):
            blocks = ch.blocks
            i = 0
            while i < len(blocks) and done(blocks[i].gp_snap):
                i += 1
            if not i:
                continue
            ready = blocks[:i]
            del blocks[:i]
            if ch.cur is not None and ch.cur in ready:
                self._detach_current(ch)
            for blk in ready:
                n = len(blk.records)
                self.count -= n
                d._kv_freed_early += n
                self.release_block(blk)

    def _detach_current(self, ch: _Channel) -> None:
        ch.cur = None
        ch.recs = []
        ch.base = ch.limit = 0

    def need_offload(self) -> bool:
        return any(ch.blocks for ch in self._channels.values())

    def _all_busy(self) -> bool:
        return all(b.blocks for b in self._batches)

    def queue_batch(self) -> bool:
        """``kvfree_rcu_queue_batch``: detach every channel into a free batch, request its GP."""
        d = self._dom
        self.settle_all(drop_grants=True)
        for b in self._batches:
            if b.blocks:
                continue  # need_wait_for_krwp_work
            if not self.need_offload():
                return False
            for ch in self._channels.values():
                b.blocks.extend(ch.blocks)
                ch.blocks.clear()
                self._detach_current(ch)
            self._channels.clear()
            self.count = 0
            self._kicked = False
            b.target = d._gp.snap
            b.done = trio.Event()
            d._kv_inflight += 1
            d._kv_batches += 1
            d._request_gp(b.target)
            return True
        return False

    def ready_batches(self) -> list[_Batch]:
        done = self._dom._gp.done
        return [b for b in self._batches if b.blocks and done(b.target)]

    def finish_batch(self, b: _Batch) -> None:
        """A batch's last block was released: it is free again (``krwp`` reusable)."""
        d = self._dom
        d._kv_inflight -= 1
        b.done.set()
        if self.need_offload() and d._kick and self.count >= d._capacity:
            self.kick()

    def inflight_events(self) -> list[trio.Event]:
        return [b.done for b in self._batches if b.blocks]

    # ---------------------------------------------------------------- release

    def release_block(self, blk: _Block) -> None:
        """``kvfree_rcu_bulk``: one bulk release per block, errors reported, block recycled."""
        d = self._dom
        ch = blk.chan
        assert ch is not None
        recs = blk.records
        n = len(recs)
        if n:
            if d._debug and not d._gp.done(blk.gp_snap):
                d._report(
                    RcuUsageError(
                        f"rcukit bug: releasing a kvfree_rcu block whose GP snapshot "
                        f"{blk.gp_snap:#x} has not completed (gp_seq {d._gp.gp_seq:#x})"
                    ),
                    "the kernel WARNs here (kvfree_rcu_bulk, v6.4+)",
                )
            self._release_objects(ch.kind, ch.target, recs, blk.sites if blk.sites else None)
            recs.clear()
            blk.sites.clear()
            d._kv_committed -= n
        blk.chan = None
        if len(self._cache) < d._profile.min_cached_objs:
            self._cache.append(blk)
        d._room_changed()

    def _release_objects(
        self, kind: int, target: Any, objs: list[Any], sites: list[str] | None
    ) -> None:
        d = self._dom
        d._kv_freed += len(objs)
        if sites is not None:
            for obj in objs:
                d._kv_debug.pop(id(obj), None)
        if kind == BULK:
            if sites is not None and isinstance(target, ObjectPool) and target.debug:
                for err in target._free_bulk_debug(objs, [f"kvfree_rcu() at {s}" for s in sites]):
                    d._report(err, f"releasing kvfree_rcu objects into {target!r}")
                return
            try:
                target.free_bulk(objs)
            except Exception as exc:
                d._report(exc, f"free_bulk() of {len(objs)} kvfree_rcu objects into {target!r}")
        elif kind == CALL:
            fn: Callable[[Any], object] = target
            for i, obj in enumerate(objs):
                try:
                    fn(obj)
                except Exception as exc:
                    where = f" queued by kvfree_rcu() at {sites[i]}" if sites is not None else ""
                    d._report(exc, f"release function {fn!r} on {_describe(obj)}{where}")

    def take_everything(self) -> list[_Block]:
        """Detach every block, queued or in flight (a closing domain releases or reports them)."""
        self.settle_all(drop_grants=True)
        out: list[_Block] = []
        for ch in self._channels.values():
            out.extend(ch.blocks)
            ch.blocks.clear()
            self._detach_current(ch)
        self._channels.clear()
        for b in self._batches:
            if b.blocks:
                out.extend(b.blocks)
                b.blocks.clear()
                b.done.set()
        self.count = 0
        self.deadline = math.inf
        return out

    # ---------------------------------------------------------------- statistics

    def blocks_in_use(self) -> int:
        n = sum(len(ch.blocks) for ch in self._channels.values())
        return n + sum(len(b.blocks) for b in self._batches)

    def blocks_cached(self) -> int:
        return len(self._cache)
