"""Shared by every test folder: :mod:`simtools` (partial kernels, runners, configs, KASAN and
source-line probes, time units, paths), :mod:`apptools` (held readers, background GPs, a spy
release target), :mod:`clitools` (``rcukit`` in-process) and the broken builds of
:mod:`torture_broken` live here, beside this file.

Tests are grouped by concept: ``sim/`` (scheduler, locks, workqueues, tracing, config, the
package's shape), ``mm/``, ``rcu/``, ``kvfree/``, ``app/`` and ``scenarios/`` (compare,
rcuscale, torture, sweep, the CLI, demos, the pytest plugin, benchmarks).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
