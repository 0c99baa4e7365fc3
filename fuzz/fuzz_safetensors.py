"""Coverage-guided fuzzing of the safetensors reader (``read_safetensors``) with atheris.

Each input is written to a file and read; the reader must return ``dict[str, ndarray]`` or raise
``CheckpointError``. Any other exception is a finding (atheris stops and writes the input as
``crash-*``); so are a run past ``-timeout`` seconds and memory past ``-rss_limit_mb``. See
fuzz/README.md for the command and for turning a finding into a regression test.

``TestOneInput`` is importable without atheris (tests/test_fuzz_harnesses.py runs it over the seed
corpus, so the harness cannot rot).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's numpy_mvit2

if __name__ == "__main__":
    import atheris

    # Instrument our reader and the JSON parser it drives, for coverage feedback.
    with atheris.instrument_imports(include=["numpy_mvit2", "json"]):
        import numpy as np

        from numpy_mvit2.weights import CheckpointError, read_safetensors
else:
    import numpy as np

    from numpy_mvit2.weights import CheckpointError, read_safetensors

# One file, rewritten for each input: the readers take paths. /dev/shm when there is one (memory,
# not disk).
_FOLDER = tempfile.mkdtemp(prefix="fuzz_safetensors_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
_PATH = Path(_FOLDER) / "input.safetensors"


def TestOneInput(data: bytes) -> None:
    _PATH.write_bytes(data)
    try:
        arrays = read_safetensors(_PATH)
    except CheckpointError as e:
        if str(_PATH) not in str(e):
            raise AssertionError(f"the error does not name the file: {e}") from None
        return
    if not (isinstance(arrays, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items())):
        raise AssertionError(f"not a dict of str -> ndarray: {type(arrays)}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
