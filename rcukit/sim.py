"""The simulator's public face: boot a kernel, run tasks on its CPUs, read what it printed.

``rcukit`` itself is the application API (RCU for asyncio and Trio programs); everything that
simulates the Linux kernel is reached from here::

    import rcukit.sim as sim

    async def flood(task: sim.Task) -> None:
        ...

    result = sim.simulate(flood, sim.KernelConfig(nr_cpus=2, prove_raw_lock_nesting=True))

Inside Trio use ``async with sim.boot(config) as kernel:`` and ``kernel.run_on_cpus(fn)``.
"""

from rcukit.config import CostModel as CostModel
from rcukit.config import KernelConfig as KernelConfig
from rcukit.config import KvfreeConfig as KvfreeConfig
from rcukit.config import MemoryConfig as MemoryConfig
from rcukit.errors import ConfigError as ConfigError
from rcukit.errors import GfpError as GfpError
from rcukit.errors import KernelPanic as KernelPanic
from rcukit.errors import MemoryDebugError as MemoryDebugError
from rcukit.errors import RcukitError as RcukitError
from rcukit.errors import RcuUsageError as RcuUsageError
from rcukit.errors import SimulationError as SimulationError
from rcukit.errors import SplatError as SplatError
from rcukit.kernel import Kernel as Kernel
from rcukit.kernel import SimResult as SimResult
from rcukit.kernel import Subsystems as Subsystems
from rcukit.kernel import boot as boot
from rcukit.kernel import simulate as simulate
from rcukit.locking import LockKind as LockKind
from rcukit.locking import Splat as Splat
from rcukit.machine import Machine as Machine
from rcukit.mm.gfp import GFP as GFP
from rcukit.mm.gfp import GFP_ATOMIC as GFP_ATOMIC
from rcukit.mm.gfp import GFP_KERNEL as GFP_KERNEL
from rcukit.mm.gfp import GFP_NONE as GFP_NONE
from rcukit.mm.gfp import GFP_NOWAIT as GFP_NOWAIT
from rcukit.mm.gfp import format_gfp as format_gfp
from rcukit.mm.gfp import parse_gfp as parse_gfp
from rcukit.panic import BugReport as BugReport
from rcukit.rcu.kvfree.variants import BlockPageSource as BlockPageSource
from rcukit.rcu.kvfree.variants import BlockSources as BlockSources
from rcukit.rcu.profiles import DEFAULT_PROFILES as DEFAULT_PROFILES
from rcukit.rcu.profiles import PROFILES as PROFILES
from rcukit.rcu.profiles import KvfreeProfile as KvfreeProfile
from rcukit.sched import Task as Task

__all__ = [
    "DEFAULT_PROFILES",
    "GFP",
    "GFP_ATOMIC",
    "GFP_KERNEL",
    "GFP_NONE",
    "GFP_NOWAIT",
    "PROFILES",
    "BlockPageSource",
    "BlockSources",
    "BugReport",
    "ConfigError",
    "CostModel",
    "GfpError",
    "Kernel",
    "KernelConfig",
    "KernelPanic",
    "KvfreeConfig",
    "KvfreeProfile",
    "LockKind",
    "Machine",
    "MemoryConfig",
    "MemoryDebugError",
    "RcuUsageError",
    "RcukitError",
    "SimResult",
    "SimulationError",
    "Splat",
    "SplatError",
    "Subsystems",
    "Task",
    "boot",
    "format_gfp",
    "parse_gfp",
    "simulate",
]
