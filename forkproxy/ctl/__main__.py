"""``python -m forkproxy.ctl``: the same as ``forkproxyctl``."""

import sys

from forkproxy.ctl import main

sys.exit(main())
