"""A package's public names, imported from its modules when first used (PEP 562).

The package's ``__init__`` then imports none of its modules, so no import inside the package
leads back to it (``tests/test_import_graph.py``), and importing the package costs nothing until a
name is used. This module imports only the standard library's ``importlib`` and ``sys``.
"""

import importlib
import sys


def lazy_names(package: str, exports: dict[str, str], submodules=()):
    """``(__getattr__, __dir__)`` for the package named ``package``: ``exports`` maps each public name
    to the module of the package that defines it (looked up once, then kept in the package's
    namespace); ``submodules`` are reachable as attributes without an import of their own."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            setattr(sys.modules[package], name, value)
            return value
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports) | set(submodules))

    return __getattr__, __dir__
