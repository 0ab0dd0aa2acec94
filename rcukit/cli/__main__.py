"""``python -m rcukit.cli``: kept working for scripts written when the CLI was one module."""

import sys

from rcukit.cli import main

sys.exit(main())
