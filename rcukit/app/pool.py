"""``ObjectPool``: a slab-like cache of reusable objects, with a KASAN/SLUB-style debug mode.

Why a pool at all: ``kvfree_rcu()`` earns its keep by releasing objects in bulk, one
``kfree_bulk()`` per page of pointers (kernel.md §1.4, §4). The Python equivalent of handing a
slab its objects back is :meth:`ObjectPool.free_bulk`: one ``list.extend`` per block instead of a
call per object. A pool of buffers is also what an application reaches for to stop allocating a
fresh ``bytearray`` per request.

Without debug mode the pool still never caches an object twice (a double free, say a pooled
object given to ``kvfree_rcu`` twice, would otherwise make the pool hand one object out
twice): free objects are kept in a *set*, so a duplicate collapses and the size check after a
``free_bulk`` notices it. For the usual pooled objects (identity equality and hashing) that
costs a set insert instead of a list append per object; objects that are unhashable or
compare by value (``bytearray``) are kept in a list plus a set of their ids, which costs
more. It is the spirit of SLUB's cheap always-on freelist check (``set_freepointer`` under
CONFIG_SLAB_FREELIST_HARDENED catches ``object == fp``), not the full debug bookkeeping.

Nor does it take back more objects than it has out (``allocs - frees``): the objects of a free
beyond that count cannot be its own (one comparison per call), so they are refused with a
:class:`~rcukit.errors.MemoryDebugError` (``kind="invalid-free"``) and neither cached nor
counted, and ``statistics().in_use`` can never go negative. What it cannot see without
per-object records is *which* object is foreign while some of its own are out: SLUB without
consistency checks trusts ``kmem_cache_free`` the same way (``cache_from_obj()`` in
``mm/slab.h`` reads the object's page only under ``SLAB_CONSISTENCY_CHECKS``). Debug mode
knows every object and refuses a foreign one at once.

Debug mode does what ``slub_debug=FPZ`` plus KASAN's quarantine do for the kernel:

* every allocation and free records its call site (the first frame outside rcukit; frees done
  by ``kvfree_rcu`` after a grace period record the ``kvfree_rcu()`` call instead);
* a freed object is poisoned (``bytearray`` contents become ``POISON_FREE`` 0x6b bytes, or the
  ``poison`` hook runs) and is re-checked when reused, so a write after free is reported;
* freed objects are reused oldest first (a FIFO quarantine), so a stale reference stays
  detectable for as long as possible;
* a double free or a free of a foreign object raises :class:`~rcukit.errors.MemoryDebugError`
  naming the allocation site, the first free and the second; :meth:`ObjectPool.check` turns a
  use after free into the same kind of error, and a generation number catches a reference that
  survived a free *and* a reallocation (the ABA case).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

import attrs

from rcukit.app.sites import call_site
from rcukit.errors import ConfigError, MemoryDebugError

__all__ = ["POISON_FREE", "ObjectPool", "PoolStatistics"]

T = TypeVar("T")

#: SLUB's ``POISON_FREE`` byte (``include/linux/poison.h``).
POISON_FREE = 0x6B


@attrs.frozen
class PoolStatistics:
    """A snapshot of one pool (the Trio ``statistics()`` convention)."""

    name: str
    debug: bool
    #: Objects the factory made.
    created: int
    #: Allocated and not yet freed.
    in_use: int
    #: Free objects kept for reuse (in debug mode: the quarantine).
    cached: int
    #: Cap on ``cached``; None means no cap.
    max_cached: int | None
    allocs: int
    frees: int
    #: Freed objects dropped because the cache was full.
    dropped: int


class _Life:
    """Debug record of one object: where it was allocated and freed, and how often reused."""

    __slots__ = ("alloc_site", "free_site", "freed", "generation", "obj")

    def __init__(self, obj: object, site: str) -> None:
        self.obj = obj
        self.alloc_site = site
        self.free_site: str | None = None
        self.freed = False
        self.generation = 0


def _describe(obj: object) -> str:
    return f"{type(obj).__name__} object at {id(obj):#x}"


def _check_optional_count(inst: object, att: attrs.Attribute[int | None], v: object) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ConfigError(f"{att.name} = {v!r}: expected None or an integer >= 0")


def _check_count(inst: object, att: attrs.Attribute[int], v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(f"{att.name} = {v!r}: expected an integer >= 0")


# Validators run at construction only: attrs' per-assignment hook would make every counter
# update in alloc()/free() a Python-level __setattr__ call (~0.5 us each).
@attrs.define(eq=False, repr=False, on_setattr=attrs.setters.NO_OP)
class ObjectPool(Generic[T]):
    """A pool of reusable objects made by ``factory`` (see the module docstring).

    ``max_cached`` caps how many free objects are kept (the rest are dropped, like a slab
    shrinking); ``prefill`` makes that many objects up front; ``poison`` is called on every
    object freed in debug mode (``bytearray`` objects are poisoned with 0x6b bytes without it).
    Pass the pool as ``release=`` to :meth:`RcuDomain.kvfree_rcu` (or to ``open_domain``) and
    retired objects come back to it in bulk after a grace period.

    Freeing an object the pool did not hand out raises
    :class:`~rcukit.errors.MemoryDebugError` and caches nothing of it. Without debug mode the
    pool keeps counts, not per-object records (per-object records would cost every free), so
    what it refuses is exactly what it can prove: a free that finds an object already cached
    (a double free), and the objects of a free beyond the number it has out (``allocs -
    frees``: any free while none are out, say). A foreign object freed while the pool's own
    are out is taken for one of them, undetected; so is an object freed again after the pool
    dropped it (``max_cached``) or handed it out anew. The books stay consistent all the same:
    such a free stands in for an object still out, and the free that later finds none out is
    the one refused (it may be a legitimate one: the message says so). ``statistics().in_use``
    is ``allocs - frees``, never negative. Use ``debug=True`` to have every foreign or double
    free refused where it happens, with its call sites.
    """

    factory: Callable[[], T]
    max_cached: int | None = attrs.field(
        default=None, kw_only=True, validator=_check_optional_count
    )
    prefill: int = attrs.field(default=0, kw_only=True, validator=_check_count)
    debug: bool = attrs.field(default=False, kw_only=True)
    poison: Callable[[T], object] | None = attrs.field(default=None, kw_only=True)
    name: str = attrs.field(default="", kw_only=True)
    #: Free objects (production mode): a set when objects hash by identity, else ``_free``
    #: plus the ``id()`` of each in ``_free_ids``. Which one is decided by the first object.
    _free_set: set[T] = attrs.field(init=False, factory=set)
    _free: list[T] = attrs.field(init=False, factory=list)
    _free_ids: set[int] = attrs.field(init=False, factory=set)
    _by_identity: bool | None = attrs.field(init=False, default=None)
    _quarantine: deque[T] = attrs.field(init=False, factory=deque)
    _lives: dict[int, _Life] = attrs.field(init=False, factory=dict)
    _created: int = attrs.field(init=False, default=0)
    _allocs: int = attrs.field(init=False, default=0)
    _frees: int = attrs.field(init=False, default=0)
    _dropped: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if not callable(self.factory):
            raise ConfigError(f"factory = {self.factory!r}: expected a callable making objects")
        if not self.name:
            self.name = getattr(self.factory, "__qualname__", None) or repr(self.factory)
        for _ in range(self.prefill):
            obj = self.factory()
            self._created += 1
            if self.debug:
                life = _Life(obj, "<prefill>")
                life.freed = True
                life.free_site = "<prefill>"
                self._lives[id(obj)] = life
                self._poison(obj)
                self._quarantine.append(obj)
            else:
                self._free_plain([obj])
                self._frees -= 1  # made free, not freed

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<ObjectPool {self.name!r} in_use={s.in_use} cached={s.cached} debug={s.debug}>"

    # ---------------------------------------------------------------- fast paths

    def alloc(self) -> T:
        """An object from the pool, or a new one from the factory if none is free."""
        if self.debug:
            return self._alloc_debug(call_site())
        self._allocs += 1
        fs = self._free_set
        if fs:
            return fs.pop()
        free = self._free
        if free:
            obj = free.pop()
            self._free_ids.discard(id(obj))
            return obj
        self._created += 1
        return self.factory()

    def free(self, obj: T) -> None:
        """Give ``obj`` back; in debug mode a double or foreign free raises MemoryDebugError."""
        if self.debug:
            err = self._free_debug(obj, call_site())
            if err is not None:
                raise err
            return
        if self._frees < self._allocs:
            self._free_plain([obj])
        else:  # none out: it cannot be ours
            self._free_beyond_out([obj])

    def free_bulk(self, objs: Iterable[T]) -> None:
        """Give many objects back with one call (``kmem_cache_free_bulk``).

        In debug mode every valid object is freed even if some are not; the bad ones are then
        reported together (one MemoryDebugError, or an ExceptionGroup of them).
        """
        if self.debug:
            site = call_site()
            objs = list(objs)
            self._raise_all(self._free_bulk_debug(objs, [site] * len(objs)))
            return
        objs = objs if isinstance(objs, list) else list(objs)
        if len(objs) > self._allocs - self._frees:
            self._free_beyond_out(objs)
        else:
            self._free_plain(objs)

    def _free_plain(self, objs: list[T]) -> None:
        """Production free of ``objs``: each cached once; duplicates raise after the rest.

        The callers send a free of more objects than are out (``allocs - frees``) to
        :meth:`_free_beyond_out` instead (one comparison per call: the books cannot go
        negative).
        """
        by_identity = self._by_identity
        if by_identity is None:
            if not objs:
                return
            t = type(objs[0])
            by_identity = self._by_identity = (
                t.__hash__ is object.__hash__ and t.__eq__ is object.__eq__
            )
        if by_identity:
            fs = self._free_set
            n0 = len(fs)
            fs.update(objs)
            n = len(fs) - n0
            self._frees += n
            cap = self.max_cached
            if cap is not None and len(fs) > cap:
                self._dropped += len(fs) - cap
                for _ in range(len(fs) - cap):
                    fs.pop()
            if n != len(objs):
                raise self._double_free(self._duplicates(objs), len(objs) - n)
            return
        ids = self._free_ids
        free = self._free
        dup: list[T] = []
        for o in objs:
            i = id(o)
            if i in ids:
                dup.append(o)
                continue
            self._frees += 1
            if self.max_cached is None or len(free) < self.max_cached:
                ids.add(i)
                free.append(o)
            else:
                self._dropped += 1
        if dup:
            raise self._double_free(dup, len(dup))

    def _free_beyond_out(self, objs: list[T]) -> None:
        """More objects given back than the pool has out: keep them in order while any is out,
        refuse the repeats and the rest, then raise for the refused ones.

        The rare path: it looks at each object (is it cached already? repeated in this call?),
        which the fast path leaves to the set's size.
        """
        room = self._allocs - self._frees
        cached = self._free_set if self._by_identity else None
        ids = self._free_ids
        seen: set[int] = set()
        keep: list[T] = []
        dup: list[T] = []
        extra: list[T] = []
        for o in objs:
            i = id(o)
            try:
                again = o in cached if cached is not None else i in ids
            except TypeError:  # unhashable: not in the set, so not cached (nor ours)
                again = False
            again = again or i in seen
            if again:
                dup.append(o)
            elif len(keep) < room:
                seen.add(i)
                keep.append(o)
            else:
                extra.append(o)
        if keep:
            self._free_plain(keep)  # fits what is out, no repeats: the fast path
        if extra:
            raise self._foreign_free(extra, dup, room)
        raise self._double_free(dup, len(dup))

    def _foreign_free(self, extra: list[T], dup: list[T], room: int) -> MemoryDebugError:
        sample = ", ".join(_describe(o) for o in extra[:5])
        also = f"; {len(dup)} more were already free (double free)" if dup else ""
        return MemoryDebugError(
            f"invalid free into pool {self.name!r}: it has {room} object(s) out (allocated "
            f"and not freed) but was given {len(extra)} more, refused ({sample}){also}. They "
            "are foreign (not allocated from this pool) or freed twice; without debug mode "
            "the pool counts rather than tracks objects, so an earlier foreign free while "
            "objects were out may have taken the place of a refused one. "
            "ObjectPool(debug=True) refuses each bad free where it happens, with its sites",
            kind="invalid-free",
        )

    @staticmethod
    def _duplicates(objs: list[T]) -> list[T]:
        """Which of ``objs`` repeat within the call (the rare path, for the message)."""
        seen: set[int] = set()
        dup = []
        for o in objs:
            if id(o) in seen:
                dup.append(o)
            seen.add(id(o))
        return dup

    def _double_free(self, sample: list[T], n: int) -> MemoryDebugError:
        what = f" (among them {', '.join(_describe(o) for o in sample[:5])})" if sample else ""
        return MemoryDebugError(
            f"double free into pool {self.name!r}: {n} object(s) were already free{what}; the "
            "pool kept one copy of each (a pooled object given to kvfree_rcu() twice?). "
            "ObjectPool(debug=True) names the allocation and free sites",
            kind="double-free",
        )

    # ---------------------------------------------------------------- debug checks

    def check(self, obj: T, generation: int | None = None) -> None:
        """Raise MemoryDebugError if ``obj`` is not live (freed, or not from this pool).

        With ``generation`` (from :meth:`generation` when the reference was taken) it also
        raises if the object was freed and allocated again since. A no-op without debug mode.
        """
        if not self.debug:
            return
        life = self._life_of(obj)
        if life is None:
            raise MemoryDebugError(
                f"use of {_describe(obj)} at {call_site()}: it was not allocated from pool "
                f"{self.name!r}"
            )
        if life.freed:
            raise MemoryDebugError(
                f"use after free of {_describe(obj)} from pool {self.name!r} at {call_site()}: "
                f"allocated at {life.alloc_site}, freed at {life.free_site}"
            )
        if generation is not None and generation != life.generation:
            raise MemoryDebugError(
                f"use after free of {_describe(obj)} from pool {self.name!r} at {call_site()}: "
                f"the reference is from generation {generation}, but the object was freed and "
                f"allocated again (now generation {life.generation}, allocated at "
                f"{life.alloc_site})"
            )

    def generation(self, obj: T) -> int:
        """How many times ``obj`` has been reallocated (debug mode; always 0 otherwise)."""
        if not self.debug:
            return 0
        life = self._life_of(obj)
        return life.generation if life is not None else -1

    def is_freed(self, obj: T) -> bool:
        """Debug mode: is ``obj`` currently free? (Always False without debug mode.)"""
        life = self._life_of(obj) if self.debug else None
        return life is not None and life.freed

    def describe(self, obj: T) -> str | None:
        """Debug mode: where ``obj`` was allocated and freed, for error messages; else None."""
        life = self._life_of(obj) if self.debug else None
        if life is None:
            return None
        if life.freed:
            return f"allocated at {life.alloc_site}, freed at {life.free_site}"
        return f"allocated at {life.alloc_site}"

    def statistics(self) -> PoolStatistics:
        cached = len(self._quarantine) if self.debug else len(self._free_set) + len(self._free)
        return PoolStatistics(
            name=self.name,
            debug=self.debug,
            created=self._created,
            in_use=self._allocs - self._frees,
            cached=cached,
            max_cached=self.max_cached,
            allocs=self._allocs,
            frees=self._frees,
            dropped=self._dropped,
        )

    # ---------------------------------------------------------------- debug internals

    def _life_of(self, obj: object) -> _Life | None:
        """``obj``'s debug record, if this pool made it (an id alone may be reused)."""
        life = self._lives.get(id(obj))
        return life if life is not None and life.obj is obj else None

    def _poison(self, obj: T) -> None:
        if self.poison is not None:
            self.poison(obj)
        elif isinstance(obj, bytearray):
            obj[:] = bytes((POISON_FREE,)) * len(obj)

    def _alloc_debug(self, site: str) -> T:
        self._allocs += 1
        q = self._quarantine
        if not q:
            obj = self.factory()
            self._created += 1
            self._lives[id(obj)] = _Life(obj, site)
            return obj
        obj = q.popleft()
        life = self._lives[id(obj)]
        if (
            self.poison is None
            and isinstance(obj, bytearray)
            and obj.count(POISON_FREE) != len(obj)
        ):
            # Keep the object out of circulation: it was corrupted while free.
            self._allocs -= 1
            del self._lives[id(obj)]
            raise MemoryDebugError(
                f"write after free of {_describe(obj)} from pool {self.name!r}: its poison "
                f"(0x{POISON_FREE:x} bytes) changed after it was freed at {life.free_site} "
                f"(allocated at {life.alloc_site}); detected reallocating it at {site}"
            )
        life.freed = False
        life.alloc_site = site
        life.free_site = None
        life.generation += 1
        return obj

    def _free_debug(self, obj: T, site: str) -> MemoryDebugError | None:
        life = self._life_of(obj)
        if life is None:
            return MemoryDebugError(
                f"free of {_describe(obj)} at {site}: it was not allocated from pool "
                f"{self.name!r} (foreign free)",
                kind="invalid-free",
            )
        if life.freed:
            return MemoryDebugError(
                f"double free of {_describe(obj)} from pool {self.name!r}: allocated at "
                f"{life.alloc_site}, freed at {life.free_site}, freed again at {site}",
                kind="double-free",
            )
        life.freed = True
        life.free_site = site
        self._frees += 1
        self._poison(obj)
        q = self._quarantine
        q.append(obj)
        cap = self.max_cached
        if cap is not None and len(q) > cap:
            old = q.popleft()
            del self._lives[id(old)]
            self._dropped += 1
        return None

    def _free_bulk_debug(self, objs: Sequence[T], sites: Sequence[str]) -> list[MemoryDebugError]:
        errors = []
        for obj, site in zip(objs, sites, strict=True):
            err = self._free_debug(obj, site)
            if err is not None:
                errors.append(err)
        return errors

    @staticmethod
    def _raise_all(errors: list[MemoryDebugError]) -> None:
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup(f"{len(errors)} bad frees in one free_bulk()", errors)
