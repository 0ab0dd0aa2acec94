"""Trace files of scenario runs: ``--trace`` (Perfetto JSON) and ``--ftrace`` (text), streamed,
and the extra tracks (lock holds, counters) a kernel engineer expects in them."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

import attrs

from rcukit.errors import ConfigError
from rcukit.mm.page_alloc import KRCP_LOCK_CLASS
from rcukit.trace.events import DEFAULT_SELECTION, TraceEvent
from rcukit.trace.export import FtraceWriter, PerfettoWriter, join_perfetto, open_text

if TYPE_CHECKING:
    from rcukit.kernel import Kernel
    from rcukit.locking.checker import LockChecker, LockContext
    from rcukit.locking.locks import Lock
    from rcukit.rcu.kvfree.krc import Bnode, Krc
    from rcukit.rcu.kvfree.sim import KvfreeRcu
    from rcukit.scenarios.compare import Cell
    from rcukit.sched.sim import Task
    from rcukit.trace.events import Tracer


@attrs.define
class RowTrace:
    """One row's part of the trace files: :meth:`attach` hooks a freshly booted kernel's
    tracer to writers of its own part files (``perfetto_part``, ``ftrace_part``) with the
    selection; :meth:`close` finishes them. Plain data until attached, so it is sent to the
    worker process that runs the row (:func:`rcukit.scenarios.compare.row_data`), and the
    part is the same bytes whichever process wrote it.
    """

    index: int
    cell: tuple[str, str, str]
    perfetto_part: str | None
    ftrace_part: str | None
    events: frozenset[str] | None = DEFAULT_SELECTION
    cpus: frozenset[int] | None = None
    window_ns: tuple[int, int] | None = None
    _perfetto: PerfettoWriter | None = attrs.field(default=None, init=False)
    _ftrace: FtraceWriter | None = attrs.field(default=None, init=False)
    _files: list[IO[str]] = attrs.field(factory=list, init=False)

    def open(self, nr_cpus: int) -> list[Callable[[TraceEvent], None]]:
        """Open the part files and start the row's section; returns the writers' ``write``."""
        out: list[Callable[[TraceEvent], None]] = []
        if self.perfetto_part:
            f = open_text(self.perfetto_part)
            self._files.append(f)
            self._perfetto = PerfettoWriter(f, document=False)
            self._perfetto.begin(nr_cpus, "/".join(self.cell), run=self.index)
            out.append(self._perfetto.write)
        if self.ftrace_part:
            f = open_text(self.ftrace_part)
            self._files.append(f)
            self._ftrace = FtraceWriter(f)
            profile, variant, kc = self.cell
            self._ftrace.begin(nr_cpus, f"profile={profile} variant={variant} kernel_config={kc}")
            out.append(self._ftrace.write)
        return out

    def attach(self, k: Kernel) -> None:
        """Trace ``k`` (booted for this row) into the part files."""
        tr = k.tracer
        tr.enable(self.events, cpus=self.cpus, window_ns=self.window_ns, keep=False)
        tr.listeners.extend(self.open(k.config.nr_cpus))
        trace_tracks(k, self.index)

    def close(self) -> None:
        """Finish the part files (the ftrace section is sorted and written now)."""
        try:
            if self._perfetto is not None:
                self._perfetto.close()
            if self._ftrace is not None:
                self._ftrace.end()
        finally:
            for f in self._files:
                f.close()
            self._files.clear()
            self._perfetto = self._ftrace = None


@attrs.define
class TraceFiles:
    """The ``--trace`` (Perfetto JSON) and ``--ftrace`` (text) files of a run of rows.

    :meth:`row` gives each row, in the order the rows are asked for, a :class:`RowTrace`
    that writes the row's part files in a scratch directory, in whichever process runs the
    row; on exit the parts are joined in row order into the two files (a process pair per row
    in Perfetto, a section per row in ftrace), so the files are the same bytes however many
    worker processes ran the rows. Memory stays bounded however long the rows run (the
    writers stream; the tracer keeps no list). Use as a context manager.
    """

    trace_path: str | None
    ftrace_path: str | None
    events: frozenset[str] | None = DEFAULT_SELECTION
    cpus: frozenset[int] | None = None
    window_ns: tuple[int, int] | None = None
    _dir: str | None = attrs.field(default=None, init=False)
    _rows: list[RowTrace] = attrs.field(factory=list, init=False)
    #: The output files this run created (removed again if no row ever starts).
    _created: list[str] = attrs.field(factory=list, init=False)

    def __enter__(self) -> TraceFiles:
        self._created = []
        for path in (self.trace_path, self.ftrace_path):
            if path:
                existed = os.path.lexists(path)
                # fail now, not after the rows, if it cannot be written; appending to nothing
                # leaves an existing file as it is until there is a trace to replace it with
                try:
                    with open(path, "a", encoding="utf-8"):
                        pass
                except OSError as exc:  # /proc files, devices, a full disk...
                    self._remove_created()  # the --trace file, when --ftrace fails
                    raise ConfigError(f"cannot write {path!r}: {exc.strerror}") from exc
                if not existed:
                    self._created.append(path)
        self._dir = tempfile.mkdtemp(prefix="rcukit-trace-")
        self._rows = []
        return self

    def _remove_created(self) -> None:
        for path in self._created:
            with contextlib.suppress(OSError):
                os.remove(path)

    def row(self, cell: Cell) -> RowTrace:
        """The next row's part (``cell`` is its profile, variant and kernel build)."""
        assert self._dir is not None, "use TraceFiles as a context manager"
        i = len(self._rows)
        base = os.path.join(self._dir, f"{i:05d}")
        rt = RowTrace(
            i, cell,
            f"{base}.json" if self.trace_path else None,
            f"{base}.txt" if self.ftrace_path else None,
            self.events, self.cpus, self.window_ns,
        )
        self._rows.append(rt)
        return rt

    def __exit__(self, *exc: object) -> None:
        try:
            rows = self._rows
            if not rows:
                # nothing ran (the run failed before its first row): existing files are left
                # alone and the ones this run created go
                self._remove_created()
                return
            if self.trace_path:
                with open_text(self.trace_path) as out:
                    join_perfetto(out, _parts([r.perfetto_part for r in rows]))
            if self.ftrace_path:
                with open_text(self.ftrace_path) as out:
                    for f in _parts([r.ftrace_part for r in rows]):
                        shutil.copyfileobj(f, out, 1 << 20)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None


