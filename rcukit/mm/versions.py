"""What changed in mm/page_alloc.c between the kernels the kvfree_rcu() profiles stand for.

The RFC's question (may a page be taken under ``krcp->lock``, a ``raw_spinlock_t``?) has a
different answer on each kernel, because the locks on the page allocator's fast path changed
(kernel.md 8.1, 8.2). A :class:`~rcukit.rcu.profiles.KvfreeProfile` carries one
:class:`MmVersion`, so naming a profile selects the whole kernel version, mm included.

This module is a pure vocabulary (config and the profiles import it), like :mod:`rcukit.mm.gfp`.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

#: Who protects the per-CPU page lists on the allocation fast path (kernel.md 8.1):
#:
#: * ``"irq"``: 5.8-5.13 mainline, ``local_irq_save()`` in ``rmqueue_pcplist()``, no lock on
#:   !RT; the -rt patchset of the time used a per-CPU ``local_lock`` (``pa_lock``), which
#:   sleeps on PREEMPT_RT.
#: * ``"local_lock"``: 5.14+, ``local_lock_irqsave(&pagesets.lock)``; lockdep gives a
#:   local_lock the wait type of a ``spinlock_t`` (LD_WAIT_CONFIG), so under a raw lock it is
#:   "Invalid wait context" with PROVE_RAW_LOCK_NESTING even on !RT, and a sleeping lock on RT.
#: * ``"pcp_spinlock"``: 6.0+, a ``spinlock_t pcp->lock`` per pcp ("mm/page_alloc: replace
#:   local_lock with normal spinlock"), taken by ``rmqueue_pcplist()`` and ``free_unref_page()``
#:   with ``pcp_spin_trylock_irqsave()`` (6.0, 6.1), ``pcp_spin_trylock()`` from 6.2. lockdep
#:   does not check a trylock's wait context and ``rt_spin_trylock()`` has no might-sleep
#:   check, so a pcp hit under a raw lock reports nothing on any build; a refill still takes
#:   ``zone->lock``, and a failed trylock falls back to ``rmqueue_buddy()`` (allocation) or
#:   ``free_one_page()`` (free), both under ``zone->lock``.
PcpLock = Literal["irq", "local_lock", "pcp_spinlock"]
PCP_LOCKS: Final = ("irq", "local_lock", "pcp_spinlock")

#: When ``rmqueue()`` wakes kswapd for a boosted watermark (kernel.md 8.2): ``"always"`` from
#: 5.1 (watermark boosting) to 6.4, whatever the gfp; ``"kswapd_reclaim"`` from 6.5, only for
#: masks with ``__GFP_KSWAPD_RECLAIM`` (``ALLOC_KSWAPD``).
BoostWake = Literal["always", "kswapd_reclaim"]
BOOST_WAKES: Final = ("always", "kswapd_reclaim")


@attrs.frozen
class MmVersion:
    """The page-allocator facts of one kernel version that the RFC's answer depends on."""

    #: The mainline release these facts are read from (``mm/page_alloc.c`` of that tag).
    kernel: str
    pcp_lock: PcpLock = attrs.field(validator=attrs.validators.in_(PCP_LOCKS))
    boost_wake: BoostWake = attrs.field(validator=attrs.validators.in_(BOOST_WAKES))
    #: Whether taking the pcp protection disables IRQs on !RT: ``local_irq_save()`` (5.8),
    #: ``local_lock_irqsave()`` (5.14), ``pcp_spin_trylock_irqsave()`` (6.0, 6.1: "in place
    #: as a preparation step before converting pcp locking to spin_trylock to protect
    #: against IRQ reentry"); 6.2's "mm/page_alloc: leave IRQs enabled for per-cpu page
    #: allocations" takes ``pcp_spin_trylock()`` with IRQs on (6.1.y got it in a later stable
    #: release; the v6.1 profile is the 6.1 tag).
    pcp_irqsave: bool = True


#: 5.8 (the RFC's base) through 5.13: IRQ-off pcp lists, boosted watermarks wake kswapd always.
MM_5_8: Final = MmVersion(kernel="5.8", pcp_lock="irq", boost_wake="always")
#: 5.14 ("mm/page_alloc: convert per-cpu list protection to local_lock").
MM_5_14: Final = MmVersion(kernel="5.14", pcp_lock="local_lock", boost_wake="always")
#: 6.0 ("mm/page_alloc: protect PCP lists with a spinlock"), through 6.1.
MM_6_0: Final = MmVersion(kernel="6.0", pcp_lock="pcp_spinlock", boost_wake="always")
#: 6.2 ("mm/page_alloc: leave IRQs enabled for per-cpu page allocations") through 6.4.
MM_6_2: Final = MmVersion(
    kernel="6.2", pcp_lock="pcp_spinlock", boost_wake="always", pcp_irqsave=False
)
#: 6.5 ("mm/page_alloc: don't wake kswapd from rmqueue() unless __GFP_KSWAPD_RECLAIM is
#: specified").
MM_6_5: Final = MmVersion(
    kernel="6.5", pcp_lock="pcp_spinlock", boost_wake="kswapd_reclaim", pcp_irqsave=False
)
