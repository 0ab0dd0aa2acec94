"""The ``rcukit`` command.

Subcommands register themselves in :data:`SUBCOMMANDS` from their scenario modules, so the
entry point stays small. Misuse exits with status 2 and a message naming what was wrong and
what is allowed, as argparse does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import rcukit
from rcukit.errors import RcukitError

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _subcommands() -> list[Register]:
    regs: list[Register] = []
    from rcukit.scenarios import demo_cli

    regs.append(demo_cli.register)
    for mod in ("compare", "rcuscale", "torture", "sweep"):
        try:
            module = __import__(f"rcukit.scenarios.{mod}_cli", fromlist=["register"])
        except ImportError:
            continue
        regs.append(module.register)
    return regs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcukit",
        description=(
            "Simulate the Linux kernel's kvfree_rcu() machinery on Trio and replay the "
            "__GFP_FAST_TRY debate; RCU for Trio applications."
        ),
    )
    parser.add_argument("--version", action="version", version=f"rcukit {rcukit.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _subcommands():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc: int = args.func(args)
    except RcukitError as exc:
        print(f"rcukit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rcukit {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