def _parts(paths: list[str | None]) -> Iterator[IO[str]]:
    """Each existing part file, opened in turn (a row that never ran has none)."""
    for p in paths:
        if p and os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                yield f


def write_traces(
    kernels: list[tuple[Cell, Kernel]], trace_path: str | None, ftrace_path: str | None
) -> None:
    """One Perfetto file with every run (a process pair per run) and/or one ftrace text file,
    from kernels whose tracers kept their events (``run_compare(kernels=...)``), streamed to
    the files. ``rcukit compare`` uses :class:`TraceFiles` rows instead, which keep no events."""
    with TraceFiles(trace_path, ftrace_path) as files:
        for cell, k in kernels:
            rt = files.row(cell)
            writers = rt.open(k.config.nr_cpus)
            try:
                for ev in k.tracer.events:
                    for write in writers:
                        write(ev)
            finally:
                rt.close()


def trace_tracks(k: Kernel, row: int = 0) -> None:
    """Give ``k``'s trace the Perfetto tracks a kernel engineer expects, as far as its
    tracer's selection asks for them:

    * lock-hold slices: each CPU's ``krcp->lock`` (``lock_krcp``, track ``krc.lock/N``; every
      call then takes kvfree_rcu()'s modelled slow path, where the lock is seen), ``zone->lock``
      (``lock_zone``) and the pcp lists' lock as the profile's mm version has it (track
      ``LOCK/N``: the -rt patch's ``pa_lock``, 5.14's ``pagesets.lock``, 6.0's
      ``pcp->lock``; 5.8-5.13 on !RT protect the lists with ``local_irq_save()`` alone, so
      there is no lock to show): ``lock_pcp_in_krcp`` for a hold taken inside ``krcp->lock``
      (the RFC's question; few), ``lock_pcp`` for the others (one per page allocated or
      freed: off by default), each slice with its taker's ``ip``;
    * flow arrows, one per kvfree_rcu() block: from the ``kvfree_block`` slice of the call
      that attached the block (its allocation included) to the ``kfree_bulk`` slice of the
      ``kvfree_rcu_bulk()`` that freed its records, each on its task's track (the flooding
      task's, the kworker's); flow ids are unique within ``row``'s part of a file;
    * counters sampled at most once per tick period, when they change: ``nr_free_pages`` of
      the zone, ``pcp_count`` (each CPU's ``pcp->count``, series ``cpu0``...),
      ``krc_pending`` (objects queued to kvfree_rcu() and not yet freed) and
      ``kvfree_blocks`` (block pages in use).

    Grace periods (``rcu_gp``) and per-CPU quiescent states (``rcu_qs``) are emitted by the RCU
    model itself (:mod:`rcukit.rcu.tree`). ``k`` is a whole kernel (mm and kvfree_rcu booted),
    as compare's are. The methods are wrapped on this kernel's objects only, so an untraced
    kernel runs the same code as ever; nothing here changes what the simulation does.
    """
    tr = k.tracer
    kv = k.kvfree
    if tr.selects("lock_krcp"):
        since = [0] * len(kv.krcs)
        for krcp in kv.krcs:
            _trace_krcp_lock(tr, krcp, since)
        slow = kv._kvfree_slow

        async def traced_slow(task: Task, head: int | None, ptr: int) -> None:
            # kvfree_call_rcu()'s slow path takes krcp->lock inline, first thing
            since[task.cpu.id] = task.cpu.local_ns
            await slow(task, head, ptr)

        setattr(kv, "_kvfree_slow", traced_slow)  # noqa: B010
        kv.force_slow_path()
    # id(lock): (event of a hold outside krcp->lock, of one inside it, track)
    watched: dict[int, tuple[str, str, str]] = {}
    if tr.selects("lock_zone"):
        lock = k.mm.zone.lock
        watched[id(lock)] = ("lock_zone", "lock_zone", lock.name)
    pcp_locks = k.mm.page_alloc.pcp_locks
    if pcp_locks is not None and (tr.selects("lock_pcp") or tr.selects("lock_pcp_in_krcp")):
        for cpu, lock in enumerate(pcp_locks):
            watched[id(lock)] = ("lock_pcp", "lock_pcp_in_krcp", f"{lock.name}/{cpu}")
    if watched:
        _trace_locks(tr, k.locks, watched)
    if tr.selects("kvfree_block") or tr.selects("kfree_bulk"):
        _trace_blocks(tr, kv, row)
    counters = [n for n in ("nr_free_pages", "pcp_count", "krc_pending", "kvfree_blocks")
                if tr.selects(n)]
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


