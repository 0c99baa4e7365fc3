"""Source code a child process runs first to make torch, transformers and timm unimportable.

Prepended to a child's script by the tests that prove numpy_mvit2 works with no deep-learning
framework (tests/test_no_torch.py, tests/test_torch_files.py).
"""

import textwrap

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "timm", "tensorflow", "jax", "flax"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in ("torch", "transformers", "timm"):
            del sys.modules[name]
    """
)
