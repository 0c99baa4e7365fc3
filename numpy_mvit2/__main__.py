"""The ``numpy-mvit2`` command (the console script's entry point) and ``python -m numpy_mvit2``.

This module is the first of ours to run, and it is small on purpose: it takes SIGINT and SIGTERM
before anything heavy is imported. Importing NumPy, Pillow and the models takes a few tenths of a
second, and a Ctrl-C in that time used to show a KeyboardInterrupt traceback from inside
``import numpy``. Until ``numpy_mvit2.cli.main`` installs its own handlers (which unwind through the
clean-up of temporary files), and again once it has put them back, a signal ends the process at
once with ``numpy-mvit2: interrupted`` (or ``terminated``) and status 128 + the signal's number:
there is nothing to clean up then (``numpy_mvit2._signals``). The package's ``__init__`` imports
nothing heavy either (PEP 562), so that ``python -m numpy_mvit2`` gets here just as fast.
"""

import signal
import sys

from ._signals import _exit_now, take_signals  # noqa: F401 - take_signals: also importable from here, as before


def main() -> int:
    try:
        take_signals()
    except KeyboardInterrupt:  # a Ctrl-C in the instant before the handler was in place
        _exit_now(signal.SIGINT, None)
    from .cli import Interrupted, remove_temporary_files
    from .cli import main as cli_main

    try:
        return cli_main()
    except (KeyboardInterrupt, Interrupted) as e:  # one that landed in cli.main's own except or finally clauses
        remove_temporary_files()
        _exit_now(getattr(e, "signum", signal.SIGINT), None)


if __name__ == "__main__":
    sys.exit(main())
