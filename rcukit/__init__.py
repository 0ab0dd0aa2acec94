"""rcukit: RCU for asyncio and Trio applications, and a simulator of the Linux kernel's
kvfree_rcu() machinery built on the same grace-period engine.

This package is the application API: ``async with rcukit.open_domain() as rcu:``, read
sections, ``RcuPointer``, ``RcuDict``, ``synchronize_rcu``/``call_rcu``/``kvfree_rcu``,
``ObjectPool`` and the errors they raise. The simulator is :mod:`rcukit.sim`.
"""

from importlib import metadata as _metadata

from rcukit.app import APP_DRAIN_DELAY as APP_DRAIN_DELAY
from rcukit.app import DEFAULT_MAX_PENDING as DEFAULT_MAX_PENDING
from rcukit.app import DomainConfig as DomainConfig
from rcukit.app import DomainStatistics as DomainStatistics
from rcukit.app import KvfreeQueue as KvfreeQueue
from rcukit.app import ObjectPool as ObjectPool
from rcukit.app import PoolStatistics as PoolStatistics
from rcukit.app import QsbrWorker as QsbrWorker
from rcukit.app import RcuDict as RcuDict
from rcukit.app import RcuDomain as RcuDomain
from rcukit.app import RcuPointer as RcuPointer
from rcukit.app import ReadSection as ReadSection
from rcukit.app import open_domain as open_domain
from rcukit.errors import ConfigError as ConfigError
from rcukit.errors import MemoryDebugError as MemoryDebugError
from rcukit.errors import RcuArgumentError as RcuArgumentError
from rcukit.errors import RcuBackpressureError as RcuBackpressureError
from rcukit.errors import RcuClosedError as RcuClosedError
from rcukit.errors import RcukitError as RcukitError
from rcukit.errors import RcuLeakError as RcuLeakError
from rcukit.errors import RcuUsageError as RcuUsageError
from rcukit.errors import RcuValueError as RcuValueError

# Only ``__version__`` is public: importing ``version`` by name made ``rcukit.version`` the
# stdlib's function.
try:
    __version__: str = _metadata.version("rcukit")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"

__all__ = [
    "APP_DRAIN_DELAY",
    "DEFAULT_MAX_PENDING",
    "ConfigError",
    "DomainConfig",
    "DomainStatistics",
    "KvfreeQueue",
    "MemoryDebugError",
    "ObjectPool",
    "PoolStatistics",
    "QsbrWorker",
    "RcuArgumentError",
    "RcuBackpressureError",
    "RcuClosedError",
    "RcuDict",
    "RcuDomain",
    "RcuLeakError",
    "RcuPointer",
    "RcuUsageError",
    "RcuValueError",
    "RcukitError",
    "ReadSection",
    "__version__",
    "open_domain",
]
