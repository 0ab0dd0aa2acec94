"""Real RCU for asyncio and Trio applications (and their worker threads), on the loop's clock.

``async with rcukit.open_domain() as rcu:`` starts the grace-period machinery; readers use
``with rcu.read_lock():``; updaters publish through :class:`RcuPointer` and retire old values
with ``rcu.kvfree_rcu(old)`` (batched, released in bulk, pooled objects back to their
:class:`ObjectPool`), ``rcu.call_rcu(fn, *args)`` or ``await rcu.synchronize_rcu()``;
:class:`RcuDict` is the copy-on-write table (config, routes) built on them.
"""

from rcukit.app.config import APP_DRAIN_DELAY as APP_DRAIN_DELAY
from rcukit.app.config import DEFAULT_MAX_PENDING as DEFAULT_MAX_PENDING
from rcukit.app.config import DomainConfig as DomainConfig
from rcukit.app.domain import RcuDomain as RcuDomain
from rcukit.app.domain import open_domain as open_domain
from rcukit.app.kvfree import KFREE_N_BATCHES as KFREE_N_BATCHES
from rcukit.app.kvfree import KvfreeQueue as KvfreeQueue
from rcukit.app.pointer import RcuPointer as RcuPointer
from rcukit.app.pool import POISON_FREE as POISON_FREE
from rcukit.app.pool import ObjectPool as ObjectPool
from rcukit.app.pool import PoolStatistics as PoolStatistics
from rcukit.app.rcudict import RcuDict as RcuDict
from rcukit.app.readers import QsbrWorker as QsbrWorker
from rcukit.app.readers import ReadSection as ReadSection
from rcukit.app.stats import DomainStatistics as DomainStatistics

__all__ = [
    "APP_DRAIN_DELAY",
    "DEFAULT_MAX_PENDING",
    "KFREE_N_BATCHES",
    "DomainConfig",
    "DomainStatistics",
    "KvfreeQueue",
    "ObjectPool",
    "PoolStatistics",
    "QsbrWorker",
    "RcuDict",
    "RcuDomain",
    "RcuPointer",
    "ReadSection",
    "open_domain",
]