def _trace_locks(
    tr: Tracer, locks: LockChecker, watched: dict[int, tuple[str, str, str]]
) -> None:
    """Hold slices of the locks in ``watched`` (``id(lock)``: the event of a hold taken
    outside ``krcp->lock``, of one taken inside it, and the track): ``locks`` (slotted, so its
    methods cannot be replaced on the instance) becomes an instance of a subclass that times
    them; same layout, same state. A slice says who took the lock (``ip=``, the call site the
    lock model records). Holds whose event the selection leaves out cost no event."""
    from rcukit.locking.checker import LockChecker

    since: dict[int, tuple[int, str, str]] = {}
    wanted = {
        key: (out if tr.selects(out) else "", inside if tr.selects(inside) else "", track)
        for key, (out, inside, track) in watched.items()
    }

    class TracedLockChecker(LockChecker):
        __slots__ = ()

        def _take(self, task: LockContext, lock: Lock, ip: str, irqsave: bool) -> None:
            super()._take(task, lock, ip, irqsave)
            w = wanted.get(id(lock))
            if w is not None:
                # in_krcp(): the lock just taken is held, so look below it
                inside = any(h.lock.name == KRCP_LOCK_CLASS for h in task.held_locks[:-1])
                name = w[1] if inside else w[0]
                if name:
                    since[id(lock)] = (task.cpu.local_ns, ip, name)

        def release(self, task: LockContext, lock: Lock) -> None:
            taken = since.pop(id(lock), None)
            if taken is not None and tr.on:
                t0, ip, name = taken
                tr.emit(name, t0, task.cpu.id, task.comm, task.pid, f"ip={ip}",
                        ph="X", dur_ns=task.cpu.local_ns - t0, track=wanted[id(lock)][2])
            super().release(task, lock)

    locks.__class__ = TracedLockChecker


