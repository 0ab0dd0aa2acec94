"""kvfree_rcu(): one clock-free engine (:mod:`.core`), the simulated kernel's host (:mod:`.sim`)
and the allocator-core variants it draws block pages from (:mod:`.variants`).

The application domain's host is :mod:`rcukit.app.kvfree`, on the same core.
"""

from rcukit.rcu.kvfree.core import (
    FREE_N_CHANNELS,
    KFREE_N_BATCHES,
    KfreeRcuCpu,
    KfreeRcuCpuWork,
    KvfreeCounters,
    KvfreePolicy,
    KvfreeRcuBulkData,
    KvfreeStatistics,
)
from rcukit.rcu.kvfree.sim import PTR_TYPECODE, VMALLOC_START, Bnode, Krc, Krwp, KvfreeRcu
from rcukit.rcu.kvfree.variants import (
    KVFREE_REFILL_GFP,
    NOLOCK_GFP,
    BlockPageSource,
    BlockSources,
    GfpPageSource,
    MempoolSource,
    NolockSource,
    PageCacheSource,
    builtin_variants,
    check_variant_name,
)

__all__ = [
    "FREE_N_CHANNELS",
    "KFREE_N_BATCHES",
    "KVFREE_REFILL_GFP",
    "NOLOCK_GFP",
    "PTR_TYPECODE",
    "VMALLOC_START",
    "BlockPageSource",
    "BlockSources",
    "Bnode",
    "GfpPageSource",
    "KfreeRcuCpu",
    "KfreeRcuCpuWork",
    "Krc",
    "Krwp",
    "KvfreeCounters",
    "KvfreePolicy",
    "KvfreeRcu",
    "KvfreeRcuBulkData",
    "KvfreeStatistics",
    "MempoolSource",
    "NolockSource",
    "PageCacheSource",
    "builtin_variants",
    "check_variant_name",
]
