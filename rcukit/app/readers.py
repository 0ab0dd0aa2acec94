"""The read side: two-phase reader counters, debug read sections, and QSBR workers.

**Preemptible readers, SRCU-style.** A domain has two :class:`ReadGuard` counters and a current
phase. ``read_lock()`` returns the current phase's guard (a pre-built object: no allocation), and
entering it increments that counter; leaving decrements the *same* counter, because the guard
object itself remembers the phase. A grace period flips the phase and waits until the old phase's
counter is zero: every reader that began before the flip has then left, whatever it awaited in
between (``PREEMPT_RCU``'s blocked-readers list, kernel.md §6, done with counters as SRCU and
liburcu's phase flip do). An event loop runs one task at a time and a ``with`` statement
evaluates ``read_lock()`` and enters the guard with no checkpoint in between, so one flip per GP
is enough (C implementations need two because reading the phase and incrementing race with the
flip; worker threads, which can race it, take the slow path described below).
Nesting needs no per-task state: each level counts once in the phase it started in.

The price of that speed: a non-debug guard does not know which task holds it. The debug flavour
(:class:`DebugReadSection`) records the task and call site of every section, which is what lets
it refuse ``synchronize_rcu()`` inside a read section, an unlock from another task, a double
unlock, or ``RcuPointer.dereference()`` outside a section.

**QSBR workers** (liburcu's ``urcu-qsbr``): a registered worker is online, i.e. treated as
reading, until it reports a quiescent state or goes offline. Each GP start bumps ``qs_gen`` and
sets ``qs_owed`` to the number of online workers; a worker reporting for the first time in this
GP decrements it. A GP therefore never walks the worker list, and offline workers cost nothing.

**Worker threads** read through the same ``read_lock()``: rcukit supports CPython with the GIL
only, where a Python function body runs without a thread switch between its entry and its
next call or backward jump (the interpreter drops the GIL only at those points), so the guard's
check-and-count in ``__enter__`` and count-and-test in ``__exit__`` are atomic against other
threads. What a worker thread does differently is on the slow paths: leaving the old phase
wakes the GP task through the loop (:meth:`Wakeup.set_threadsafe`), and a guard found inactive
(a GP flipped the phase between ``read_lock()`` and ``__enter__``) makes the thread ask for a GP
and wait for its phase to come back, instead of raising as it does in the loop's thread, where
that can only be a guard kept for later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

import anyio
import attrs

from rcukit.app.loop import EventLoop
from rcukit.app.sites import call_site
from rcukit.errors import RcuClosedError, RcuUsageError

#: How often a worker thread looks whether its reader phase is back (the rare path above).
THREAD_PHASE_POLL: Final = 0.0005

__all__ = [
    "DebugReadSection",
    "QsbrWorker",
    "QuiescentWhileWaiting",
    "ReadGuard",
    "ReadSection",
    "Readers",
]


class ReadSection(Protocol):
    """What ``read_lock()``/``rcu_read_lock()`` hand out: a context manager and an unlock token."""

    def __enter__(self) -> None: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


class ReadGuard:
    """One reader phase: its counter, and the context manager ``read_lock()`` returns for it."""

    __slots__ = ("active", "closed", "count", "phase", "readers", "waiter", "wake_below")

    def __init__(self, phase: int, readers: Readers) -> None:
        self.phase = phase
        self.readers = readers
        self.count = 0
        self.active = phase == 0
        self.closed = False
        #: Set while a GP waits for this phase to drain; called when ``count`` reaches zero.
        self.waiter: Callable[[], None] | None = None
        #: ``__exit__`` takes its slow path when the count drops below this: 0 (an unbalanced
        #: unlock only), or 1 while ``waiter`` is set (the last reader out wakes it). One
        #: comparison on the way out instead of testing the count and the waiter.
        self.wake_below = 0

    def __repr__(self) -> str:
        return f"<ReadGuard phase={self.phase} readers={self.count} active={self.active}>"

    def __enter__(self) -> None:
        if not self.active:
            self._refuse()  # raises, or (a worker thread) waits for the phase and counts in
            return
        self.count += 1

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        c = self.count - 1
        self.count = c
        if c < self.wake_below:
            self._drained(c)

    def _refuse(self) -> None:
        if self.closed:
            raise RcuClosedError("read_lock() on a closed RCU domain; the domain has exited")
        if not self.readers.loop.in_loop_thread():
            self._enter_from_thread()
            return
        raise RcuUsageError(
            "a read_lock() guard was entered after a grace period flipped the reader phase; "
            "enter it at once (`with rcu.read_lock():`) instead of keeping it for later"
        )

    def _enter_from_thread(self) -> None:
        """A worker thread raced a phase flip: ask for a GP and wait for this phase to return."""
        self.readers.request_flip()
        while True:
            if self.active:
                self.count += 1  # atomic with the test above (no call in between)
                return
            if self.closed:
                raise RcuClosedError("read_lock() on a closed RCU domain; the domain has exited")
            time.sleep(THREAD_PHASE_POLL)

    def _drained(self, c: int) -> None:
        if c < 0:
            self.count = 0
            raise RcuUsageError(
                "rcu_read_unlock() without a matching rcu_read_lock() (unbalanced unlock)"
            )
        waiter = self.waiter
        if waiter is not None:
            waiter()


_NEW, _HELD, _RELEASED = 0, 1, 2


class DebugReadSection:
    """A debug-mode read section: one object per ``read_lock()``, knowing its task and site."""

    __slots__ = ("_readers", "flips", "guard", "site", "state", "task", "task_name")

    def __init__(self, readers: Readers, site: str) -> None:
        self._readers = readers
        self.site = site
        self.state = _NEW
        #: Phase flips when the guard was handed out: entering it after any flip is refused.
        self.flips = readers.flips
        self.task: int | None = None
        self.task_name = ""
        self.guard: ReadGuard | None = None

    def __repr__(self) -> str:
        return f"<DebugReadSection from {self.site} task={self.task_name} state={self.state}>"

    def __enter__(self) -> None:
        self._readers.debug_enter(self)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._readers.debug_exit(self)


class QsbrWorker:
    """A registered QSBR worker: its read side is free; it reports quiescent states instead.

    Online (the state after registration, as in liburcu) means "may hold RCU-protected
    references at any time"; every grace period waits until each online worker calls
    :meth:`quiescent_state` once after the GP started. :meth:`offline` (or the
    :meth:`extended_qs` context manager around a long ``await``) means "holds none", and GPs stop
    waiting for the worker. Use it as a context manager to unregister on exit.
    """

    __slots__ = ("_gen", "_online", "_readers", "_registered", "site", "task", "task_name")

    def __init__(self, readers: Readers, task: int, task_name: str, site: str) -> None:
        self._readers = readers
        self.task = task
        self.task_name = task_name
        self.site = site
        self._online = False
        self._registered = True
        self._gen = -1

    def __repr__(self) -> str:
        state = "online" if self._online else "offline"
        return f"<QsbrWorker task={self.task_name} {state} registered at {self.site}>"

    @property
    def is_online(self) -> bool:
        return self._online

    def quiescent_state(self) -> None:
        """``rcu_quiescent_state()``: this worker holds no reference taken before this call."""
        r = self._readers
        if self._gen != r.qs_gen or r.debug:
            r.report_qs(self)

    def offline(self) -> None:
        """``rcu_thread_offline()``: an extended quiescent state; GPs no longer wait for us."""
        self._readers.set_offline(self)

    def online(self) -> None:
        """``rcu_thread_online()``: may take references again (GPs started earlier ignore us)."""
        self._readers.set_online(self)

    def extended_qs(self) -> _ExtendedQs:
        """``with worker.extended_qs(): await ...``: offline for the duration of a long wait."""
        return _ExtendedQs(self)

    def unregister(self) -> None:
        """``rcu_unregister_thread()``: go offline for good and leave the domain's tables."""
        self._readers.unregister(self)

    def __enter__(self) -> QsbrWorker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._registered:
            self.unregister()


