"""What the command-line tests share: running ``rcukit`` in-process and capturing its output.

Importable from every test folder (``conftest.py`` puts this directory on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import io

from rcukit.cli import main


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``rcukit ARGV`` in-process; (exit status, stdout, stderr). argparse exits are caught."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()
