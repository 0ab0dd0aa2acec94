"""Options several subcommands share, declared once so their spelling, help and checks agree.

Each subcommand calls :func:`add_shared_options` with the options it takes and its own
defaults; where a default differs between subcommands (``--profile``, ``--cpus``) the help says
which one applies, so ``rcukit X --help`` documents the default ``X`` uses.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from rcukit.errors import ConfigError
from rcukit.rcu.profiles import PROFILES, get_profile

__all__ = [
    "FORMATS",
    "JSON_SCHEMA",
    "PLOT_SUFFIXES",
    "Default",
    "add_format_option",
    "add_shared_options",
    "check_profile",
    "module_params",
    "number_type",
    "output_format",
    "output_path",
    "plain_help",
    "print_json",
]

#: The version of every JSON document the commands print (``"schema": N``). Raised when a key
#: is renamed, removed or changes meaning; adding keys keeps it.
JSON_SCHEMA = 1

#: ``--format`` values: rich tables for a terminal, GitHub markdown, CSV, the JSON document, and
#: plain text for a mailing-list post (ASCII only, at most 80 columns).
FORMATS = ("text", "plain", "markdown", "csv", "json")

N = TypeVar("N", int, float)
P = TypeVar("P", bound=attrs.AttrsInstance)


@attrs.frozen
class Default:
    """A subcommand's default for a shared option: the parsed value and how help words it.

    The two differ where the real default is decided later: ``compare --profile`` parses to
    None so a ``--config`` file's profile wins, and the help names what applies without one.
    """

    value: object
    doc: str


def module_params(cls: type[P], args: argparse.Namespace) -> P:
    """The fields of ``cls`` the command line has options for; the rest keep their defaults.

    Each such option's dest is the field's name, as the kernel's module parameters
    (``rcutorture.nreaders=``, ``rcuscale.kfree_mult=``) are named after their variables; the
    attrs class still validates every value it is given.
    """
    given = vars(args)
    return cls(**{f: given[f] for f in attrs.fields_dict(cls) if f in given})


def check_profile(name: str | None) -> None:
    """Reject an unknown ``--profile`` with the allowed names (None: the command's default).

    Checked in the command rather than by argparse ``choices`` so the error reads like every
    other bad value: ``rcukit CMD: error: 'x' is not a kvfree_rcu profile; allowed: ...``, exit 2.
    """
    if name is not None:
        get_profile(name)


def number_type(
    convert: Callable[[str], N], what: str, check: Callable[[str, N], str | None] | None = None
) -> Callable[[str], N]:
    """An argparse ``type=``: ``convert`` the text, then ``check(text, value)`` for a problem.

    Errors come out as argparse's own (``argument --x: ...``, exit status 2) before any run.
    ``inf`` and ``nan`` are never a number here: no count, rate or duration is infinite.
    """

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: it must be finite")
        problem = check(text, value) if check is not None else None
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


#: Image formats matplotlib's Agg backend writes, chosen by the file name's suffix.
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def output_path(suffixes: Sequence[str] = ()) -> Callable[[str], str]:
    """An argparse ``type=`` for a file the command writes at the end of its run.

    Checked when the command line is parsed, so a mistyped directory or suffix is an error
    (exit 2) before minutes of simulation, not a traceback after them: the directory must exist
    and be writable, the name must not be a directory, and with ``suffixes`` the name must end
    in one of them (matplotlib picks the image format from it).
    """

    def parse(text: str) -> str:
        if "\x00" in text:  # open() would raise ValueError after the rows
            raise argparse.ArgumentTypeError(f"{text!r}: a file name cannot hold a NUL byte")
        path = Path(text)
        if not text or path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file name")
        parent = path.parent
        if not parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r}: directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{text!r}: directory {str(parent)!r} is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text!r} exists and is not writable")
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a name ending in {', '.join(suffixes)}"
            )
        return text

    return parse


def add_shared_options(
    parser: argparse.ArgumentParser,
    *,
    seed: int | None = 0,
    profile: Default | None = None,
    cpus: Default | None = None,
    config: str | None = None,
) -> None:
    """Add ``--seed`` and ``--json`` always; ``--profile``, ``--cpus``, ``--config`` when given.

    ``seed`` is the parsed default (None where a config file may set the seed); ``config`` is
    the help for ``--config FILE.toml``, which each command reads differently.
    """
    parser.add_argument("--seed", type=int, default=seed, help="simulation seed (default 0)")
    if profile is not None:
        parser.add_argument(
            "--profile", default=profile.value,
            help=f"kvfree_rcu version profile: {', '.join(PROFILES)} (default {profile.doc})",
        )
    if cpus is not None:
        parser.add_argument("--cpus", type=int, default=cpus.value,
                            help=f"simulated CPUs (default {cpus.doc})")
    if config is not None:
        parser.add_argument("--config", metavar="FILE.toml", help=config)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format`` (after :func:`add_shared_options`, whose ``--json`` stays its alias)."""
    parser.add_argument(
        "--format", choices=FORMATS, default=None,
        help="text (default): tables for this terminal; plain: ASCII, at most 80 columns, for a "
        "mailing-list post; markdown: GitHub tables; csv: one line per row; json: the same as "
        "--json",
    )


def output_format(args: argparse.Namespace) -> str:
    """The format asked for: ``--json`` is ``--format json``; the two must not disagree."""
    fmt: str | None = getattr(args, "format", None)
    if args.json:
        if fmt not in (None, "json"):
            raise ConfigError(f"--json and --format {fmt} both given: choose one")
        return "json"
    return fmt or "text"


def print_json(doc: dict[str, Any]) -> None:
    """One JSON document on stdout, sorted keys, with the schema version."""
    print(json.dumps({"schema": JSON_SCHEMA, **doc}, sort_keys=True))


_LITERAL = re.compile(r"``(.+?)``")
_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)\s*(?:<[^>]*>)?`")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
# "(kernel.md 3.3)", "(kernel.md section 5; ...)", "kernel.md §6": the project's reference notes,
# which an installed rcukit does not ship.
_CITE_ALONE = re.compile(r"\s*\(kernel\.md[^();]*\)")
_CITE_LEAD = re.compile(
    r"kernel\.md(?:\s+(?:section\s+|§)?[0-9][0-9.]*(?:\s*(?:and|,)\s*[0-9.]+)*)?[;,]\s*"
)
_CITE = re.compile(r",?\s*kernel\.md(?:\s+(?:section\s+|§)?[0-9][0-9.]*)?")


def plain_help(text: str | None) -> str | None:
    """Help text without reStructuredText markup or citations of files users do not have.

    The subcommands' descriptions are their modules' docstrings, written for Sphinx and for
    readers of the repository: ````x```` becomes x, ``:mod:`~a.b``` becomes b, ``*word*`` becomes
    word, and references to kernel.md (the project's notes, not installed) are dropped.
    """
    if not text:
        return text
    text = _CITE_ALONE.sub("", text)
    text = _CITE_LEAD.sub("", text)
    text = _CITE.sub("", text)
    text = _ROLE.sub(lambda m: m[2].rpartition(".")[2] if m[1] else m[2], text)
    text = _LITERAL.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)