class QuiescentWhileWaiting:
    """A QSBR worker waiting for a GP is quiescent (liburcu's qsbr synchronize_rcu does this)."""

    __slots__ = ("_was_online", "_worker")

    def __init__(self, worker: QsbrWorker | None) -> None:
        self._worker = worker
        self._was_online = False

    def __enter__(self) -> None:
        w = self._worker
        if w is not None and w.is_online:
            self._was_online = True
            w.offline()

    def __exit__(self, *exc: object) -> None:
        w = self._worker
        if self._was_online and w is not None and w._registered:
            w.online()


class _ExtendedQs:
    __slots__ = ("_worker",)

    def __init__(self, worker: QsbrWorker) -> None:
        self._worker = worker

    def __enter__(self) -> None:
        self._worker.offline()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._worker._registered:
            self._worker.online()


@attrs.define(eq=False)
class Readers:
    """Everything that decides whether a grace period may end (see the module docstring)."""

    debug: bool
    loop: EventLoop
    #: Wakes whoever waits for the old phase to drain (the GP task, or a closing domain); from
    #: any thread.
    wake: Callable[[], None]
    #: Asks for a grace period from any thread (a worker thread waiting for its phase).
    request_flip: Callable[[], None] = attrs.field(default=lambda: None)
    guards: tuple[ReadGuard, ReadGuard] = attrs.field(init=False)
    current: ReadGuard = attrs.field(init=False)
    #: Phase flips so far (debug sections refuse to be entered after one).
    flips: int = attrs.field(init=False, default=0)
    #: The phase a running GP waits for; None between GPs.
    old: ReadGuard | None = attrs.field(init=False, default=None)
    qs_gen: int = attrs.field(init=False, default=0)
    qs_owed: int = attrs.field(init=False, default=0)
    n_online: int = attrs.field(init=False, default=0)
    by_task: dict[int, QsbrWorker] = attrs.field(init=False, factory=dict)
    #: Debug only: every held section, per task (or thread), oldest first.
    sections: dict[int, list[DebugReadSection]] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.guards = (ReadGuard(0, self), ReadGuard(1, self))
        self.current = self.guards[0]

    def whoami(self) -> tuple[int, str]:
        """The calling task's id and name, or a worker thread's (negative id)."""
        if not self.loop.in_loop_thread():
            t = threading.current_thread()
            return -threading.get_ident(), f"thread {t.name!r}"
        info = anyio.get_current_task()
        return info.id, f"task {info.name or info.id!r}"

    # ---------------------------------------------------------------- grace periods

    def flip(self) -> ReadGuard:
        """GP start: new readers go to the other phase; this GP waits for the old one."""
        old = self.current
        new = self.guards[1 - old.phase]
        old.active = False
        new.active = True
        self.current = new
        self.old = old
        self.flips += 1
        self.qs_gen += 1
        self.qs_owed = self.n_online
        return new

    def gp_may_end(self) -> bool:
        old = self.old
        return (old is None or old.count == 0) and self.qs_owed == 0

    def arm(self) -> None:
        old = self.old
        if old is not None:
            old.waiter = self.wake
            old.wake_below = 1  # after the waiter: a thread's reader may leave between the two

    def end_gp(self) -> None:
        if self.old is not None:
            self.old.wake_below = 0
            self.old.waiter = None
            self.old = None

    def close(self) -> None:
        for g in self.guards:
            g.active = False
            g.closed = True

    @property
    def n_readers(self) -> int:
        return self.guards[0].count + self.guards[1].count

    def is_held_section(self, owner: object) -> bool:
        """Is ``owner`` (a ``with`` statement's manager) one of this domain's read sections?"""
        if isinstance(owner, ReadGuard):
            return owner.readers is self
        if isinstance(owner, DebugReadSection):
            return owner._readers is self and owner.state == _HELD
        return False

    def is_held_section_owner(self, obj: object) -> bool:
        """Is ``obj`` the domain whose ``read_lock()`` made a thread's ``with`` manager?"""
        return getattr(obj, "_readers", None) is self

    def stall_report(self) -> str:
        """Who holds the running GP: sections and QSBR workers (tasks and sites in debug)."""
        old = self.old
        n = old.count if old is not None else 0
        parts = [f"{n} read section(s) of the old phase"]
        if self.qs_owed:
            owing = [w for w in self.by_task.values() if w.is_online and w._gen != self.qs_gen]
            parts.append(
                f"{self.qs_owed} QSBR worker(s) without a quiescent state: "
                + ", ".join(f"{w.task_name} registered at {w.site}" for w in owing[:10])
            )
        if self.debug and old is not None:
            held = [s for s in self.held_sections() if s.guard is old]
            if held:
                parts.append(
                    "held by: "
                    + ", ".join(f"{s.task_name} at {s.site}" for s in held[:10])
                )
        return "; ".join(parts)

    # ---------------------------------------------------------------- checks

    def might_sleep(self, what: str) -> QsbrWorker | None:
        """``might_sleep()`` for GP waits: refuse inside a read section (debug mode), and
        return the calling task's QSBR worker so it can be quiescent while it waits."""
        if not self.debug and not self.by_task:
            return None
        task, _ = self.whoami()
        if self.debug:
            inner = self.in_read_section(task)
            if inner is not None:
                raise RcuUsageError(
                    f"{what} inside the RCU read section entered at {inner.site}: it would "
                    "wait for a grace period that waits for this very reader (deadlock)"
                )
        return self.by_task.get(task)

    def reader_check(self, what: str) -> None:
        """``rcu_dereference_check()``: debug mode only, called by RcuPointer."""
        task, _ = self.whoami()
        if self.in_read_section(task) is not None:
            return
        w = self.by_task.get(task)
        if w is not None and w.is_online:
            return
        raise RcuUsageError(
            f"{what} at {call_site()} outside an RCU read section; wrap it in "
            "`with rcu.read_lock():` (or use dereference_protected() on the update side)"
        )

    def online_sites(self) -> list[str]:
        """Where the QSBR workers online right now registered (for leak reports)."""
        return [w.site for w in self.by_task.values() if w.is_online]

    # ---------------------------------------------------------------- debug sections

    def in_read_section(self, task: int) -> DebugReadSection | None:
        """The innermost section ``task`` holds (debug mode only; None otherwise)."""
        held = self.sections.get(task)
        return held[-1] if held else None

    def debug_enter(self, s: DebugReadSection) -> None:
        if s.state != _NEW:
            raise RcuUsageError(
                f"a read section from {s.site} was entered twice; call read_lock() once per "
                "`with` (debug mode)"
            )
        if s.flips != self.flips:
            raise RcuUsageError(
                f"a read_lock() guard from {s.site} was entered after a grace period flipped the "
                "reader phase; enter it at once (`with rcu.read_lock():`) instead of keeping it "
                "for later"
            )
        task, name = self.whoami()
        g = self.current
        if g.active:
            g.count += 1  # atomic with the test (see the module docstring)
        else:
            g._refuse()
        s.task, s.task_name, s.guard, s.state = task, name, g, _HELD
        self.sections.setdefault(task, []).append(s)

    def debug_exit(self, s: DebugReadSection) -> None:
        if s.state == _NEW:
            raise RcuUsageError(
                f"rcu_read_unlock() of a section from {s.site} that was never entered "
                "(unbalanced unlock)"
            )
        if s.state == _RELEASED:
            raise RcuUsageError(
                f"rcu_read_unlock() of a section from {s.site} that was already unlocked "
                f"(unbalanced unlock)"
            )
        assert s.task is not None and s.guard is not None
        task, name = self.whoami()
        held = self.sections.get(s.task, [])
        for i in range(len(held) - 1, -1, -1):
            if held[i] is s:
                del held[i]
                break
        if not held:
            self.sections.pop(s.task, None)
        s.state = _RELEASED
        s.guard.__exit__(None, None, None)
        if task != s.task:
            raise RcuUsageError(
                f"read section locked in {s.task_name} at {s.site} was unlocked from "
                f"{name} at {call_site()}; RCU read sections belong to one task"
            )

    def held_sections(self) -> list[DebugReadSection]:
        return [s for held in self.sections.values() for s in held]

    # ---------------------------------------------------------------- QSBR

    def register(self, site: str) -> QsbrWorker:
        if not self.loop.in_loop_thread():
            raise RcuUsageError(
                "register_qsbr() from a worker thread: QSBR workers are tasks of the domain's "
                "event loop; a worker thread reads with `with rcu.read_lock():`"
            )
        task, name = self.whoami()
        if task in self.by_task:
            prev = self.by_task[task]
            raise RcuUsageError(
                f"{name} already registered a QSBR worker at {prev.site}; "
                "register once per task"
            )
        w = QsbrWorker(self, task, name, site)
        self.by_task[task] = w
        self.set_online(w)
        return w

    def _check_owner(self, w: QsbrWorker, what: str) -> None:
        if not self.loop.in_loop_thread():
            raise RcuUsageError(
                f"{what} from a worker thread on the QSBR worker of {w.task_name}: a QSBR "
                "worker reports for its own task only"
            )
        if not w._registered:
            raise RcuUsageError(f"{what} on a QSBR worker that was unregistered (from {w.site})")
        if self.debug:
            task, name = self.whoami()
            if task != w.task:
                raise RcuUsageError(
                    f"{what} from {name} on the QSBR worker registered by "
                    f"{w.task_name} at {w.site}; a worker reports for its own task only"
                )

    def report_qs(self, w: QsbrWorker) -> None:
        self._check_owner(w, "quiescent_state()")
        if not w._online:
            return  # offline is already quiescent
        if self.debug:
            inner = self.in_read_section(w.task)
            if inner is not None:
                raise RcuUsageError(
                    f"quiescent_state() inside the read section from {inner.site}: a quiescent "
                    "state promises no references are held"
                )
        if w._gen != self.qs_gen:
            w._gen = self.qs_gen
            if self.old is not None:
                self.qs_owed -= 1
                if not self.qs_owed:
                    self.wake()

    def set_offline(self, w: QsbrWorker) -> None:
        self._check_owner(w, "offline()")
        if not w._online:
            return
        if w._gen != self.qs_gen and self.old is not None:
            self.qs_owed -= 1
            if not self.qs_owed:
                self.wake()
        w._online = False
        w._gen = -1
        self.n_online -= 1

    def set_online(self, w: QsbrWorker) -> None:
        self._check_owner(w, "online()")
        if w._online:
            return
        w._online = True
        w._gen = self.qs_gen
        self.n_online += 1

    def unregister(self, w: QsbrWorker) -> None:
        self._check_owner(w, "unregister()")
        self.set_offline(w)
        w._registered = False
        if self.by_task.get(w.task) is w:
            del self.by_task[w.task]
