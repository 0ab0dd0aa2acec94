"""Where independent simulations run: inline, a local process pool, or a Dask cluster.

``rcukit sweep`` (points) and ``rcukit compare`` (rows) both build their executors here, so there
is one place that chooses a pool's start method, its preload and its shutdown. Every job is a
whole simulation, deterministic from its plain-data arguments, so its result is the same bytes
whichever executor ran it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import ParamSpec, TypeVar
from urllib.parse import urlsplit

import attrs

from rcukit.errors import ConfigError

P = ParamSpec("P")
T = TypeVar("T")


class InlineExecutor(Executor):
    """Runs each call at submit time, in this process: the reference every other executor
    must match byte for byte, and the debugger-friendly way to run a sweep."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        fut: Future[T] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:
            fut.set_exception(exc)
        return fut


@attrs.frozen
class ExecutorChoice:
    """An executor and how many points to keep submitted at once (None: all of them)."""

    executor: Executor
    max_in_flight: int | None
    description: str


def _check_scheduler(address: str) -> None:
    # Caught here: distributed.Client fails fast on a malformed address but then hangs a
    # minute in its finaliser at exit.
    parts = urlsplit(address if "://" in address else "tcp://" + address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(
            f"--scheduler {address!r}: expected a Dask scheduler address like "
            "tcp://HOST:PORT (e.g. tcp://10.0.0.1:8786)"
        )


#: How often a worker checks that the process that made its pool is still alive.
PARENT_POLL_S = 0.5


def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """A pool worker's initializer: exit when the process that made the pool is gone.

    After ``kill -9`` of ``rcukit sweep`` nobody shuts the pool down: its workers would sit on
    their call queue for ever, holding the forkserver and the resource tracker alive with them.
    A worker's own parent is the forkserver, so ``PR_SET_PDEATHSIG`` cannot tell; a daemon
    thread polls the pool owner's pid instead (signal 0 only checks that it exists).
    """
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                continue  # it exists (owned by someone else: a reused pid, or a setuid parent)

    threading.Thread(target=watch, name="rcukit-watch-parent", daemon=True).start()


#: Imported once by the forkserver so every worker starts with the simulator loaded.
_PRELOAD = [
    "rcukit.scenarios.sweep",
    "rcukit.scenarios.compare",
    "rcukit.scenarios.rcuscale",
    "rcukit.mm.mm",
    "rcukit.rcu.tree",
    "rcukit.rcu.kvfree.sim",
]


@contextlib.contextmanager
def open_executor(
    workers: int | None = None, scheduler: str | None = None
) -> Iterator[ExecutorChoice]:
    """Inline (``workers == 0``), a local process pool, or a Dask cluster's executor.

    The pool's workers fork from a forkserver, a clean process started fresh, so no parent
    thread or Trio state leaks into a worker.
    """
    if scheduler is not None:
        _check_scheduler(scheduler)
        try:
            import distributed
        except ImportError:
            raise ConfigError(
                "--scheduler needs Dask's distributed package, an optional extra: "
                "pip install 'rcukit[dask]'"
            ) from None
        try:
            client = distributed.Client(  # type: ignore[no-untyped-call]
                scheduler, set_as_default=False
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler {scheduler!r}: {exc}") from exc
        try:
            ex = client.get_executor()  # type: ignore[no-untyped-call]
            try:
                yield ExecutorChoice(ex, None, f"Dask scheduler {scheduler}")
            except BaseException:
                ex.shutdown(wait=False)
                raise
            ex.shutdown(wait=True)
        finally:
            client.close()  # type: ignore[no-untyped-call]
        return
    n = (os.cpu_count() or 1) if workers is None else workers
    if n < 0:
        raise ConfigError(f"--workers {n}: expected 0 (inline) or a positive number of processes")
    if n == 0:
        yield ExecutorChoice(InlineExecutor(), 1, "inline")
        return
    # forkserver: workers fork from a clean server that has imported rcukit once, so they
    # start fast and share no parent threads or Trio state (spawned workers ran ~40% slower).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    pool = ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=watch_parent, initargs=(os.getpid(),)
    )
    try:
        yield ExecutorChoice(pool, 2 * n, f"{n} worker processes")
    except BaseException:
        # Jobs already handed to a worker would run to their end (a compare row takes up to a
        # minute) and interpreter exit joins them, so a Ctrl-C would hang that long for
        # results nobody records. Stop the workers (Python 3.14's terminate_workers()).
        workers_now = list(pool._processes.values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers_now:
            proc.terminate()
        raise
    pool.shutdown(wait=True)


