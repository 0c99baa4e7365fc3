"""Atheris harness for the config loaders: bytes -> ``config.json`` and ``preprocessor_config.json``.

Each input is written to both files and read back through ``MobileViTV2Config.from_json_file``
and ``MobileViTImageProcessor.from_pretrained``. A loader may refuse it only with ``ConfigError``;
a config it admits must then give its shapes (``stages``, ``expected_shapes`` for every head, a
parameter count equal to theirs and within ``MAX_PARAMETERS``), its summary, the image processor
derived from it, and the same config again from ``to_dict``; an admitted processor, the same
settings from ``to_dict``. Anything else is a bug.

    python fuzz/fuzz_config.py fuzz/corpus/config -max_total_time=600 -rss_limit_mb=1024

``TestOneInput`` imports without atheris (tests/test_fuzz_configs.py runs it over the corpus).
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import warnings
from pathlib import Path

import numpy  # noqa: F401 - imported before the instrumented block: only numpy_mvit2 is instrumented
import PIL.Image  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the numpy_mvit2 of this checkout

if __name__ == "__main__":
    import atheris

    instrumented = atheris.instrument_imports(include=["numpy_mvit2"])
else:
    instrumented = contextlib.nullcontext()
with instrumented:
    from numpy_mvit2 import (
        ConfigError,
        MobileViTImageProcessor,
        MobileViTV2Config,
        summarize,
    )
    from numpy_mvit2.config import MAX_PARAMETERS
    from numpy_mvit2.weights.shapes import HEADS, expected_shapes

_FOLDER = Path(tempfile.mkdtemp(prefix="fuzz_config_"))
CONFIG = _FOLDER / "config.json"
PREPROCESSOR = _FOLDER / "preprocessor_config.json"


def check_config(config: MobileViTV2Config) -> None:
    """What must hold for every admitted config."""
    assert len(config.stages) == 5
    for head in HEADS:
        shapes = expected_shapes(config, head)
        count = config.parameter_count(head)
        assert count == sum(math.prod(shape) for shape in shapes.values()), head
        assert count <= MAX_PARAMETERS, (head, count)
    try:
        summarize(config, head="segmentation")
    except ValueError as e:  # an image_size too small for the patches: the only refusal allowed
        assert "too small" in str(e), e
    MobileViTImageProcessor.for_model_config(config)
    assert MobileViTV2Config.from_dict(config.to_dict()) == config


def check_processor(processor: MobileViTImageProcessor) -> None:
    assert MobileViTImageProcessor.from_dict(processor.to_dict()).to_dict() == processor.to_dict()


def TestOneInput(data: bytes) -> None:
    CONFIG.write_bytes(data)
    PREPROCESSOR.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_labels against id2label warns, as transformers does
        try:
            config = MobileViTV2Config.from_json_file(CONFIG)
        except ConfigError:
            pass
        else:
            check_config(config)
        try:
            processor = MobileViTImageProcessor.from_pretrained(PREPROCESSOR)
        except ConfigError:
            pass
        else:
            check_processor(processor)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
