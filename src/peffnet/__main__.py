"""``python -m peffnet ...`` (and ``torchrun -m peffnet ...``) runs the command line."""

import sys

from peffnet.cli import main

sys.exit(main())
