"""A one-waiter, level-triggered wakeup for rcukit's background tasks.

The grace-period task and the callback task each sleep on exactly one of these, and the hot
paths that wake them (a reader leaving the old phase, ``call_rcu`` on an idle domain) must cost
next to nothing when nobody sleeps. An event cannot be reset, so each sleep gets a fresh one;
this is the kernel's ``swait``/``wake_up`` pairing for a single kthread. A worker thread wakes
the sleeper through :meth:`set_threadsafe` (the loop runs ``set`` soon).
"""

from __future__ import annotations

import anyio

from rcukit.app.loop import EventLoop

__all__ = ["Wakeup"]


class Wakeup:
    """``set()`` wakes the sleeper, or is remembered until the next ``wait()`` if none sleeps."""

    __slots__ = ("_event", "_loop", "_pending")

    def __init__(self, loop: EventLoop) -> None:
        self._loop = loop
        self._pending = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        ev = self._event
        if ev is not None:
            self._event = None
            ev.set()
        else:
            self._pending = True

    def set_threadsafe(self) -> None:
        """``set()`` from any thread: in the loop's thread now, elsewhere on the loop soon."""
        loop = self._loop
        if loop.in_loop_thread():
            self.set()
        else:
            loop.call_soon_threadsafe(self.set)

    async def wait(self) -> None:
        """Return once ``set()`` has been called since the last ``wait()``; always a checkpoint."""
        if self._pending:
            self._pending = False
            try:
                await self._loop.checkpoint()
            except BaseException:
                self._pending = True  # do not lose the wakeup to a cancellation
                raise
            return
        if self._event is not None:
            raise RuntimeError("Wakeup supports a single waiter")
        ev = self._event = self._loop.event()
        try:
            await ev.wait()
        except BaseException:
            if self._event is ev:
                self._event = None
            elif ev.is_set():
                self._pending = True  # set, then cancelled before we ran: keep the wakeup
            raise
