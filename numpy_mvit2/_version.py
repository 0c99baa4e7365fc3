"""The version of numpy_mvit2, in one place: the package (``numpy_mvit2.__version__``), the
command line (``numpy-mvit2 --version``) and the build (pyproject.toml reads it from here) import
it, and it imports nothing."""

__version__ = "0.1.0"
