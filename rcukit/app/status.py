"""Whether a domain takes work, and what happens to the exceptions its callbacks raise.

Every part of a domain asks :class:`DomainStatus` before it accepts work, so the errors a
closed, not yet started or broken domain raises are worded in one place. :class:`ErrorLog` is
where ``call_rcu`` callbacks and kvfree_rcu release functions report what they raised: the
``on_error`` handler, or a bounded list raised as an ``ExceptionGroup`` when the domain exits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from rcukit.errors import RcuClosedError, RcukitError

__all__ = ["MAX_KEPT_ERRORS", "DomainStatus", "ErrorLog", "raise_exit_errors"]

#: Exceptions kept for the exit ExceptionGroup; the rest are counted.
MAX_KEPT_ERRORS: Final = 100


class DomainStatus:
    """Open, closing, closed, or dead (a background task stopped while the domain was open)."""

    __slots__ = ("accepting", "closed", "closing", "dead", "stopping")

    def __init__(self) -> None:
        self.accepting = False
        #: The ``async with`` block was left: the domain drains and will close.
        self.closing = False
        self.closed = False
        self.stopping = False
        #: Why the domain cannot complete grace periods any more; None while it can.
        self.dead: str | None = None

    def check_open(self, what: str) -> None:
        if self.dead is not None:
            raise RcuClosedError(f"{what}: {self.dead}")
        if not self.accepting:
            state = "closed" if self.closed or self.stopping else "not started"
            raise RcuClosedError(f"{what} on a {state} RCU domain")


class ErrorLog:
    """What callbacks and release functions raised: handed to ``on_error`` or kept for exit."""

    __slots__ = ("_dropped", "_kept", "count", "on_error")

    def __init__(self, on_error: Callable[[Exception], object] | None) -> None:
        self.on_error = on_error
        #: Every exception reported (handled or kept).
        self.count = 0
        self._kept: list[BaseException] = []
        self._dropped = 0

    def report(self, exc: BaseException, context: str) -> None:
        self.count += 1
        exc.add_note(context)
        handler = self.on_error
        if handler is not None and isinstance(exc, Exception):
            try:
                handler(exc)
            except Exception as exc2:
                exc2.add_note(f"raised by the on_error handler {handler!r}")
                self._keep(exc2)
            return
        self._keep(exc)

    def _keep(self, exc: BaseException) -> None:
        if len(self._kept) < MAX_KEPT_ERRORS:
            self._kept.append(exc)
        else:
            self._dropped += 1

    def take(self) -> list[BaseException]:
        errors, self._kept = self._kept, []
        if self._dropped:
            errors.append(RcukitError(f"... and {self._dropped} more errors (not kept)"))
            self._dropped = 0
        return errors


def raise_exit_errors(body: BaseException | None, errors: list[BaseException]) -> None:
    """Raise what left the ``async with`` body together with what the domain reported.

    The reported errors come from callbacks and release functions, but also from the domain's
    own tasks and its close (an ``RcuLeakError``), so the group's message says only who
    reported them; each error's note says where it arose.
    """
    msg = f"{len(errors)} error(s) reported by the RCU domain (see each one's note)"
    if body is not None:
        if errors:
            raise BaseExceptionGroup(
                f"the async with body raised {type(body).__name__}, and the RCU domain "
                f"reported {len(errors)} more error(s) (see each one's note)",
                [body, *errors],
            )
        raise body
    if errors:
        if all(isinstance(e, Exception) for e in errors):
            raise ExceptionGroup(msg, [e for e in errors if isinstance(e, Exception)])
        raise BaseExceptionGroup(msg, errors)
