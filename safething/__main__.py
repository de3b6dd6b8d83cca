"""``python -m safething`` is the ``safething`` command."""

import sys

from safething.cli import main

sys.exit(main())
