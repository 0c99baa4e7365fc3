"""The team of processes for single images, opt-in: ``numpy_mvit2.team.start()``.

This name is the public one; the code is ``numpy_mvit2.fast.team`` (a layer of the fast path,
above its blocks and below the function that chooses between threads and the team), and this
module *is* that module: ``numpy_mvit2.team.PROCESSES = True`` sets the switch the fast path
reads. See its docstring for what the team does and what it costs.
"""

import sys

import numpy_mvit2.fast.team as _implementation

sys.modules[__name__] = _implementation
