"""rcukit: the Linux kernel's kvfree_rcu() machinery, simulated on Trio; and RCU for Trio apps.

The public API is re-exported here; every other module is an implementation detail.
"""

from importlib.metadata import PackageNotFoundError, version

from rcukit.app import ObjectPool as ObjectPool
from rcukit.app import RcuPointer as RcuPointer
from rcukit.app import open_domain as open_domain
from rcukit.config import CostModel as CostModel
from rcukit.config import KernelConfig as KernelConfig
from rcukit.config import KvfreeConfig as KvfreeConfig
from rcukit.config import MemoryConfig as MemoryConfig
from rcukit.errors import ConfigError as ConfigError
from rcukit.errors import GfpError as GfpError
from rcukit.errors import MemoryDebugError as MemoryDebugError
from rcukit.errors import RcukitError as RcukitError
from rcukit.errors import RcuUsageError as RcuUsageError
from rcukit.errors import SimulationError as SimulationError
from rcukit.errors import SplatError as SplatError
from rcukit.kernel import Kernel as Kernel
from rcukit.kernel import SimResult as SimResult
from rcukit.kernel import boot as boot
from rcukit.kernel import simulate as simulate
from rcukit.locking import LockKind as LockKind
from rcukit.locking import Splat as Splat
from rcukit.sched import Task as Task

try:
    __version__ = version("rcukit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"
