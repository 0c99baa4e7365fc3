"""The ``numpy-mvit2`` command (the console script's entry point) and ``python -m numpy_mvit2``.

This module is the first of ours to run, and it is small on purpose: it takes SIGINT and SIGTERM
before anything heavy is imported. Importing NumPy, Pillow and the models takes a few tenths of a
second, and a Ctrl-C in that time used to show a KeyboardInterrupt traceback from inside
``import numpy``. Until ``numpy_mvit2.cli.main`` installs its own handlers (which unwind through the
clean-up of temporary files), and again once it has put them back, a signal ends the process at
once with ``numpy-mvit2: interrupted`` (or ``terminated``) and status 128 + the signal's number:
there is nothing to clean up then. The package's ``__init__`` imports nothing heavy either (PEP 562),
so that ``python -m numpy_mvit2`` gets here just as fast.
"""

import os
import signal
import sys

_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def _exit_now(signum, frame):
    try:
        os.write(2, f"numpy-mvit2: {_WORDS.get(signum, 'interrupted')}\n".encode())
    except OSError:  # stderr closed: the status still says it
        pass
    os._exit(128 + signum)  # 130 for SIGINT, 143 for SIGTERM, as the shell reports a signalled process


def take_signals() -> None:
    """SIGINT and SIGTERM end the process at once, as above (unless whoever started us ignores them)."""
    for signum in _WORDS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored by whoever started us (nohup, `&`): left so
            signal.signal(signum, _exit_now)


def main() -> int:
    take_signals()
    from .cli import Interrupted, remove_temporary_files
    from .cli import main as cli_main

    try:
        return cli_main()
    except (KeyboardInterrupt, Interrupted) as e:  # one that landed in cli.main's own except or finally clauses
        remove_temporary_files()
        _exit_now(getattr(e, "signum", signal.SIGINT), None)


if __name__ == "__main__":
    sys.exit(main())
