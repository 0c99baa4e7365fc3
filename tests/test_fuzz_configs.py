"""Property-based fuzzing of the config loaders (hypothesis), and the atheris harness's corpus.

Random JSON objects built from the real field names with random values (right and wrong types,
edges of the ranges, infinities and NaN written as JSON's extensions), random keyword arguments,
and byte-mutated real config files go through ``MobileViTV2Config.from_json_file``,
``MobileViTV2Config(**kwargs)`` and ``MobileViTImageProcessor.from_pretrained``. Each must give a
config or a ``ConfigError``, never another exception; every admitted config must give its shapes,
a parameter count within ``MAX_PARAMETERS``, and itself again from ``to_dict``
(``fuzz/fuzz_config.py`` holds those checks, shared with the atheris harness).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
from conftest import fuzz_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numpy_mvit2 import ConfigError, MobileViTImageProcessor, MobileViTV2Config
from numpy_mvit2.config import FIELD_CHECKS, MAX_LABELS
from numpy_mvit2.processing import OPTIONS

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import fuzz_config

CORPUS = sorted((FUZZ / "corpus" / "config").iterdir())

FUZZ_SETTINGS = settings(max_examples=fuzz_examples(200), deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- values --------------------------------------------------------------------------------------
# Most fields of an example get a plausible value (in range, or just past a limit), and a few get
# junk of any JSON type: so that many examples are admitted and reach the shape checks, and every
# refusal is exercised field by field.

scalars = (st.none() | st.booleans() | st.integers(-3, 70_000) | st.integers(-(10**30), 10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
junk = scalars | st.lists(scalars, max_size=4) | st.dictionaries(st.text(max_size=4), scalars, max_size=3)
small_ints = st.integers(-1, 70)
triples = st.lists(st.integers(0, 70) | st.integers(1, 5000), min_size=2, max_size=4) | st.lists(st.integers(1, 4), min_size=3, max_size=3)
class_keys = st.integers(-1, 40).map(str) | st.integers(MAX_LABELS - 1, MAX_LABELS + 1).map(str) | st.text(max_size=3)
id2labels = st.dictionaries(class_keys, st.text(max_size=6) | scalars, max_size=8)
label2ids = st.dictionaries(st.text(max_size=6), st.integers(-1, 40) | st.integers(-1, 40).map(str) | scalars, max_size=8)

PLAUSIBLE = {
    "num_channels": st.integers(0, 65), "image_size": st.integers(0, 4100), "patch_size": st.integers(0, 65),
    "expand_ratio": st.floats(0, 65), "hidden_act": st.sampled_from(["swish", "relu", "gelu", "nope", "SWISH"]),
    "conv_kernel_size": st.integers(0, 33), "output_stride": st.sampled_from([4, 8, 16, 32, 64, 16.0]),
    "classifier_dropout_prob": st.floats(-0.1, 1.1), "initializer_range": st.floats(-0.1, 1),
    "layer_norm_eps": st.floats(-1e-6, 1e-3), "aspp_out_channels": st.integers(0, 4100),
    "atrous_rates": triples, "aspp_dropout_prob": st.floats(-0.1, 1.1),
    "semantic_loss_ignore_index": st.integers(-(2**32), 2**32), "n_attn_blocks": triples,
    "base_attn_unit_dims": triples, "width_multiplier": st.floats(0, 8.5) | st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0]),
    "ffn_multiplier": st.integers(0, 65), "attn_dropout": st.floats(-0.1, 1.1), "ffn_dropout": st.floats(-0.1, 1.1),
    "problem_type": st.sampled_from([None, "regression", "single_label_classification", "multi_label_classification", "x"]),
    "output_hidden_states": st.booleans(), "output_attentions": st.booleans(), "return_dict": st.booleans(),
    "patch_remainder": st.sampled_from([None, "zero", "resize", "crop"]),
    "behavior": st.sampled_from([None, "transformers", "timm", "ml-cvnets", "cvnets", 3]),
    "dilate_local_conv": st.sampled_from([None, True, False, 1, "no"]),
    "num_labels": st.integers(-1, 40) | st.integers(MAX_LABELS - 1, MAX_LABELS + 1), "id2label": id2labels,
    "label2id": label2ids, "model_type": st.sampled_from([None, "mobilevitv2", "mobilevit"]),
    "architectures": st.sampled_from([None, ["MobileViTV2ForImageClassification"], ["MobileViTV2Model"], "X"]),
    # unknown keys, named like the class's own attributes or not
    "validate": junk, "__class__": junk, "__dict__": junk, "extra": junk, "stages": junk, "self": junk,
    "to_dict": junk, "mlp_ratio": junk,
}
assert set(FIELD_CHECKS) <= set(PLAUSIBLE)


def mixed(plausible: dict):
    """A dict of some of the keys with plausible values, and up to two keys with junk."""
    return st.builds(lambda good, bad: {**good, **bad}, st.fixed_dictionaries({}, optional=plausible),
                     st.dictionaries(st.sampled_from(sorted(plausible)), junk, max_size=2))


config_dicts = mixed(PLAUSIBLE)

sides = st.integers(-1, 4100)
PROCESSOR_VALUES = {
    "size": sides | st.fixed_dictionaries({"shortest_edge": sides}) | st.fixed_dictionaries({"height": sides, "width": sides})
    | st.fixed_dictionaries({"shortest_edge": sides, "longest_edge": sides}) | st.lists(sides, max_size=3),
    "crop_size": sides | st.fixed_dictionaries({"height": sides, "width": sides}) | st.lists(sides, max_size=3),
    "resample": st.integers(-1, 7) | st.sampled_from(["bilinear", "bicubic", "nope", "3"]),
    "rescale_factor": st.floats(allow_nan=True, allow_infinity=True),
    "reduce_labels": st.booleans(), "image_mean": junk, "self": junk, "extra": junk,
    **{name: st.booleans() | st.none() for name in OPTIONS if name.startswith("do_")},
}
processor_dicts = mixed(PROCESSOR_VALUES)


def write(path: Path, data) -> None:
    # allow_nan: Infinity and NaN go into the file as tokens, which the reader must refuse
    path.write_text(json.dumps(data, allow_nan=True), encoding="utf-8")


def load_config(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_labels against id2label warns, as transformers does
        try:
            return MobileViTV2Config.from_json_file(path)
        except ConfigError as e:
            assert str(path) in str(e)
            return None


# -- properties ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_configs")


@FUZZ_SETTINGS
@given(data=config_dicts)
def test_config_json_gives_a_config_or_config_error(data, folder):
    path = folder / "config.json"
    write(path, data)
    config = load_config(path)
    if config is not None:
        fuzz_config.check_config(config)


@FUZZ_SETTINGS
@given(data=config_dicts)
def test_keyword_arguments_give_a_config_or_config_error(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            config = MobileViTV2Config(**data)
        except ConfigError:
            return
    fuzz_config.check_config(config)


def test_self_as_a_keyword_is_an_unknown_key():
    assert MobileViTV2Config(self=1).extra == {"self": 1}


@FUZZ_SETTINGS
@given(data=processor_dicts)
def test_preprocessor_config_gives_a_processor_or_config_error(data, folder):
    path = folder / "preprocessor_config.json"
    write(path, data)
    try:
        processor = MobileViTImageProcessor.from_pretrained(path)
    except ConfigError as e:
        assert str(path) in str(e)
        return
    fuzz_config.check_processor(processor)


SEEDS = [p.read_bytes() for p in CORPUS if not p.name.startswith("hostile_")]


@FUZZ_SETTINGS
@given(seed=st.sampled_from(SEEDS), edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255),
                                                             st.sampled_from(["set", "insert", "delete"])), max_size=6))
def test_mutated_real_config_files(seed, edits):
    data = bytearray(seed)
    for position, byte, how in edits:
        position %= len(data) + 1
        if how == "insert":
            data.insert(position, byte)
        elif position < len(data):
            if how == "set":
                data[position] = byte
            else:
                del data[position]
    fuzz_config.TestOneInput(bytes(data))


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_atheris_corpus(path):
    """Every seed and regression file of fuzz/corpus/config through the atheris harness."""
    fuzz_config.TestOneInput(path.read_bytes())


def test_real_seeds_are_admitted():
    for path in CORPUS:
        if path.name.startswith(("transformers", "timm")):
            assert load_config(path) is not None, path.name
        if path.name.startswith(("apple_", "processor_", "transformers5_preprocessor")):
            MobileViTImageProcessor.from_pretrained(path)
