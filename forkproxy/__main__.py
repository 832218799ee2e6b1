"""``python -m forkproxy`` runs the forkproxy command line."""

import sys

from forkproxy.cli import main

sys.exit(main())
