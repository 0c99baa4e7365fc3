"""SIGINT and SIGTERM ending the process at once, before anything heavy is imported.

``numpy_mvit2.__main__`` (the console script's entry point and ``python -m numpy_mvit2``) takes
them first thing, and so does the package's ``__init__`` when an older console script runs it (see
there). Until ``numpy_mvit2.cli.main`` installs its own handlers (which unwind through the clean-up
of temporary files), and again once it has put them back, a signal ends the process with
``numpy-mvit2: interrupted`` (or ``terminated``) and status 128 + the signal's number: there is
nothing to clean up then. This module imports nothing but the standard library's ``os`` and
``signal``, and nothing of the package, so that both can import it without a cycle.
"""

import os
import signal

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
