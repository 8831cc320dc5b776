"""``python -m peffnet ...`` (and ``torchrun -m peffnet ...``) runs the command line.

Python has imported the package, and with it torch and its OpenMP runtime, before this module runs: where
the command chooses how OpenMP threads wait (:func:`peffnet_command.choose_openmp_waiting`), the process
starts again with the choice in its environment (``os.execv``: the same process id, the same arguments), and
then chooses nothing (the variables are set).
"""

import os
import sys

from peffnet_command import choose_openmp_waiting

if choose_openmp_waiting():
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

from peffnet.cli import main  # noqa: E402

sys.exit(main())