def _trace_blocks(tr: Tracer, kv: KvfreeRcu, row: int) -> None:
    """One flow arrow per kvfree_rcu() block: ``_new_block`` (the call that attached a block,
    its page allocation included) is a ``kvfree_block`` slice whose ``flow_out`` id the
    block's page keeps until ``kvfree_rcu_bulk()`` frees the block, a ``kfree_bulk`` slice
    with that ``flow_in`` id (a page is in one block at a time, so the page names the flow)."""
    new_block = kv._new_block
    reclaim = kv.reclaim
    bulk = reclaim.kvfree_rcu_bulk
    flows: dict[int, int] = {}
    ids = itertools.count((row << 32) + 1)  # bind ids are global to a Perfetto file

    async def traced_new_block(
        task: Task, krcp: Krc, idx: int, can_alloc: bool
    ) -> tuple[Krc, Bnode | None]:
        t0 = task.cpu.local_ns
        krcp, bnode = await new_block(task, krcp, idx, can_alloc)
        if bnode is not None:
            flow = flows[bnode.page] = next(ids)
            cpu = task.cpu
            tr.emit("kvfree_block", t0, cpu.id, task.comm, task.pid,
                    f"page=0x{bnode.page:x} channel={idx}", ph="X",
                    dur_ns=cpu.local_ns - t0, track=task.comm, flow_out=flow)
        return krcp, bnode

    async def traced_bulk(task: Task, krcp: Krc, idx: int, bnode: Bnode) -> None:
        t0 = task.cpu.local_ns
        nr = bnode.nr_records
        flow = flows.pop(bnode.page, 0)
        await bulk(task, krcp, idx, bnode)
        tr.emit("kfree_bulk", t0, task.cpu.id, task.comm, task.pid,
                f"page=0x{bnode.page:x} channel={idx} nr_records={nr}", ph="X",
                dur_ns=task.cpu.local_ns - t0, track=task.comm, flow_in=flow)

    setattr(kv, "_new_block", traced_new_block)  # noqa: B010
    setattr(reclaim, "kvfree_rcu_bulk", traced_bulk)  # noqa: B010


def _sample_counters(k: Kernel, names: list[str]) -> None:
    """The counter tracks of :func:`trace_tracks`, sampled from the tick hooks at most once
    per tick period of simulated time, each when it changed: ``pcp_count`` is one record
    with a series per CPU (``cpu0``...), read from whichever CPU's tick samples (a plot,
    not the simulation: each CPU's list is its own)."""
    tr = k.tracer
    last: dict[str, str] = {}
    mm = k.mm
    kv = k.kvfree
    zone_free = "nr_free_pages" in names
    pcp = "pcp_count" in names
    pending = "krc_pending" in names
    blocks = "kvfree_blocks" in names
    period = k.config.tick_ns
    next_ns = [0]

    def sample(task: Task, voluntary: bool) -> None:
        now = task.cpu.local_ns
        if not tr.on or now < next_ns[0]:
            return
        next_ns[0] = now + period
        values = []
        if zone_free:
            values.append(("nr_free_pages", f"nr_free_pages={mm.zone.buddy.nr_free}"))
        if pcp:
            values.append(("pcp_count", " ".join(f"cpu{c}={p.count}"
                                                 for c, p in enumerate(mm.pcps))))
        if pending:
            values.append(("krc_pending", f"krc_pending={kv.pending}"))
        if blocks:
            values.append(("kvfree_blocks", f"kvfree_blocks={kv.counters.blocks_in_use}"))
        for name, fields in values:
            if last.get(name) != fields:
                last[name] = fields
                tr.emit(name, now, task.cpu.id, task.comm, task.pid, fields, ph="C")

    k.add_tick_hook(sample)
