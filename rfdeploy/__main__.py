"""``python -m rfdeploy``: the CLI without the console script (e.g. from a source tree on PYTHONPATH)."""

import sys

from rfdeploy.cli import main

sys.exit(main())
