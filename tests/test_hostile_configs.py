"""Hostile configs (issue 11): ``config.json``, ``preprocessor_config.json`` and shard indexes
made to crash us or to make us allocate gigabytes from a few bytes.

Each bad value must raise the library's own error (``ConfigError``, a ValueError; a missing file
``CheckpointNotFoundError``, an OSError) whose message names the field, the value and, when read
from a file, the file; nothing may be allocated from it first. The cases the issue found are also
run in a child process capped at 1 GiB and 10 CPU seconds (``tests/bounded.py``), many cases to a
child, each reported as one JSON line.
"""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from bounded import run_bounded, run_python_bounded

from numpy_mvit2 import (
    CheckpointError,
    ConfigError,
    MobileViTImageProcessor,
    MobileViTV2Config,
)
from numpy_mvit2.config import MAX_IMAGE_SIZE, MAX_LABELS, MAX_PARAMETERS, show
from numpy_mvit2.errors import CheckpointNotFoundError
from numpy_mvit2.processing import MAX_IMAGE_SIDE
from numpy_mvit2.safeio import MAX_JSON_DEPTH, MAX_SETTINGS_BYTES, MAX_SETTINGS_VALUES, parse_json, read_json
from numpy_mvit2.weights import expected_shapes

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Field by field, as keyword arguments
# --------------------------------------------------------------------------------------------

INF, NAN = float("inf"), float("nan")
NOT_AN_INT = ["3", None, [3], {"a": 3}, True, 3.0, 2.5, INF, NAN]
NOT_A_NUMBER = ["1.0", None, [1.0], {"a": 1}, True, INF, -INF, NAN]
NOT_THREE = [None, "2,4,3", 5, [2, 4], [2, 4, 3, 1], [2, 4, "3"], [2, 4, 3.0], [2, 4, None], [2, 4, True],
             [2, 4, 0], [2, 4, -1], {"0": 2}]

BAD_VALUES = {
    "num_channels": NOT_AN_INT + [0, -1, 10**9],
    "image_size": NOT_AN_INT + [0, -256, 10**9, MAX_IMAGE_SIZE + 1, [256, 256]],
    "patch_size": NOT_AN_INT + [0, -2, 10**6, [2, 2]],
    "expand_ratio": NOT_A_NUMBER + [0, -2.0, 1e300, 10**400],
    "hidden_act": [None, 1, ["swish"], {"swish": 1}, "nope", "SWISH", ""],
    "conv_kernel_size": NOT_AN_INT + [0, 2, 4, -3, 10**6 + 1],
    "output_stride": NOT_AN_INT + [0, 4, 64, -32, 16.0],
    "classifier_dropout_prob": NOT_A_NUMBER + [-0.1, 1.5, 1e9],
    "initializer_range": NOT_A_NUMBER + [-0.02],
    "layer_norm_eps": NOT_A_NUMBER + [0, -1e-5],
    "aspp_out_channels": NOT_AN_INT + [0, -512, 10**7],
    "atrous_rates": NOT_THREE + [[6, 12, 10**6]],
    "aspp_dropout_prob": NOT_A_NUMBER + [-1, 2],
    "semantic_loss_ignore_index": NOT_AN_INT + [10**100, -(10**100)],
    "n_attn_blocks": NOT_THREE + [[10**6, 1, 1], [1, 1, 65]],
    "base_attn_unit_dims": NOT_THREE + [[128, 192, 10**6]],
    "width_multiplier": NOT_A_NUMBER + [0, -0.5, 1e300, 10**400, 9],
    "ffn_multiplier": NOT_AN_INT + [0, -2, 10**6],
    "attn_dropout": NOT_A_NUMBER + [-0.5, 1.01],
    "ffn_dropout": NOT_A_NUMBER + [-0.5, 1.01],
    "problem_type": [1, ["regression"], "classification", ""],
    "output_hidden_states": [None, 0, 1, "true", [True]],
    "output_attentions": [None, 0, 1, "false"],
    "return_dict": [None, 0, "yes"],
    "patch_remainder": [0, "crop", ["zero"]],
    "behavior": [0, "cvnets", "Timm", ["timm"], {"a": 1}],
    "dilate_local_conv": [0, 1, "true", [True]],
    "num_labels": ["3", [3], {"a": 1}, True, 2.0, 2.5, INF, NAN, -1, 10**9, MAX_LABELS + 1],
    "id2label": ["cat", 3, True, [1, 2], ["cat", "dog"], {"x": "cat"}, {"-1": "cat"}, {"0": 1}, {"0": None},
                 {"0": ["cat"]}, {"1.5": "cat"}, {str(MAX_LABELS): "cat"}, {"0": "a", "00": "b"}, {None: "a"},
                 {0.0: "a"}, {True: "a"}],
    "label2id": ["cat", 3, [1, 2], ["cat"], {"cat": "x"}, {"cat": None}, {"cat": -1}, {"cat": 1.5},
                 {1: 0}, {"cat": [0]}],
    "architectures": ["MobileViTV2ForImageClassification", 3, [1], {"a": 1}, [None]],
}
BAD_CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]


