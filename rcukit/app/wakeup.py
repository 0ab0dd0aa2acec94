"""A one-waiter, level-triggered wakeup for rcukit's background tasks.

The grace-period task and the callback task each sleep on exactly one of these, and the hot
paths that wake them (a reader leaving the old phase, ``call_rcu`` on an idle domain) must cost
next to nothing when nobody sleeps. ``trio.Event`` cannot be reset and ``ParkingLot`` pays for
generality; this is the kernel's ``swait``/``wake_up`` pairing for a single kthread.
"""

from __future__ import annotations

import trio

__all__ = ["Wakeup"]


class Wakeup:
    """``set()`` wakes the sleeper, or is remembered until the next ``wait()`` if none sleeps."""

    __slots__ = ("_pending", "_task")

    def __init__(self) -> None:
        self._pending = False
        self._task: trio.lowlevel.Task | None = None

    def set(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
        else:
            self._pending = True

    async def wait(self) -> None:
        """Return once ``set()`` has been called since the last ``wait()``; always a checkpoint."""
        if self._pending:
            self._pending = False
            try:
                await trio.lowlevel.checkpoint()
            except BaseException:
                self._pending = True  # do not lose the wakeup to a cancellation
                raise
            return
        if self._task is not None:
            raise RuntimeError("Wakeup supports a single waiter")
        self._task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
