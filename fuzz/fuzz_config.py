"""Atheris harness for the config loaders: bytes -> ``config.json`` and ``preprocessor_config.json``.

Each input is written to both files and read back through ``MobileViTV2Config.from_json_file``
and ``MobileViTImageProcessor.from_pretrained``, and also decoded into keyword arguments for
``MobileViTV2Config(**kwargs)`` and ``MobileViTImageProcessor.from_dict`` (see ``keyword_arguments``). A loader may refuse it only with ``ConfigError``;
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
    from numpy_mvit2.config import FIELD_CHECKS, MAX_PARAMETERS
    from numpy_mvit2.processing import OPTIONS
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
        if head != "segmentation":  # (its classifier may have 0 outputs, for 0 labels)
            empty = [name for name, shape in shapes.items() if min(shape) < 1]
            assert not empty, (head, empty[:3])  # every layer has inputs and outputs
    try:
        summarize(config, head="segmentation")
    except ValueError as e:  # an image_size too small for the patches: the only refusal allowed
        assert "too small" in str(e), e
    MobileViTImageProcessor.for_model_config(config)
    assert MobileViTV2Config.from_dict(config.to_dict()) == config


def check_processor(processor: MobileViTImageProcessor) -> None:
    assert MobileViTImageProcessor.from_dict(processor.to_dict()).to_dict() == processor.to_dict()


# -- the same bytes read a second way: as field names and values ----------------------------------
# Random bytes rarely make JSON that names a field, so each input is also decoded, three bytes at a
# time, into keyword arguments: a name (the fields, the processor's settings, and keys named like
# attributes) and a value of a kind the byte picks (small and huge numbers, each limit and its
# neighbours, wrong types). The fuzzer then searches the values themselves.

NAMES = sorted(set(FIELD_CHECKS) | set(OPTIONS) | {"num_labels", "id2label", "label2id", "architectures", "validate",
                                                   "extra", "__class__", "self", "stages", "reduce_labels"})
EDGES = [0, 1, 2, 3, 8, 16, 31, 32, 33, 63, 64, 65, 512, 4064, 4065, 4096, 4097, 32767, 32768, 32769, 10**9, 10**400]


def value_from(kind: int, byte: int):
    """A value of kind ``kind % 12`` drawn with ``byte``."""
    kind %= 12
    if kind == 0:
        return byte - 8  # small ints, a few negative
    if kind == 1:
        return EDGES[byte % len(EDGES)] * (-1 if byte >= 128 else 1)
    if kind == 2:
        return byte / 32  # floats 0 .. 8
    if kind == 3:
        return [None, True, False, float("inf"), float("nan"), -0.0, 1e-300, 2.0, "", "swish", "3", []][byte % 12]
    if kind == 4:
        return [byte % 7, 1 + byte % 3, (byte * 7) % 70]  # triples
    if kind == 5:
        return {"shortest_edge": EDGES[byte % len(EDGES)]}
    if kind == 6:
        return {"height": 1 + byte, "width": EDGES[byte % len(EDGES)]}
    if kind == 7:
        return {str(i): f"class {i}" for i in range(byte % 12)}  # id2label
    if kind == 8:
        return {f"class {i}": i for i in range(byte % 12)}  # label2id
    if kind == 9:
        return [str(byte)] if byte % 2 else {"a": [byte]}
    if kind == 10:
        return ["swish", "relu", "gelu", "zero", "resize", "regression", "single_label_classification", "bilinear"][byte % 8]
    return float(byte) if byte % 2 else byte % 2 == 0


def keyword_arguments(data: bytes) -> dict:
    return {NAMES[data[i] % len(NAMES)]: value_from(data[i + 1], data[i + 2]) for i in range(0, len(data) - 2, 3)}


def TestOneInput(data: bytes) -> None:
    CONFIG.write_bytes(data)
    PREPROCESSOR.write_bytes(data)
    kwargs = keyword_arguments(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_labels against id2label warns, as transformers does
        for load in (lambda: MobileViTV2Config.from_json_file(CONFIG), lambda: MobileViTV2Config(**kwargs)):
            try:
                config = load()
            except ConfigError:
                continue
            check_config(config)
        for load in (lambda: MobileViTImageProcessor.from_pretrained(PREPROCESSOR),
                     lambda: MobileViTImageProcessor.from_dict(kwargs)):
            try:
                processor = load()
            except ConfigError:
                continue
            check_processor(processor)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
