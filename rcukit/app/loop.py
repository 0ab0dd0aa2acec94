"""The domain's event loop: asyncio or Trio through AnyIO, plus what AnyIO leaves to us.

AnyIO gives the domain one vocabulary on both loops: task groups, cancel scopes with shielding
(which asyncio itself lacks and the domain's shutdown needs), events, checkpoints, the clock, and
``from_thread`` calls that carry an explicit loop token. Two things it does not give are here:

* a fire-and-forget call into the loop from any thread (a reader leaving in a worker thread
  must wake the grace-period task without blocking on the loop): Trio's
  ``TrioToken.run_sync_soon`` or asyncio's ``loop.call_soon_threadsafe``;
* the coroutine chain of a suspended task, to see whether a task waiting for a grace period
  is itself inside a read section (:func:`holds_with`), and the same question for a worker
  thread about to block in ``rcu.from_thread`` (:func:`thread_in_read_lock`).

The AnyIO backend class is resolved once per domain, so the domain's own checkpoints and events
do not pay for AnyIO's per-call backend lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import gc
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import trio
from anyio.abc import AsyncBackend

from rcukit.errors import RcuClosedError, RcuUsageError

__all__ = ["EventLoop", "coroutine_chain", "holds_with", "thread_in_read_lock"]

T = TypeVar("T")


class EventLoop:
    """The loop a domain was opened in: its thread, its AnyIO backend and its token."""

    __slots__ = ("_call_soon", "backend", "current_coro", "name", "thread", "token")

    def __init__(self) -> None:
        if not getattr(sys, "_is_gil_enabled", lambda: True)():
            raise RcuUsageError(
                "rcukit's application domain needs the GIL (its worker-thread read side relies "
                "on it); this interpreter runs without one (free-threaded build, PYTHON_GIL=0)"
            )
        self.token = anyio.lowlevel.current_token()
        self.backend: type[AsyncBackend] = self.token.backend_class
        native: Any = self.token.native_token
        #: "trio" or "asyncio" (what sniffio reports).
        self.name = "trio" if hasattr(native, "run_sync_soon") else "asyncio"
        self._call_soon: Callable[[Callable[[], object]], object] = (
            native.run_sync_soon if self.name == "trio" else native.call_soon_threadsafe
        )
        #: ``threading.get_ident()`` of the loop's thread.
        self.thread = threading.get_ident()
        #: The running task's coroutine, straight from the loop (cheaper than AnyIO's TaskInfo).
        self.current_coro: Callable[[], object] = (
            _trio_current_coro if self.name == "trio" else _asyncio_current_coro
        )

    def __repr__(self) -> str:
        return f"<EventLoop {self.name} thread={self.thread}>"

    # ---------------------------------------------------------------- in the loop

    async def checkpoint(self) -> None:
        await self.backend.checkpoint()

    def event(self) -> anyio.Event:
        return self.backend.create_event()

    def current_time(self) -> float:
        return self.backend.current_time()

    # ---------------------------------------------------------------- from other threads

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def call_soon_threadsafe(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the loop soon; never blocks. A loop that has stopped ignores it."""
        with contextlib.suppress(RuntimeError):  # asyncio: loop closed; trio: RunFinishedError
            self._call_soon(fn)

    def run_sync(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop from a worker thread and return (or raise) its result."""
        self._check_worker(what)
        try:
            return anyio.from_thread.run_sync(fn, *args, token=self.token)
        except RuntimeError as exc:
            if isinstance(exc, RcuUsageError) or not _loop_gone(exc):
                raise
            raise RcuClosedError(f"{what}: the domain's event loop has stopped") from exc

    def run(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` on the loop from a worker thread (a blocking portal call)."""
        self._check_worker(what)
        try:
            return anyio.from_thread.run(fn, *args, token=self.token)  # type: ignore[arg-type]
        except RuntimeError as exc:
            if isinstance(exc, RcuUsageError) or not _loop_gone(exc):
                raise
            raise RcuClosedError(f"{what}: the domain's event loop has stopped") from exc

    def _check_worker(self, what: str) -> None:
        if threading.get_ident() == self.thread:
            raise RcuUsageError(
                f"rcu.from_thread.{what} called in the event loop's own thread; it would block "
                "the loop it waits for: await the domain's own method instead"
            )

    def refuse_thread(self, what: str, instead: str) -> None:
        """An ``async`` API called in a worker thread (on some other loop, or none)."""
        raise RcuUsageError(
            f"{what} called in thread {threading.current_thread().name!r}, not in the domain's "
            f"{self.name} event loop; from a worker thread use `{instead}`"
        )


def _trio_current_coro() -> object:
    return trio.lowlevel.current_task().coro


def _asyncio_current_coro() -> object:
    task = asyncio.current_task()
    return task.get_coro() if task is not None else None


def _loop_gone(exc: RuntimeError) -> bool:
    name = type(exc).__name__
    return name == "RunFinishedError" or "closed" in str(exc) or "not running" in str(exc)


def coroutine_chain(coro: object) -> Iterator[object]:
    """``coro`` and everything it awaits, outermost first (suspended coroutines only)."""
    seen = 0
    while coro is not None and seen < 1000:
        yield coro
        seen += 1
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def holds_with(coro: object, is_ours: Callable[[object], bool]) -> bool:
    """Is a suspended task (``coro``) inside a ``with`` whose manager ``is_ours``?

    A suspended coroutine's frame keeps the ``with`` statement's bound ``__exit__`` on its value
    stack, and the garbage collector's traversal of the coroutine reports it; executing frames
    are not traversed, which is why only the waiting side (a task already suspended) can ask.
    """
    for c in coroutine_chain(coro):
        for r in gc.get_referents(c):
            owner = getattr(r, "__self__", None)
            if owner is not None and getattr(r, "__name__", "") == "__exit__" and is_ours(owner):
                return True
    return False


_LOADS_NAME = frozenset(("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_GLOBAL", "LOAD_NAME"))


def thread_in_read_lock(frame: FrameType | None, is_ours: Callable[[object], bool]) -> bool:
    """Is the calling thread inside ``with <domain>.read_lock():`` somewhere up its stack?

    A running thread's frames do not show their ``with`` managers, so this reads the code: for
    each frame, the ``with`` blocks whose cleanup handler (the exception table's
    ``WITH_EXCEPT_START`` targets) spans the frame's current instruction, and for each the
    expression before its ``BEFORE_WITH``: a ``.read_lock()`` call on a name (or attribute
    chain) that resolves, in that frame, to this domain. Anything it cannot resolve counts as
    "not ours" (no false alarm). Only ``rcu.from_thread`` calls pay for it.
    """
    while frame is not None:
        if _frame_in_read_lock(frame, is_ours):
            return True
        frame = frame.f_back
    return False


def _frame_in_read_lock(frame: FrameType, is_ours: Callable[[object], bool]) -> bool:
    code = frame.f_code
    lasti = frame.f_lasti
    # the exception table as dis reads it (Python 3.11+; typeshed does not list it)
    entries: list[Any] = getattr(dis.Bytecode(code), "exception_entries", [])
    spans: dict[int, list[int]] = {}
    for e in entries:
        sp = spans.setdefault(e.target, [e.start, e.end])
        sp[0] = min(sp[0], e.start)
        sp[1] = max(sp[1], e.end)
    live = [t for t, (lo, hi) in spans.items() if lo <= lasti < hi]
    if not live:
        return False
    ins = list(dis.get_instructions(code))
    at = {i.offset: n for n, i in enumerate(ins)}
    for t in live:
        n = at.get(t)
        if n is None or n + 1 >= len(ins) or ins[n + 1].opname != "WITH_EXCEPT_START":
            continue
        lo = spans[t][0]
        setup = [k for k, i in enumerate(ins) if i.opname == "BEFORE_WITH" and i.offset < lo]
        if setup and _receiver_is_ours(ins, setup[-1], frame, is_ours):
            return True
    return False


def _receiver_is_ours(
    ins: list[dis.Instruction], k: int, frame: FrameType, is_ours: Callable[[object], bool]
) -> bool:
    """``ins[k]`` is a BEFORE_WITH: was its manager made by ``<ours>.read_lock()``?"""
    j = k - 1
    while j >= 0 and ins[j].opname not in ("LOAD_METHOD", "LOAD_ATTR"):
        if ins[j].opname in _LOADS_NAME:
            return False
        j -= 1
    if j < 0 or ins[j].argval != "read_lock":
        return False
    chain: list[str] = []
    j -= 1
    while j >= 0 and ins[j].opname == "LOAD_ATTR":
        chain.append(str(ins[j].argval))
        j -= 1
    if j < 0 or ins[j].opname not in _LOADS_NAME:
        return False
    name = str(ins[j].argval)
    scope = frame.f_locals
    if name in scope:
        obj = scope[name]
    elif name in frame.f_globals:
        obj = frame.f_globals[name]
    else:
        return False
    try:
        for attr in reversed(chain):
            obj = getattr(obj, attr)
    except Exception:
        return False
    return is_ours(obj)
