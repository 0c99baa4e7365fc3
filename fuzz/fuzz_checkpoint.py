"""Coverage-guided fuzzing of the PyTorch checkpoint reader (``read_torch_checkpoint``) with atheris.

Each input is a checkpoint file, or, when it does not start with ``PK`` (a zip), a pickle that the
harness puts into a torch-style zip as its ``data.pkl``, next to small storage records
``data/0`` ... ``data/3``: byte-level mutations of a whole zip mostly meet its CRC, and this way
they also reach the pickle interpreter and the storage checks. The file is read; the reader must return ``dict[str, ndarray]`` or raise
``CheckpointError``. Any other exception is a finding (atheris stops and writes the input as
``crash-*``); so are a run past ``-timeout`` seconds and memory past ``-rss_limit_mb``. See
fuzz/README.md for the command and for turning a finding into a regression test.

``TestOneInput`` is importable without atheris (tests/test_fuzz_harnesses.py runs it over the seed
corpus, so the harness cannot rot).
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's numpy_mvit2

if __name__ == "__main__":
    import atheris

    # Instrument our reader and the standard-library parsers it drives, for coverage feedback.
    with atheris.instrument_imports(include=["numpy_mvit2", "zipfile", "pickletools"]):
        import numpy as np

        from numpy_mvit2.weights import CheckpointError, read_torch_checkpoint
else:
    import numpy as np

    from numpy_mvit2.weights import CheckpointError, read_torch_checkpoint

# One file, rewritten for each input: the readers take paths. /dev/shm when there is one (memory,
# not disk).
_FOLDER = tempfile.mkdtemp(prefix="fuzz_checkpoint_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)
_PATH = Path(_FOLDER) / "input.pt"


# Storage records for wrapped pickles: 64 bytes each, so tensors of any dtype fit a few elements.
_RECORDS = {f"data/{i}": bytes(range(64 * i, 64 * i + 64)) for i in range(4)}


def as_checkpoint(data: bytes) -> bytes:
    """The file an input stands for: itself if it is a zip, else a zip around it as data.pkl."""
    if data.startswith(b"PK"):
        return data
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        for name, record in _RECORDS.items():
            z.writestr(f"archive/{name}", record)
    return out.getvalue()


def TestOneInput(data: bytes) -> None:
    _PATH.write_bytes(as_checkpoint(data))
    try:
        arrays = read_torch_checkpoint(_PATH)
    except CheckpointError as e:
        if str(_PATH) not in str(e):
            raise AssertionError(f"the error does not name the file: {e}") from None
        return
    if not (isinstance(arrays, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items())):
        raise AssertionError(f"not a dict of str -> ndarray: {type(arrays)}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
