import os
import sys

from mamlkit.cli import main
from mamlkit.engine.distributed import launched_by_torchrun

code = main()
if launched_by_torchrun():
    # torch 2.13 keeps the gloo process group (and its threads) alive past destroy_process_group;
    # tearing it down during interpreter finalization sporadically aborts the worker ("terminate
    # called without an active exception", about 1 run in 10 here) and torchrun then fails the run.
    # Every output is written and closed by now, so a torchrun worker skips the finalization.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
