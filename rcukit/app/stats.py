"""``DomainStatistics``: a frozen snapshot of an RCU domain (Trio's ``statistics()`` convention).

The numbers are the ones the kernel's RCU tracing and rcuscale report, plus what
crossbeam-epoch's users asked for and could not get: how much is pending, whether backpressure
happened, and whether anything failed (peers.md §0, lesson 7).
"""

from __future__ import annotations

import attrs

__all__ = ["DomainStatistics"]


@attrs.frozen
class DomainStatistics:
    """What an :class:`~rcukit.app.RcuDomain` looks like at one instant."""

    #: ``rcu_state.gp_seq`` (low two bits: GP phase, nonzero while a GP runs).
    gp_seq: int
    gp_in_progress: bool
    #: Grace periods completed since the domain opened.
    gps_completed: int
    #: ``synchronize_rcu()``/``cond_synchronize_rcu()`` calls that had to wait for a GP ...
    sync_waits: int
    #: ... and how many of those rode on a GP another caller had already asked for.
    sync_shared: int
    callbacks_queued: int
    callbacks_invoked: int
    callbacks_pending: int
    #: Objects given to ``kvfree_rcu`` (including those freed inline under backpressure).
    kvfree_queued: int
    kvfree_freed: int
    kvfree_pending: int
    #: Freed by the monitor because their block's polled GP snapshot had already passed (v6.3).
    kvfree_freed_early: int
    #: Freed inline after a ``synchronize_rcu()`` because the pending cap was reached.
    kvfree_freed_inline: int
    #: Batches handed to a grace period (``queue_rcu_work`` calls).
    kvfree_batches: int
    #: Pointer blocks holding objects (in a queue or an in-flight batch).
    blocks_in_use: int
    #: Empty blocks kept for reuse (the per-queue page cache).
    blocks_cached: int
    kvfree_queues: int
    #: Read sections held right now (all phases).
    readers: int
    qsbr_workers: int
    qsbr_online: int
    #: The cap on pending callbacks + kvfree objects.
    max_pending: int
    #: Times a caller hit the cap (raised, or waited).
    backpressure_events: int
    #: Exceptions raised by callbacks and release functions (reported or handled).
    errors: int
    closed: bool
    #: RCU stall warnings logged (grace periods that waited longer than ``stall_timeout``).
    stall_warnings: int = 0
    #: "asyncio" or "trio": the event loop the domain runs on.
    event_loop: str = ""
    #: Bytes of kvfree_rcu objects pending (byte accounting only: ``max_pending_bytes`` or
    #: ``weight``; else 0) and the byte cap (None: none).
    kvfree_pending_bytes: int = 0
    max_pending_bytes: int | None = None
