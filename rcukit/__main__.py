"""``python -m rcukit``: the ``rcukit`` command, for when the console script is not on PATH."""

import sys

from rcukit.cli import main

sys.exit(main())
