"""``DomainConfig``: every knob of an application RCU domain, validated once, frozen.

The kvfree_rcu knobs come from a kernel version profile (:mod:`rcukit.rcu.profiles`): block
capacity from ``KVFREE_BULK_MAX_ENTR``'s formula, the drain interval (``KFREE_DRAIN_JIFFIES``),
the kick, polled snapshots and the page-cache size; the drain interval defaults to an
application's 20 ms rather than the kernel's 5 s (see :data:`APP_DRAIN_DELAY`). The rest is
what an application needs and the kernel does not: caps on pending objects and bytes, a
default release target, an error handler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from rcukit.errors import ConfigError
from rcukit.rcu.gpseq import ULONG_MASK
from rcukit.rcu.profiles import DEFAULT_PROFILES, PROFILES, profile_validator

__all__ = ["APP_DRAIN_DELAY", "DEFAULT_MAX_PENDING", "DomainConfig"]

#: Default cap on callbacks + kvfree_rcu objects awaiting a grace period: 2048 blocks of
#: pointers (about 8 MiB of slots), comfortably above a million retired objects in flight.
DEFAULT_MAX_PENDING = 1 << 20
#: The application default for the kvfree_rcu monitor's drain (seconds). The kernel's
#: ``KFREE_DRAIN_JIFFIES`` (5 s from v6.1) suits a machine with gigabytes of small objects in
#: flight and a kick at a page of pointers (508); an application retiring a 4 MB config at
#: 50 Hz would hold 508 of them (~2 GB) before the kick, or 250 (~1 GB) for the 5 s. Twenty
#: milliseconds keeps what waits to about one drain plus one grace period of updates; pass
#: ``drain_delay=None`` for the profile's own interval.
APP_DRAIN_DELAY = 0.02
#: Pointers are 8 bytes on every platform an asyncio or Trio app runs on (the block formula
#: needs it).
POINTER_SIZE = 8


def _int_at_least(lo: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{att.name} = {v!r}: expected an integer >= {lo}")

    return check


def _optional_int_at_least(lo: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    check_int = _int_at_least(lo)

    def check(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
        if v is not None:
            check_int(inst, att, v)

    return check


def _seconds(
    optional: bool, finite: bool = True, positive: bool = False
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
        if v is None and optional:
            return
        if (
            isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v)
            or (positive and v == 0)
        ):
            what = "None or " if optional else ""
            least = "> 0" if positive else ">= 0"
            raise ConfigError(f"{att.name} = {v!r}: expected {what}a number of seconds {least}")
        if finite and math.isinf(v):
            raise ConfigError(f"{att.name} = {v!r}: must be finite")

    return check


def _callable_or_none(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
    if v is not None and not callable(v):
        raise ConfigError(f"{att.name} = {v!r}: expected None or a callable")


def _release(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
    if v is None or callable(getattr(v, "free_bulk", None)) or callable(v):
        return
    raise ConfigError(
        f"{att.name} = {v!r}: expected None (drop the reference), an object with a "
        "free_bulk(list) method (an ObjectPool), or a function taking the object"
    )


def _page_size(inst: object, att: attrs.Attribute[Any], v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 256 or v & (v - 1):
        raise ConfigError(f"{att.name} = {v!r}: expected a power of two >= 256 bytes")


@attrs.frozen
class DomainConfig:
    """What :func:`rcukit.app.open_domain` builds a domain from (keyword arguments map 1:1)."""

    #: Per-task read-section tracking and every misuse check (see rcukit.app.readers).
    debug: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: Cap on callbacks + kvfree_rcu objects pending at once (bounded memory).
    max_pending: int = attrs.field(default=DEFAULT_MAX_PENDING, validator=_int_at_least(1))
    #: Default release target for kvfree_rcu(obj) without ``release=``.
    release: Any = attrs.field(default=None, validator=_release)
    #: Called with each exception a callback or release function raised; None: collect them
    #: and raise them as an ExceptionGroup when the domain exits.
    on_error: Callable[[Exception], object] | None = attrs.field(
        default=None, validator=_callable_or_none
    )
    #: kvfree_rcu kernel version profile.
    profile: str = attrs.field(default=DEFAULT_PROFILES["app"], validator=profile_validator)
    #: Monitor drain delay in seconds (default :data:`APP_DRAIN_DELAY`, 20 ms); None: the
    #: profile's KFREE_DRAIN_JIFFIES (5 s for v6.1+, HZ/50 before).
    drain_delay: float | None = attrs.field(default=APP_DRAIN_DELAY, validator=_seconds(True))
    #: A cap on the *bytes* of kvfree_rcu objects pending at once, beside ``max_pending``'s
    #: count; None: no byte cap. Each object weighs ``kvfree_rcu(obj, size=n)``'s ``n``, else
    #: ``weight(obj)``. At the cap ``kvfree_rcu`` raises RcuBackpressureError and
    #: ``kvfree_rcu_wait`` waits a GP and releases inline, as at the object cap.
    max_pending_bytes: int | None = attrs.field(default=None, validator=_optional_int_at_least(1))
    #: ``weight(obj) -> bytes`` for objects queued without ``size=``; setting it (or
    #: ``max_pending_bytes``) turns byte accounting on (``statistics().kvfree_pending_bytes``).
    weight: Callable[[Any], int] | None = attrs.field(default=None, validator=_callable_or_none)
    #: Delay of a "kick" (a block's worth queued); the kernel's is one jiffy.
    kick_delay: float = attrs.field(default=0.0, validator=_seconds(False))
    #: Page size for KVFREE_BULK_MAX_ENTR (4096: 508 slots with v6.3, 510 with v6.1).
    page_size: int = attrs.field(default=4096, validator=_page_size)
    #: How long a closing domain waits: on a normal exit for its barriers (then what is left
    #: is reported and RcuLeakError raised), on an aborted one (exception, cancellation) for
    #: its readers (then queued objects are reported as leaked instead of released).
    close_timeout: float = attrs.field(default=5.0, validator=_seconds(False))
    #: ``rcu_cpu_stall_timeout``: a grace period waiting longer than this many seconds logs
    #: (logger "rcukit") who holds it, then again every three timeouts; None: never. The
    #: kernel's default (CONFIG_RCU_CPU_STALL_TIMEOUT) is 21 s. Zero is refused: it would
    #: warn in a loop (the kernel raises anything below 3 s to 3 s; None is "off" here).
    stall_timeout: float | None = attrs.field(
        default=21.0, validator=_seconds(True, positive=True)
    )
    #: Starting gp_seq; the kernel starts just below the wrap to shake out wrap bugs.
    initial_gp_seq: int = attrs.field(default=0, validator=_int_at_least(0))

    def __attrs_post_init__(self) -> None:
        if self.initial_gp_seq > ULONG_MASK or self.initial_gp_seq & 3:
            raise ConfigError(
                f"initial_gp_seq = {self.initial_gp_seq!r}: expected an idle gp_seq (low two "
                "bits 0) below 2**64"
            )
        if self.block_capacity < 1:
            raise ConfigError(f"page_size = {self.page_size}: too small for a block header")

    @property
    def block_capacity(self) -> int:
        """``KVFREE_BULK_MAX_ENTR`` for this page size and profile (8-byte pointers)."""
        return PROFILES[self.profile].block_capacity(self.page_size, POINTER_SIZE, "kernel")

    @property
    def byte_accounting(self) -> bool:
        """Objects are weighed (a byte cap or a weight function was given)."""
        return self.max_pending_bytes is not None or self.weight is not None

    @property
    def effective_drain_delay(self) -> float:
        if self.drain_delay is not None:
            return float(self.drain_delay)
        p = PROFILES[self.profile]
        return p.drain_hz_num / p.drain_hz_den
