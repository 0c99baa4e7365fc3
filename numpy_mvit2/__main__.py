"""``python -m numpy_mvit2``: the ``numpy-mvit2`` command line (see ``numpy_mvit2.cli``)."""

import sys

from .cli import main

sys.exit(main())
