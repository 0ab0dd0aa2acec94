"""rcutorture on the simulated kernel (:mod:`.sim`) and on the application API (:mod:`.app`).

What both modes check and how they report it lives in :mod:`.common`; this package re-exports
what the command line and users' scripts call.
"""

from rcukit.scenarios.torture.app import (
    APP_NR_CPUS,
    AppTorture,
    TortureInjectedError,
    run_app_torture,
    run_app_torture_async,
)
from rcukit.scenarios.torture.common import (
    RCU_TORTURE_PIPE_LEN,
    RTORT_POOL,
    TortureParams,
    TortureResult,
)
from rcukit.scenarios.torture.sim import (
    WRITER_MODES,
    full_gps_since,
    run_torture,
    run_torture_async,
    torture_config,
)
from rcukit.scenarios.torture.soak import SoakResult, SoakRun, run_soak

__all__ = [
    "APP_NR_CPUS",
    "RCU_TORTURE_PIPE_LEN",
    "RTORT_POOL",
    "WRITER_MODES",
    "AppTorture",
    "SoakResult",
    "SoakRun",
    "TortureInjectedError",
    "TortureParams",
    "TortureResult",
    "full_gps_since",
    "run_app_torture",
    "run_app_torture_async",
    "run_soak",
    "run_torture",
    "run_torture_async",
    "torture_config",
]
