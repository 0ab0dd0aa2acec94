"""Trace files of scenario runs: ``--trace`` (Perfetto JSON) and ``--ftrace`` (text), streamed,
and the extra tracks (lock holds, counters) a kernel engineer expects in them."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING

import attrs

from rcukit.trace.events import DEFAULT_SELECTION, TraceEvent
from rcukit.trace.export import FtraceWriter, PerfettoWriter, open_text

if TYPE_CHECKING:
    from rcukit.kernel import Kernel
    from rcukit.locking.checker import LockChecker, LockContext
    from rcukit.locking.locks import Lock
    from rcukit.rcu.kvfree.krc import Krc
    from rcukit.scenarios.compare import Cell
    from rcukit.sched.sim import Task
    from rcukit.trace.events import Tracer


@attrs.define
class TraceFiles:
    """The ``--trace`` (Perfetto JSON) and ``--ftrace`` (text) files of a run of rows, written
    as the rows run: :meth:`attach` hooks a freshly booted kernel's tracer to both writers
    with the selection, and each row is a process pair in Perfetto and a section in ftrace.
    Memory stays bounded however long the rows run (the writers stream; the tracer keeps no
    list). Use as a context manager; the files are complete once it exits.
    """

    trace_path: str | None
    ftrace_path: str | None
    events: frozenset[str] | None = DEFAULT_SELECTION
    cpus: frozenset[int] | None = None
    window_ns: tuple[int, int] | None = None
    _perfetto: PerfettoWriter | None = attrs.field(default=None, init=False)
    _ftrace: FtraceWriter | None = attrs.field(default=None, init=False)
    _files: list[IO[str]] = attrs.field(factory=list, init=False)

    def __enter__(self) -> TraceFiles:
        if self.trace_path:
            f = open_text(self.trace_path)
            self._files.append(f)
            self._perfetto = PerfettoWriter(f)
        if self.ftrace_path:
            f = open_text(self.ftrace_path)
            self._files.append(f)
            self._ftrace = FtraceWriter(f)
        return self

    def attach(self, cell: Cell, k: Kernel) -> None:
        """Trace ``k`` (booted for ``cell``) into the files, as a new section of each."""
        tr = k.tracer
        tr.enable(self.events, cpus=self.cpus, window_ns=self.window_ns, keep=False)
        tr.listeners.extend(self.begin(cell, k.config.nr_cpus))
        trace_tracks(k)

    def begin(self, cell: Cell, nr_cpus: int) -> list[Callable[[TraceEvent], None]]:
        """Start ``cell``'s section in each file; returns the writers' ``write`` methods."""
        profile, variant, kc = cell
        out: list[Callable[[TraceEvent], None]] = []
        if self._perfetto is not None:
            self._perfetto.begin(nr_cpus, f"{profile}/{variant}/{kc}")
            out.append(self._perfetto.write)
        if self._ftrace is not None:
            self._ftrace.begin(nr_cpus, f"profile={profile} variant={variant} kernel_config={kc}")
            out.append(self._ftrace.write)
        return out

    def __exit__(self, *exc: object) -> None:
        try:
            if self._perfetto is not None:
                self._perfetto.close()
            if self._ftrace is not None:
                self._ftrace.end()
        finally:
            for f in self._files:
                f.close()


def write_traces(
    kernels: list[tuple[Cell, Kernel]], trace_path: str | None, ftrace_path: str | None
) -> None:
    """One Perfetto file with every run (a process pair per run) and/or one ftrace text file,
    from kernels whose tracers kept their events (``run_compare(kernels=...)``), streamed to
    the files. ``rcukit compare`` uses :class:`TraceFiles` instead, which keeps no events."""
    with TraceFiles(trace_path, ftrace_path) as files:
        for cell, k in kernels:
            writers = files.begin(cell, k.config.nr_cpus)
            for ev in k.tracer.events:
                for write in writers:
                    write(ev)


def trace_tracks(k: Kernel) -> None:
    """Give ``k``'s trace the Perfetto tracks a kernel engineer expects, as far as its
    tracer's selection asks for them: lock-hold slices of each CPU's ``krc.lock``
    (``lock_krcp``, track ``krc.lock/N``) and of ``&zone->lock`` (``lock_zone``), and
    counters sampled at each tick when they change (``nr_free_pages`` of the zone,
    ``krc_pending``: objects queued to kvfree_rcu() and not yet freed).

    ``k`` is a whole kernel (mm and kvfree_rcu booted), as compare's are. The lock methods
    are wrapped on this kernel's objects only, so an untraced kernel runs
    the same code as ever; nothing here changes what the simulation does.
    """
    tr = k.tracer
    if tr.selects("lock_krcp"):
        kv = k.kvfree
        since = [0] * len(kv.krcs)
        for krcp in kv.krcs:
            _trace_krcp_lock(tr, krcp, since)
        slow = kv._kvfree_slow

        async def traced_slow(task: Task, head: int | None, ptr: int) -> None:
            # kvfree_call_rcu()'s slow path takes krcp->lock inline, first thing
            since[task.cpu.id] = task.cpu.local_ns
            await slow(task, head, ptr)

        setattr(kv, "_kvfree_slow", traced_slow)  # noqa: B010
    if tr.selects("lock_zone"):
        _trace_zone_lock(tr, k.locks, k.mm.zone.lock)
    counters = [n for n in ("nr_free_pages", "krc_pending") if tr.selects(n)]
    if counters:
        _sample_counters(k, counters)


def _trace_krcp_lock(tr: Tracer, krcp: Krc, since: list[int]) -> None:
    """Hold slices of ``krcp->lock`` on track ``krc.lock/CPU``; ``since[cpu]`` is when it was
    taken (by this wrapper, or by the slow path's inline lock, which its wrapper times)."""
    lock, unlock = krcp.raw_spin_lock_irqsave, krcp.raw_spin_unlock_irqrestore
    cpu = krcp.cpu
    track = f"krc.lock/{cpu}"

    def traced_lock(task: Task) -> None:
        lock(task)
        since[cpu] = task.cpu.local_ns

    def traced_unlock(task: Task) -> None:
        if tr.on:
            t0 = since[cpu]
            tr.emit("lock_krcp", t0, task.cpu.id, task.comm, task.pid, "",
                    ph="X", dur_ns=task.cpu.local_ns - t0, track=track)
        unlock(task)

    setattr(krcp, "raw_spin_lock_irqsave", traced_lock)  # noqa: B010
    setattr(krcp, "raw_spin_unlock_irqrestore", traced_unlock)  # noqa: B010


def _trace_zone_lock(tr: Tracer, locks: LockChecker, zone_lock: Lock) -> None:
    """Hold slices of ``zone_lock``: ``locks`` (slotted, so its methods cannot be replaced on
    the instance) becomes an instance of a subclass that times them; same layout, same state."""
    from rcukit.locking.checker import LockChecker

    since = [0]

    class TracedLockChecker(LockChecker):
        __slots__ = ()

        def _take(self, task: LockContext, lock: Lock, ip: str, irqsave: bool) -> None:
            super()._take(task, lock, ip, irqsave)
            if lock is zone_lock:
                since[0] = task.cpu.local_ns

        def release(self, task: LockContext, lock: Lock) -> None:
            if lock is zone_lock and tr.on:
                t0 = since[0]
                tr.emit("lock_zone", t0, task.cpu.id, task.comm, task.pid, "",
                        ph="X", dur_ns=task.cpu.local_ns - t0, track=lock.name)
            super().release(task, lock)

    locks.__class__ = TracedLockChecker


def _sample_counters(k: Kernel, names: list[str]) -> None:
    tr = k.tracer
    last: dict[str, int] = {}
    mm = k.mm if "nr_free_pages" in names else None
    kv = k.kvfree if "krc_pending" in names else None

    def sample(task: Task, voluntary: bool) -> None:
        if not tr.on:
            return
        now = task.cpu.local_ns
        values = []
        if mm is not None:
            values.append(("nr_free_pages", mm.zone.buddy.nr_free))
        if kv is not None:
            values.append(("krc_pending", kv.pending))
        for name, value in values:
            if last.get(name) != value:
                last[name] = value
                tr.emit(name, now, task.cpu.id, task.comm, task.pid, f"{name}={value}",
                        ph="C", track=name)

    k.add_tick_hook(sample)
