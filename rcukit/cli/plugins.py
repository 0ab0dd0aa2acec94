"""Users' allocator-core variants for ``rcukit compare``: ``--plugin MODULE:ATTR`` and entry points.

A plugin names a :class:`~rcukit.rcu.kvfree.variants.BlockPageSource` object, a class to instantiate
with no arguments, or an iterable of either; installed packages offer the same through the
``rcukit.block_sources`` entry-point group. Everything is resolved and checked here, before a
simulation starts, so a typo costs an error message and exit status 2, not a long run that
fails at its first row.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Sequence

from rcukit.errors import ConfigError, did_you_mean
from rcukit.rcu.kvfree.variants import BlockPageSource, builtin_variants, check_variant_name

__all__ = ["ENTRY_POINT_GROUP", "load_block_sources"]

ENTRY_POINT_GROUP = "rcukit.block_sources"
_NEEDS = "a source needs name, gfp, description, defers_to_worker and an async get_page(task, mm)"


def load_block_sources(plugins: Sequence[str]) -> list[BlockPageSource]:
    """The installed entry points' sources, then each ``--plugin``'s, in order."""
    sources: list[BlockPageSource] = []
    # A name given twice would fail at boot with advice for Python callers (replace=True);
    # say here which two places gave it.
    given = dict.fromkeys(builtin_variants(), "a built-in variant")

    def add(found: list[BlockPageSource], where: str) -> None:
        for source in found:
            if source.name in given:
                raise ConfigError(
                    f"{where}: variant {source.name!r} is already {given[source.name]}; "
                    "each variant name may be given once"
                )
            given[source.name] = f"given by {where}"
            sources.append(source)

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP}"
        try:
            obj = ep.load()
        except Exception as exc:
            raise ConfigError(f"{where}: cannot load it: {type(exc).__name__}: {exc}") from exc
        add(_sources(obj, where), where)
    for spec in plugins:
        add(_sources(_resolve(spec), f"--plugin {spec!r}"), f"--plugin {spec!r}")
    return sources


def _resolve(spec: str) -> object:
    """``MODULE:ATTR`` (ATTR may be dotted, as in entry points) to the object it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ConfigError(f"--plugin {spec!r}: expected MODULE:ATTR, e.g. mypkg.sources:MEMPOOL")
    try:
        module = importlib.import_module(module_name.strip())
    except Exception as exc:  # the user's module may fail in any way while importing
        raise ConfigError(
            f"--plugin {spec!r}: cannot import module {module_name.strip()!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    obj: object = module
    for part in attr.strip().split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            hint = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
            raise ConfigError(
                f"--plugin {spec!r}: module {module.__name__!r} has no attribute "
                f"{attr.strip()!r}{hint}"
            ) from None
    return obj


def _sources(obj: object, where: str) -> list[BlockPageSource]:
    single = isinstance(obj, (type, BlockPageSource, str, bytes))
    if single or not isinstance(obj, Iterable):
        return [_source(obj, where)]
    found = [_source(item, where) for item in obj]
    if not found:
        raise ConfigError(f"{where}: {obj!r} holds no block sources")
    return found


def _source(obj: object, where: str) -> BlockPageSource:
    """One source: an instance as is, a class instantiated with no arguments."""
    if isinstance(obj, type):
        cls = obj
        try:
            obj = cls()
        except Exception as exc:
            raise ConfigError(
                f"{where}: cannot instantiate {cls.__qualname__}() with no arguments: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(obj, BlockPageSource):
        raise ConfigError(
            f"{where}: {obj!r} is not a BlockPageSource, a class of one, or an iterable of "
            f"them; {_NEEDS}"
        )
    if not isinstance(obj.name, str):
        raise ConfigError(f"{where}: {obj!r} has name = {obj.name!r}; a variant name is a str")
    try:
        check_variant_name(obj.name)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return obj
