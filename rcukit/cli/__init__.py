"""The ``rcukit`` command.

One module per subcommand, each with a ``register(subparsers)``; options several subcommands
share live in :mod:`rcukit.cli.options`. The subcommands are imported here, at the top: a
subcommand that cannot be imported is a broken install, and it fails loudly with its own
traceback rather than vanishing from ``--help``. Misuse exits with status 2 and a message
naming what was wrong and what is allowed, as argparse does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import rcukit
from rcukit.cli import compare, locks, rcuscale, sweep, torture
from rcukit.errors import KernelPanic, RcukitError

__all__ = ["build_parser", "main"]

#: In the order ``rcukit --help`` lists them.
SUBCOMMANDS = (locks, compare, rcuscale, torture, sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcukit",
        description=(
            "Simulate the Linux kernel's kvfree_rcu() machinery on Trio and replay the "
            "__GFP_FAST_TRY debate; RCU for asyncio and Trio applications."
        ),
    )
    parser.add_argument("--version", action="version", version=f"rcukit {rcukit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(sub)
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
    return rc
