"""`python -m replearn ...` runs the `replearn` command (replearn.cli)."""

import sys

from replearn.cli import main

sys.exit(main())
