"""Call sites for debug reports: the first caller outside rcukit, as ``file:line in function``.

KASAN and SLUB debugging name the allocation and free stacks of an object in every report,
because "double free" without "of what, freed where" sends the reader hunting. Python frames are
cheap to walk, so the debug layers record one frame (the user's) instead of a whole stack.
"""

from __future__ import annotations

import os
import sys
from types import FrameType

__all__ = ["call_site"]

# rcukit's own directory: frames inside it are the library, not the caller.
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# contextlib frames sit between a `with` statement and our __enter__ for generator-based CMs.
_SKIP_DIRS = (_PKG_DIR, os.path.dirname(os.__file__) + os.sep + "contextlib.py")


def call_site() -> str:
    """Where the nearest non-rcukit frame on the stack is; ``<rcukit>`` when there is none.

    Work done by rcukit's own tasks (a bulk release after a grace period) has no user frame;
    the reports then fall back on the site recorded when the work was queued.
    """
    f: FrameType | None = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_SKIP_DIRS):
        f = f.f_back
    if f is None:
        return "<rcukit>"
    path = f.f_code.co_filename
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        rel = path
    if not rel.startswith(".."):
        path = rel
    return f"{path}:{f.f_lineno} in {f.f_code.co_name}"
