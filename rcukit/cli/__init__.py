"""The ``rcukit`` command.

One module per subcommand, each with a ``register(subparsers)``; options several subcommands
share live in :mod:`rcukit.cli.options`. The subcommands are imported here, at the top: a
subcommand that cannot be imported is a broken install, and it fails loudly with its own
traceback rather than vanishing from ``--help``. Misuse exits with status 2 and a message
naming what was wrong and what is allowed, as argparse does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Sequence

from rich_argparse import RawDescriptionRichHelpFormatter, RichHelpFormatter

import rcukit
from rcukit.cli import compare, locks, rcuscale, sweep, torture
from rcukit.cli.options import plain_help
from rcukit.errors import KernelPanic, RcukitError

__all__ = ["build_parser", "main"]

#: In the order ``rcukit --help`` lists them.
SUBCOMMANDS = (locks, compare, rcuscale, torture, sweep)


class _Help(RichHelpFormatter):
    """rich-argparse's help: coloured on a terminal, plain text in a pipe. Help strings are
    text, not rich markup: ``[compare]`` in an option's help is a TOML table, not a style."""

    help_markup = False
    text_markup = False


class _RawHelp(RawDescriptionRichHelpFormatter):
    """The same, keeping the description's and epilog's line breaks (``sweep``'s examples)."""

    help_markup = False
    text_markup = False


def _paragraphs(text: str) -> str:
    """Each paragraph filled to the terminal (argparse would run them all together)."""
    width = max(40, min(shutil.get_terminal_size().columns, 100) - 2)
    return "\n\n".join(
        textwrap.fill(" ".join(para.split()), width) for para in text.split("\n\n") if para.strip()
    )


def _plain(parser: argparse.ArgumentParser) -> None:
    """One parser's help in the house style: rich-argparse, no RST markup, no kernel.md."""
    given = parser.formatter_class
    raw = isinstance(given, type) and issubclass(given, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = _RawHelp
    description = plain_help(parser.description)
    parser.description = description if raw or not description else _paragraphs(description)
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain_help(action.help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcukit",
        formatter_class=_Help,
        description=(
            "Simulate the Linux kernel's kvfree_rcu() machinery on Trio and replay the "
            "__GFP_FAST_TRY debate; RCU for asyncio and Trio applications."
        ),
    )
    parser.add_argument("--version", action="version", version=f"rcukit {rcukit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
    for subparser in sub.choices.values():
        _plain(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc: int = args.func(args)
    except KernelPanic as exc:
        # kernel.panic_on_warn stopped a run: a failed run (1), not a misuse (2).
        print(f"rcukit {args.command}: {exc}", file=sys.stderr)
        return 1
    except RcukitError as exc:
        print(f"rcukit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rcukit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BaseExceptionGroup as group:
        # Ctrl-C in a task of a nursery (app-mode torture) arrives wrapped in groups.
        interrupt, rest = group.split(KeyboardInterrupt)
        if interrupt is None or rest is not None:
            raise
        print(f"rcukit {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc
