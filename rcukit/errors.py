"""Exception types.

Every error rcukit raises for bad input derives from :class:`RcukitError` *and* from the builtin
a caller would naturally catch (``ValueError``, ``TypeError``...), so ``except ValueError`` keeps
working for people who do not know rcukit's hierarchy.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: object, allowed: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the allowed name closest to a mistyped one, else ``""``.

    Appended to "unknown name" messages (profiles, variants, builds, keys) so a typo costs one
    glance: difflib's ratio, at most one suggestion, nothing when nothing is close.
    """
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class RcukitError(Exception):
    """Base class of every error rcukit raises on purpose."""


class ConfigError(RcukitError, ValueError):
    """A configuration value, file or key is invalid; the message names it and what is allowed."""


class GfpError(RcukitError, ValueError):
    """Invalid GFP bits or a contradictory combination of them."""


class ZoneinfoParseError(ConfigError):
    """A /proc/zoneinfo text could not be parsed; the message names the line."""


class MemoryDebugError(RcukitError, RuntimeError):
    """A use after free, double free or foreign free caught by the debug layer (KASAN/SLUB).

    A KASAN-style error also says what was found, for a kernel that reports it and goes on:
    ``kind`` ("double-free", "invalid-free", "use-after-free"), the pointer, the function that
    found it, and the sites known as ``(what, site)`` pairs ("Allocated", "Freed").
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        ptr: int = 0,
        where: str = "",
        detail: str = "",
        sites: tuple[tuple[str, object], ...] = (),
        pfn: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.ptr = ptr
        #: The page's frame number, for a bad page state.
        self.pfn = pfn
        self.where = where
        self.detail = detail
        self.sites = sites


class RcuUsageError(RcukitError, RuntimeError):
    """RCU API misuse: unbalanced unlock, synchronize_rcu() inside a read section, and so on."""


class SplatError(RcukitError, RuntimeError):
    """Raised instead of printing a splat when the lock checker runs in strict mode."""

    def __init__(self, splat: object) -> None:
        super().__init__(str(splat))
        self.splat = splat


class LockUsageError(RcukitError, RuntimeError):
    """Lock API misuse the kernel would catch: releasing a lock the task does not hold."""


class KernelPanic(RcukitError, RuntimeError):
    """The simulated kernel panicked (``panic_on_warn`` and a WARN or KASAN report): the run
    stops. The message is the whole panic text; ``title`` its first line."""

    def __init__(self, message: str, *, title: str = "") -> None:
        super().__init__(message)
        self.title = title or message.split("\n", 1)[0]


class SimulationError(RcukitError, RuntimeError):
    """The simulation reached an impossible state (for example, every task blocked forever)."""


class GpSeqError(RcukitError, ValueError):
    """A gp_seq transition the kernel WARNs about: start while a GP runs, end while idle."""


class SegCbListError(RcukitError, ValueError):
    """A callback-list operation got a bad argument (negative limit, merge into itself)."""


class PageAllocError(RcukitError, ValueError):
    """A buddy/pcp request out of range: order >= MAX_ORDER, unknown migratetype, unaligned PFN."""


class SweepError(RcukitError, RuntimeError):
    """A sweep point's simulation failed; the message names the point and its parameters."""


class RcuClosedError(RcuUsageError):
    """An RCU domain was used after it closed (or after its background tasks were cancelled)."""


class RcuBackpressureError(RcukitError, RuntimeError):
    """A non-blocking ``call_rcu``/``kvfree_rcu`` hit the domain's cap on pending objects."""


class RcuLeakError(RcukitError, RuntimeError):
    """A closing RCU domain could not release everything queued (readers never left)."""


class RcuArgumentError(RcukitError, TypeError):
    """An RCU API got an argument of the wrong kind (a non-callable callback, say)."""


class RcuValueError(RcukitError, ValueError):
    """An RCU API got an argument of the right kind but out of range (``size=-1``, say)."""


class CpuHotplugError(RcukitError, ValueError):
    """A CPU hotplug request that cannot be honoured (no such CPU, the last online one...)."""