def case_id(case) -> str:
    name, value = case
    return f"{name}={value!r:.30}"


def assert_names(error: BaseException, *words: str) -> None:
    message = str(error)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("case", BAD_CASES, ids=[case_id(c) for c in BAD_CASES])
def test_bad_field_value_raises_config_error_naming_it(case):
    name, value = case
    with pytest.raises(ConfigError) as info:
        MobileViTV2Config(**{name: value})
    assert type(info.value) is ConfigError
    assert info.value.field == name
    if name in ("id2label", "label2id") and isinstance(value, dict):  # the bad entry is named
        assert_names(info.value, name, *(["twice"] if value == {"0": "a", "00": "b"} else ["entry", "allowed"]))
    else:
        assert_names(info.value, f"{name}={show(value)}", "allowed")


def in_json(value) -> bool:
    """Whether JSON can hold ``value`` as it is (no infinities or NaN, string keys): the cases
    written into files; the others are for keyword arguments only (JSON's own refusal of Infinity
    and NaN is tested in test_json_constants_are_refused)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except ValueError:
        return False


JSON_CASES = [case for case in BAD_CASES if in_json(case[1])]


@pytest.mark.parametrize("case", JSON_CASES, ids=[case_id(c) for c in JSON_CASES])
def test_bad_field_value_in_config_json_names_file_and_field(case, tmp_path):
    name, value = case
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "mobilevitv2", name: value}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MobileViTV2Config.from_json_file(path)
    assert info.value.field == name
    assert_names(info.value, str(path), name)


def test_overrides_are_checked_as_fields(tmp_path):
    MobileViTV2Config().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="num_labels=1000000000"):
        MobileViTV2Config.from_pretrained(tmp_path, num_labels=10**9)
    with pytest.raises(ConfigError, match="width_multiplier=inf"):
        MobileViTV2Config.from_pretrained(tmp_path, width_multiplier=INF)
    with pytest.raises(ConfigError, match="image_size"):
        MobileViTV2Config.from_dict({}, image_size="256")


def test_published_configs_stay_admitted():
    """Every published MobileViTV2, and the largest label sets there are, fit the limits."""
    for width in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0):
        for labels in (1000, 21841):
            config = MobileViTV2Config(width_multiplier=width, num_labels=labels)
            assert config.parameter_count("classification") <= MAX_PARAMETERS
        MobileViTV2Config(width_multiplier=width, num_labels=150, image_size=512, output_stride=8)
        MobileViTV2Config(width_multiplier=width, num_labels=21, image_size=512, output_stride=16)
    assert MobileViTV2Config(width_multiplier=2.0, num_labels=21841).parameter_count("classification") == 39_842_458


def test_model_too_large_as_a_whole_names_the_fields():
    with pytest.raises(ConfigError) as info:
        MobileViTV2Config(width_multiplier=8, num_labels=MAX_LABELS)
    assert info.value.field == "parameter_count"
    assert_names(info.value, f"{MAX_PARAMETERS:,}", "width_multiplier=8", f"num_labels={MAX_LABELS}", "aspp_out_channels")
    with pytest.raises(ConfigError, match="segmentation model"):
        MobileViTV2Config(aspp_out_channels=4096, width_multiplier=2.0)


def test_parameter_count_matches_expected_shapes():
    for kwargs in ({}, {"width_multiplier": 0.75, "num_labels": 7, "expand_ratio": 2.7, "ffn_multiplier": 3},
                   {"num_labels": 0, "conv_kernel_size": 5, "num_channels": 1, "n_attn_blocks": [1, 3, 2]}):
        config = MobileViTV2Config(**kwargs)
        for head in ("base", "classification", "segmentation"):
            assert config.parameter_count(head) == sum(int(np.prod(s)) for s in expected_shapes(config, head).values())


def test_feed_forward_of_width_zero_is_refused():
    """ffn_multiplier 1 over an attention width of 8 rounds the FFN down to 0 channels: such a layer
    can be neither initialised nor run."""
    with pytest.raises(ConfigError, match="feed-forward width is 0") as info:
        MobileViTV2Config(ffn_multiplier=1, base_attn_unit_dims=[1, 1, 1], width_multiplier=0.5)
    assert info.value.field == "ffn_multiplier"
    assert MobileViTV2Config(ffn_multiplier=2, base_attn_unit_dims=[1, 1, 1], width_multiplier=0.5).stages[2].ffn_dim == 16


def test_smallest_and_widest_admitted_configs_build():
    from numpy_mvit2 import MobileViTV2ForImageClassification

    for kwargs in ({"width_multiplier": 0.01, "base_attn_unit_dims": [1, 1, 1], "n_attn_blocks": [1, 1, 1], "num_labels": 0,
                    "expand_ratio": 0.01},
                   {"width_multiplier": 0.25, "patch_size": 4, "conv_kernel_size": 31, "num_channels": 64,
                    "atrous_rates": [64, 64, 64], "n_attn_blocks": [1, 1, 1]}):
        config = MobileViTV2Config(**kwargs)
        model = MobileViTV2ForImageClassification(config)
        size = 1 + (config.patch_size - 1) * 32
        width = config.num_labels or config.hidden_sizes[-1]  # no labels: the classifier is the identity
        assert model(np.zeros((1, config.num_channels, size, size), np.float32)).logits.shape == (1, width)


def test_make_divisible_refuses_infinity():
    from numpy_mvit2 import make_divisible

    for value in (INF, -INF, NAN, None, "8"):
        with pytest.raises(ValueError, match="finite"):
            make_divisible(value)


def test_attributes_set_later_are_checked_when_widths_are_derived():
    config = MobileViTV2Config()
    config.width_multiplier = INF
    with pytest.raises(ConfigError, match="width_multiplier=inf"):
        _ = config.stages
    with pytest.raises(ConfigError, match="width_multiplier"):
        _ = config.stem_channels
    config = MobileViTV2Config()
    config.n_attn_blocks = [10**6, 1, 1]
    with pytest.raises(ConfigError, match="n_attn_blocks"):
        expected_shapes(config, "classification")
    config = MobileViTV2Config()
    config.patch_size = "2"
    with pytest.raises(ConfigError, match="patch_size"):
        config.check_input_size(256, 256)
    config = MobileViTV2Config()
    config.num_labels = 5
    with pytest.raises(ConfigError, match="num_labels"):
        config.num_labels = 10**9
    assert config.num_labels == 5


def test_integral_numbers_of_numpy_are_accepted_as_python_numbers():
    config = MobileViTV2Config(num_channels=np.int64(3), width_multiplier=np.float32(0.5),
                               n_attn_blocks=(np.int32(2), 4, 3), num_labels=np.int16(4))
    assert type(config.num_channels) is int and type(config.width_multiplier) is float
    assert config.n_attn_blocks == [2, 4, 3] and config.num_labels == 4
    json.dumps(config.to_dict())


# --------------------------------------------------------------------------------------------
# Unknown keys never shadow the class
# --------------------------------------------------------------------------------------------

SHADOWING_KEYS = ["self", "validate", "__class__", "__dict__", "extra", "stages", "stem_channels", "to_dict", "from_dict",
                  "parameter_count", "hidden_sizes", "__init__", "__getattr__", "__eq__", "_check_fields",
                  "__dataclass_fields__", "model_type", "num_labels_", "save_pretrained", "__repr__"]


def test_keys_named_like_attributes_stay_in_extra(tmp_path):
    data = {key: {"hostile": key} for key in SHADOWING_KEYS} | {"model_type": "mobilevitv2", "mlp_ratio": 2.0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    config = MobileViTV2Config.from_json_file(path)
    assert type(config) is MobileViTV2Config
    assert isinstance(config.__dict__, dict) and "validate" not in config.__dict__
    assert callable(config.validate) and callable(config.to_dict) and len(config.stages) == 5
    assert config.stem_channels == 32 and config.hidden_sizes[-1] == 512
    config.validate()
    for key in SHADOWING_KEYS:
        if key != "model_type":
            assert config.extra[key] == {"hostile": key}
    assert config.num_labels_ == {"hostile": "num_labels_"}  # a harmless name reads as an attribute
    assert config.mlp_ratio == 2.0
    with pytest.raises(AttributeError):
        config._hidden  # noqa: B018 - "_" names never come from extra
    assert MobileViTV2Config.from_dict(config.to_dict()) == config
    assert repr(config).startswith("MobileViTV2Config(")


def test_extra_keys_survive_copy_and_pickle():
    import copy
    import pickle

    config = MobileViTV2Config(mlp_ratio=2.0, __class__="x", extra={"a": 1})
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config and clone.mlp_ratio == 2.0 and type(clone) is MobileViTV2Config
        assert clone.extra == {"mlp_ratio": 2.0, "__class__": "x", "extra": {"a": 1}}


def test_processor_keys_named_like_attributes_stay_in_extra(tmp_path):
    data = {"size": 300, "self": 1, "to_dict": 2, "extra": 3, "__class__": 4, "__call__": 5, "_steps": 6,
            "image_mean": [0.5, 0.5, 0.5]}
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    processor = MobileViTImageProcessor.from_pretrained(path)
    assert type(processor) is MobileViTImageProcessor and callable(processor.to_dict)
    assert processor.size == {"shortest_edge": 300}
    assert processor.extra == {k: v for k, v in data.items() if k != "size"}
    assert processor(np.zeros((3, 8, 8), np.uint8), return_tensors="np")["pixel_values"].shape == (1, 3, 256, 256)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def test_label2id_list_beside_id2label(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"id2label": {"0": "cat", "1": "dog"}, "label2id": ["cat", "dog"]}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MobileViTV2Config.from_json_file(path)
    assert_names(info.value, str(path), "label2id", "['cat', 'dog']")


def test_mismatched_id2label_and_num_labels_warns_as_transformers():
    with pytest.warns(UserWarning, match="num_labels=3 does not match"):
        config = MobileViTV2Config(id2label={"0": "a", "1": "b"}, num_labels=3)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_repeated_label_names_are_allowed():
    """ImageNet has two classes called "crane": label2id then has fewer entries than id2label."""
    config = MobileViTV2Config(id2label={"0": "crane", "1": "crane", "2": "cat"})
    assert config.num_labels == 3 and config.label2id == {"crane": 1, "cat": 2}


def test_label_limit_is_inclusive():
    assert MobileViTV2Config(num_labels=MAX_LABELS, width_multiplier=0.5).num_labels == MAX_LABELS


# --------------------------------------------------------------------------------------------
# The JSON itself: nesting, numbers, encodings, sizes, not-a-file
# --------------------------------------------------------------------------------------------


def deep(levels: int) -> str:
    return '{"model_type": "mobilevitv2", "extra_key": ' + "[" * levels + "]" * levels + "}"


HOSTILE_TEXTS = {
    "nested_past_recursion_limit": deep(100_000).encode(),
    "nested_just_over_the_bound": deep(MAX_JSON_DEPTH).encode(),
    "nested_in_id2label": b'{"id2label": {"0": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    "infinity": b'{"width_multiplier": Infinity}',
    "minus_infinity": b'{"expand_ratio": -Infinity}',
    "nan": b'{"layer_norm_eps": NaN}',
    "overflowing_float": b'{"width_multiplier": 1e999}',
    "huge_int": b'{"num_labels": ' + b"9" * 5000 + b"}",
    "truncated": b'{"width_multiplier": 0.5,',
    "not_utf8": b'{"hidden_act": "\xff\xfe"}',
    "utf16": '{"hidden_act": "relu"}'.encode("utf-16"),
    "empty": b"",
    "nul_bytes": b"\x00" * 64,
    "top_level_list": b"[1, 2, 3]",
    "top_level_string": b'"mobilevitv2"',
    "top_level_null": b"null",
    "top_level_number": b"3",
}


@pytest.mark.parametrize("name", HOSTILE_TEXTS)
def test_hostile_json_text_in_config_json(name, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(HOSTILE_TEXTS[name])
    with pytest.raises(ConfigError) as info:
        MobileViTV2Config.from_json_file(path)
    assert type(info.value) is ConfigError
    assert_names(info.value, str(path))


@pytest.mark.parametrize("name", HOSTILE_TEXTS)
def test_hostile_json_text_in_preprocessor_config_json(name, tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_bytes(HOSTILE_TEXTS[name].replace(b'"model_type": "mobilevitv2", ', b""))
    with pytest.raises(ConfigError) as info:
        MobileViTImageProcessor.from_pretrained(tmp_path)
    assert_names(info.value, str(path))


def test_json_constants_are_refused(tmp_path):
    for token in ("Infinity", "-Infinity", "NaN", "1e999", "-1e400"):
        path = tmp_path / "config.json"
        path.write_text(f'{{"width_multiplier": {token}}}', encoding="utf-8")
        with pytest.raises(ConfigError, match="not valid JSON"):
            MobileViTV2Config.from_json_file(path)


def test_nesting_at_the_bound_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(deep(MAX_JSON_DEPTH - 1), encoding="utf-8")
    assert MobileViTV2Config.from_json_file(path).extra["extra_key"] is not None


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"width_multiplier": 0.5}).encode())
    assert MobileViTV2Config.from_json_file(path).width_multiplier == 0.5
    path = tmp_path / "preprocessor_config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"size": 300}).encode())
    assert MobileViTImageProcessor.from_pretrained(tmp_path).size == {"shortest_edge": 300}


def test_file_over_the_size_limit_is_refused_unread(tmp_path):
    for name, load in (("config.json", MobileViTV2Config.from_json_file),
                       ("preprocessor_config.json", MobileViTImageProcessor.from_pretrained)):
        path = tmp_path / name
        with open(path, "wb") as f:  # sparse: no disk used, and refused by its size before a read
            f.write(b"{")
            f.truncate(MAX_SETTINGS_BYTES + 1)
        with pytest.raises(ConfigError) as info:
            load(path)
        assert_names(info.value, str(path), str(MAX_SETTINGS_BYTES))


def test_file_of_too_many_values_is_refused(tmp_path):
    """Each walk over a parsed file costs a microsecond a value: a 6 MB config.json of two
    million empty lists ran past 10 CPU seconds. Settings files hold at most MAX_SETTINGS_VALUES."""
    wide = '{"x": [' + ",".join(["[]"] * MAX_SETTINGS_VALUES) + "]}"
    for name, load in (("config.json", MobileViTV2Config.from_json_file),
                       ("preprocessor_config.json", MobileViTImageProcessor.from_pretrained)):
        path = tmp_path / name
        path.write_text(wide)
        with pytest.raises(ConfigError) as info:
            load(path)
        assert_names(info.value, str(path), f"more than {MAX_SETTINGS_VALUES} values")
    with pytest.raises(ValueError, match="more than 5 values"):
        parse_json("[1, 2, 3, 4, 5]", "x.json", max_values=5)
    assert parse_json("[1, 2, 3, 4]", "x.json", max_values=5) == [1, 2, 3, 4]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifo_is_refused_without_blocking(tmp_path):
    """A FIFO opened for reading blocks until a writer comes; it must be refused at once (run in
    a child, so that a hang fails the test instead of stopping the suite)."""
    config_fifo, processor_fifo = tmp_path / "config.json", tmp_path / "preprocessor_config.json"
    os.mkfifo(config_fifo)
    os.mkfifo(processor_fifo)
    code = textwrap.dedent(f"""
        import json
        from numpy_mvit2 import MobileViTImageProcessor, MobileViTV2Config
        for load, path in ((MobileViTV2Config.from_json_file, {str(config_fifo)!r}),
                           (MobileViTImageProcessor.from_pretrained, {str(processor_fifo)!r})):
            try:
                load(path)
                print(json.dumps(["loaded", ""]))
            except Exception as e:
                print(json.dumps([type(e).__name__, str(e)]))
    """)
    result = run_python_bounded(code, env={"PYTHONPATH": str(ROOT)}, deadline=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # the config is read by its path and refused as not a regular file; the processor's path is
    # not a file (is_file() is False for a FIFO), so it is looked for as a folder and not found
    assert lines[0][0] == "ConfigError" and "FIFO" in lines[0][1] and str(config_fifo) in lines[0][1]
    assert lines[1][0] in ("ConfigError", "CheckpointNotFoundError") and str(processor_fifo) in lines[1][1]


def test_folder_named_config_json(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match="folder"):
        MobileViTV2Config.from_json_file(tmp_path / "config.json")


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as info:
        MobileViTV2Config.from_json_file(tmp_path / "config.json")
    assert isinstance(info.value, OSError)
    assert_names(info.value, str(tmp_path / "config.json"))


def test_wrong_model_type_of_any_json_type(tmp_path):
    path = tmp_path / "config.json"
    for model_type in (["mobilevitv2"], {"a": 1}, 3, "x" * 10_000):
        path.write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
        with pytest.raises(ConfigError, match="model_type") as info:
            MobileViTV2Config.from_json_file(path)
        assert len(str(info.value)) < 400  # a long value is shown cut


def test_timm_config_fields(tmp_path):
    path = tmp_path / "config.json"
    for data, field in (({"architecture": 3}, "architecture"), ({"architecture": ["mobilevitv2_100"]}, "architecture"),
                        ({"architecture": "mobilevitv2_999"}, "width_multiplier"),
                        ({"architecture": "mobilevitv2_100", "num_classes": 10**9}, "num_classes"),
                        ({"architecture": "mobilevitv2_100", "num_classes": "1000"}, "num_classes"),
                        ({"architecture": "mobilevitv2_100", "num_classes": None}, "num_classes")):
        path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            MobileViTV2Config.from_json_file(path)
        assert info.value.field == field
        assert_names(info.value, str(path))


# --------------------------------------------------------------------------------------------
# preprocessor_config.json, field by field
# --------------------------------------------------------------------------------------------

BAD_PROCESSOR_VALUES = {
    "size": [0, -1, 20000, MAX_IMAGE_SIDE + 1, "288", 288.0, True, {"shortest_edge": 20000},
             {"shortest_edge": 0}, {"shortest_edge": "288"}, {"shortest_edge": 288.0}, {"shortest_edge": None},
             {"height": 10**9, "width": 1}, {"height": 1}, {"longest": 3}, [1, 2, 3], [288, None], {},
             {"shortest_edge": 288, "longest_edge": 10**6}],
    "crop_size": [0, 20000, "256", {"height": 256}, {"shortest_edge": 256}, {"height": 256, "width": -1},
                  {"height": INF, "width": 1}, [256, 10**6]],
    "resample": [-1, 6, 2.0, 3.7, "3", "sharpest", True, [3], {"a": 1}, INF, 10**100],
    "rescale_factor": ["0.5", [0.5], True, INF, NAN, -INF, 10**400],
    "do_resize": [0, 1, "false", [True], {}, 2.0],
    "do_rescale": ["true", 1],
    "do_center_crop": ["no"],
    "do_flip_channel_order": [0],
    "do_reduce_labels": ["yes"],
    "do_convert_rgb": ["yes", 1],
}
BAD_PROCESSOR_CASES = [(name, value) for name, values in BAD_PROCESSOR_VALUES.items() for value in values]


@pytest.mark.parametrize("case", BAD_PROCESSOR_CASES, ids=[case_id(c) for c in BAD_PROCESSOR_CASES])
def test_bad_processor_setting(case, tmp_path):
    name, value = case
    with pytest.raises(ConfigError) as info:
        MobileViTImageProcessor(**{name: value})
    assert info.value.field == name
    assert_names(info.value, name)
    with pytest.raises(ConfigError):  # as a call's override too
        MobileViTImageProcessor()(np.zeros((3, 8, 8), np.uint8), **{name: value})
    if not in_json(value):
        return
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({name: value}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MobileViTImageProcessor.from_pretrained(tmp_path)
    assert_names(info.value, str(path), name)


def test_processor_null_settings_are_the_defaults(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({name: None for name in BAD_PROCESSOR_VALUES}), encoding="utf-8")
    processor = MobileViTImageProcessor.from_pretrained(tmp_path)
    assert processor.to_dict() == {**MobileViTImageProcessor().to_dict(), "do_convert_rgb": None}


def test_processor_limit_is_inclusive():
    processor = MobileViTImageProcessor(size={"height": MAX_IMAGE_SIDE, "width": MAX_IMAGE_SIDE}, crop_size=MAX_IMAGE_SIDE)
    assert processor.size == {"height": MAX_IMAGE_SIDE, "width": MAX_IMAGE_SIDE}
    config = MobileViTV2Config(image_size=MAX_IMAGE_SIZE)
    assert MobileViTImageProcessor.for_model_config(config).size == {"shortest_edge": MAX_IMAGE_SIDE}


# --------------------------------------------------------------------------------------------
# Shard indexes (model.safetensors.index.json): the same reader
# --------------------------------------------------------------------------------------------

SHARD_INDEX_TEXTS = {
    "deep_weight_map": b'{"metadata": {}, "weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "infinite_total_size": b'{"metadata": {"total_size": Infinity}, "weight_map": {}}',
    "overflowing_total_size": b'{"metadata": {"total_size": 1e999}, "weight_map": {}}',
    "not_utf8": b'{"weight_map": {"\xff": "a.safetensors"}}',
    "truncated": b'{"weight_map": {"a": ',
}


@pytest.mark.parametrize("name", SHARD_INDEX_TEXTS)
def test_hostile_shard_index_through_safeio(name, tmp_path):
    path = tmp_path / "model.safetensors.index.json"
    path.write_bytes(SHARD_INDEX_TEXTS[name])
    with pytest.raises(CheckpointError) as info:
        read_json(path, error=CheckpointError, what="shard index")
    assert type(info.value) is CheckpointError
    assert_names(info.value, str(path))


# --------------------------------------------------------------------------------------------
# The issue's cases, memory and CPU bounded, through every loader and the command line
# --------------------------------------------------------------------------------------------

ISSUE_CONFIGS = {
    "deep_nesting": deep(100_000),
    "width_infinity": '{"width_multiplier": Infinity}',
    "width_1e999": '{"width_multiplier": 1e999}',
    "expand_infinity": '{"expand_ratio": Infinity}',
    "image_size_string": '{"image_size": "256"}',
    "image_size_null": '{"image_size": null}',
    "image_size_negative": '{"image_size": -256}',
    "image_size_huge": '{"image_size": 1000000000}',
    "label2id_list": '{"id2label": {"0": "a"}, "label2id": ["a"]}',
    "shadow_validate": '{"validate": 1, "__class__": 2, "__dict__": 3, "extra": 4}',
    "num_labels_1e9": '{"num_labels": 1000000000}',
    "n_attn_blocks_1e6": '{"n_attn_blocks": [1000000, 1, 1]}',
    "width_8_labels_32768": '{"width_multiplier": 8, "num_labels": 32768}',
    "base_dims_huge": '{"base_attn_unit_dims": [128, 192, 1000000]}',
    "aspp_huge": '{"aspp_out_channels": 100000000}',
    "id2label_list": '{"id2label": ["a", "b"]}',
    "architectures_int": '{"architectures": 5}',
}
ISSUE_PROCESSORS = {
    "shortest_edge_20000": '{"size": {"shortest_edge": 20000}}',
    "crop_20000": '{"crop_size": {"height": 20000, "width": 20000}}',
    "resample_infinity": '{"resample": 1e999}',
    "deep_nesting": '{"image_mean": ' + "[" * 100_000 + "]" * 100_000 + "}",
}

# The peak resident memory of this process so far (VmHWM), to measure one step's rise in a child.
PEAK = """
def peak_memory():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""

CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTImageProcessor
from numpy_mvit2.cli import main
loaders = {"config": MobileViTV2Config.from_pretrained, "model": MobileViTV2ForImageClassification.from_pretrained,
           "processor": MobileViTImageProcessor.from_pretrained}
for kind, folder in json.loads(sys.argv[1]):
    if kind == "cli":
        import contextlib, io
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["info", "--model", folder])
        print(json.dumps({"folder": folder, "kind": kind, "error": str(code), "message": err.getvalue()}))
        continue
    try:
        loaders[kind](folder)
        print(json.dumps({"folder": folder, "kind": kind, "error": None, "message": ""}))
    except Exception as e:
        print(json.dumps({"folder": folder, "kind": kind, "error": type(e).__name__, "message": str(e)}))
"""


def tiny_weights(folder: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"conv_stem.convolution.weight": np.zeros((1,), np.float32)}, str(folder / "model.safetensors"))


def test_issue_cases_bounded_through_every_loader(tmp_path):
    jobs = []
    for name, text in ISSUE_CONFIGS.items():
        folder = tmp_path / f"config_{name}"
        folder.mkdir()
        (folder / "config.json").write_text(text, encoding="utf-8")
        tiny_weights(folder)
        jobs += [("config", str(folder)), ("model", str(folder)), ("cli", str(folder))]
    for name, text in ISSUE_PROCESSORS.items():
        folder = tmp_path / f"processor_{name}"
        folder.mkdir()
        (folder / "preprocessor_config.json").write_text(text, encoding="utf-8")
        jobs.append(("processor", str(folder)))
    result = run_bounded(["-c", CHILD, json.dumps(jobs)], env={"PYTHONPATH": str(ROOT)}, deadline=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    peak = result.max_rss
    assert len(lines) == len(jobs), result.stdout[-2000:]
    for line in lines:
        folder, kind, error, message = line["folder"], line["kind"], line["error"], line["message"]
        name = Path(folder).name
        if name == "config_shadow_validate":  # harmless: loads (the model then fails on the tiny weights)
            assert kind == "cli" or error in (None, "CheckpointError"), line
            continue
        if kind == "cli":
            assert error == "1" and "internal error" not in message and message.count("\n") == 1, line
            assert "error:" in message, line
            continue
        assert error == "ConfigError", line
        assert folder in message, line
    assert peak < 300 * 2**20, f"peak memory {peak / 2**20:.0f} MiB"


def test_random_init_memory_per_parameter():
    """A model with random weights takes about 10 bytes a parameter at its peak (float32 weights,
    the fast plan's copy, and one layer drawn in float64 at a time): at the parameter cap, 64
    million, that is 0.65 GB (measured: 0.64 GB for width 3.0, segmentation)."""
    code = PEAK + textwrap.dedent("""
        from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForSemanticSegmentation
        config = MobileViTV2Config(width_multiplier=1.0)
        before = peak_memory()
        model = MobileViTV2ForSemanticSegmentation(config, fast=True)
        print((peak_memory() - before) / config.parameter_count("segmentation"))
    """)
    result = run_python_bounded(code, env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    bytes_per_parameter = float(result.stdout)
    assert bytes_per_parameter < 13, bytes_per_parameter
    assert bytes_per_parameter * MAX_PARAMETERS < 2**30


def test_warnings_are_not_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MobileViTV2Config(id2label={"0": "a"}, label2id={"a": 0})


# --------------------------------------------------------------------------------------------
# Configs read off a checkpoint's shapes, and configs changed after they were made
# --------------------------------------------------------------------------------------------


def test_config_inferred_from_hostile_shapes_is_checked():
    """A checkpoint without config.json: the values read off its shapes are checked like any
    config's (the tensors here are zero-stride views, so nothing large exists)."""
    from numpy_mvit2.weights.shapes import infer_config

    huge = np.broadcast_to(np.zeros((), np.float32), (10**9, 512))
    with pytest.raises(CheckpointError) as info:
        infer_config({"classifier.weight": huge, "conv_stem.convolution.weight": np.zeros((32, 3, 3, 3))},
                     "classification", source="hostile.safetensors")
    assert_names(info.value, "hostile.safetensors", "num_labels=1000000000")
    layers = {f"encoder.layer.{stage}.transformer.layer.{i}.attention.qkv_proj.convolution.weight": np.zeros((1,))
              for stage in (2, 3, 4) for i in range(100)}
    with pytest.raises(CheckpointError, match="n_attn_blocks"):
        infer_config(layers, "base", source="hostile.safetensors")


def test_model_checks_its_config_again():
    from numpy_mvit2 import MobileViTV2ForSemanticSegmentation

    config = MobileViTV2Config()
    config.aspp_out_channels = 10**7  # set after construction: unchecked until a model is built
    with pytest.raises(ConfigError, match="aspp_out_channels"):
        MobileViTV2ForSemanticSegmentation(config)


def test_timm_label_names_must_be_strings():
    """timm's label_names are strings; anything else (a huge int, whose str() Python refuses, a
    list) is the config's error, not a ValueError from str()."""
    for names in ([10**5000, "b"], [["a"], "b"], [None, "b"]):
        with pytest.raises(ConfigError, match="label_names must hold strings"):
            MobileViTV2Config.from_timm_dict({"architecture": "mobilevitv2_100", "num_classes": 2, "label_names": names})
