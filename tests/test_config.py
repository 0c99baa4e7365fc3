"""``MobileViTV2Config``: defaults, labels, reading and writing, validation, and the widths it
implies, each checked against transformers' ``MobileViTV2Config`` and models."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from conftest import require

torch = require("torch")
transformers = require("transformers")

from numpy_mvit2 import MobileViTV2Config  # noqa: E402
from numpy_mvit2.weights import expected_shapes  # noqa: E402
from reference import HEADS, torch_config  # noqa: E402

DOCUMENTED_DEFAULTS = {
    "num_channels": 3,
    "image_size": 256,
    "patch_size": 2,
    "expand_ratio": 2.0,
    "hidden_act": "swish",
    "conv_kernel_size": 3,
    "output_stride": 32,
    "classifier_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "aspp_out_channels": 512,
    "atrous_rates": [6, 12, 18],
    "aspp_dropout_prob": 0.1,
    "semantic_loss_ignore_index": 255,
    "n_attn_blocks": [2, 4, 3],
    "base_attn_unit_dims": [128, 192, 256],
    "width_multiplier": 1.0,
    "ffn_multiplier": 2,
    "attn_dropout": 0.0,
    "ffn_dropout": 0.0,
}


def normalise(value):
    """Tuples (transformers' defaults) and lists (ours, and JSON) compare equal."""
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def write_json(path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DEFAULTS))
def test_documented_default(name):
    ours = MobileViTV2Config()
    theirs = transformers.MobileViTV2Config()
    expected = DOCUMENTED_DEFAULTS[name]
    assert getattr(ours, name) == expected
    assert type(getattr(ours, name)) is type(expected)
    assert normalise(getattr(theirs, name)) == expected, "the documented default no longer matches transformers"


# fields transformers does not have; unset by default, which computes transformers' function
OUR_OWN_FIELDS = {"behavior": None, "patch_remainder": None, "dilate_local_conv": None}


def test_our_own_fields_default_to_transformers_behaviour():
    ours = MobileViTV2Config()
    for name, default in OUR_OWN_FIELDS.items():
        assert getattr(ours, name) == default
        assert not hasattr(transformers.MobileViTV2Config(), name)
    assert ours.choices.patch_remainder == "zero" and not ours.choices.dilate_local_conv
    with pytest.raises(ValueError, match="patch_remainder"):
        MobileViTV2Config(patch_remainder="crop")


def test_every_field_default_matches_transformers():
    """All our fields, not only the documented ones, default as transformers' do."""
    ours = MobileViTV2Config()
    theirs = transformers.MobileViTV2Config()
    names = [f.name for f in fields(ours) if f.name not in OUR_OWN_FIELDS]
    assert set(DOCUMENTED_DEFAULTS) <= set(names)
    for name in names:
        assert normalise(getattr(ours, name)) == normalise(getattr(theirs, name)), name
    assert ours.num_labels == theirs.num_labels == 2
    assert ours.model_type == theirs.model_type == "mobilevitv2"


def test_non_default_values_match_transformers():
    kwargs = dict(width_multiplier=0.75, output_stride=16, atrous_rates=(3, 6, 9), n_attn_blocks=(1, 2, 1),
                  base_attn_unit_dims=(64, 96, 128), hidden_act="gelu", layer_norm_eps=1e-6, num_labels=7)
    ours = MobileViTV2Config(**kwargs)
    theirs = transformers.MobileViTV2Config(**kwargs)
    for f in (f for f in fields(ours) if f.name not in OUR_OWN_FIELDS):
        if f.name == "label2id" and theirs.label2id is None:
            continue
        assert normalise(getattr(ours, f.name)) == normalise(getattr(theirs, f.name)), f.name
    assert ours.atrous_rates == [3, 6, 9] and isinstance(ours.atrous_rates, list)


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def test_default_two_labels():
    config = MobileViTV2Config()
    assert config.num_labels == 2
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1}
    assert config.problem_type is None


@pytest.mark.parametrize("num_labels", [0, 1, 5, 21])
def test_num_labels_creates_labels(num_labels):
    ours = MobileViTV2Config(num_labels=num_labels)
    theirs = transformers.MobileViTV2Config(num_labels=num_labels)
    assert ours.num_labels == theirs.num_labels == num_labels
    assert ours.id2label == {i: f"LABEL_{i}" for i in range(num_labels)} == theirs.id2label
    assert ours.label2id == {f"LABEL_{i}": i for i in range(num_labels)} == theirs.label2id


def test_id2label_string_keys_become_ints():
    id2label = {"0": "cat", "1": "dog", "2": "bird"}
    ours = MobileViTV2Config(id2label=id2label)
    theirs = transformers.MobileViTV2Config(id2label=id2label)
    assert ours.id2label == {0: "cat", 1: "dog", 2: "bird"} == theirs.id2label
    assert all(isinstance(k, int) for k in ours.id2label)
    assert ours.num_labels == theirs.num_labels == 3
    assert ours.label2id == {"cat": 0, "dog": 1, "bird": 2}


def test_num_labels_with_matching_id2label_keeps_names():
    ours = MobileViTV2Config(id2label={0: "a", 1: "b"}, num_labels=2)
    theirs = transformers.MobileViTV2Config(id2label={0: "a", 1: "b"}, num_labels=2)
    assert ours.id2label == theirs.id2label == {0: "a", 1: "b"}


def test_num_labels_conflicting_with_id2label():
    """transformers 5 warns, then lets num_labels win: id2label becomes LABEL_0..LABEL_{n-1}."""
    with pytest.warns(UserWarning, match="num_labels=3 does not match"):
        ours = MobileViTV2Config(id2label={0: "a", 1: "b"}, num_labels=3)
    theirs = transformers.MobileViTV2Config(id2label={0: "a", 1: "b"}, num_labels=3)
    assert ours.num_labels == theirs.num_labels
    assert ours.id2label == theirs.id2label
    assert ours.label2id == theirs.label2id


def test_label2id_values_become_ints():
    config = MobileViTV2Config(id2label={"0": "a", "1": "b"}, label2id={"a": "0", "b": "1"})
    assert config.label2id == {"a": 0, "b": 1}


def test_setting_num_labels_later():
    ours = MobileViTV2Config(id2label={0: "cat", 1: "dog"})
    theirs = transformers.MobileViTV2Config(id2label={0: "cat", 1: "dog"})
    ours.num_labels = 2  # unchanged count: names kept, as transformers does
    theirs.num_labels = 2
    assert ours.id2label == theirs.id2label == {0: "cat", 1: "dog"}
    ours.num_labels = 4
    theirs.num_labels = 4
    assert ours.num_labels == theirs.num_labels == 4
    assert ours.id2label == theirs.id2label == {i: f"LABEL_{i}" for i in range(4)}
    assert ours.label2id == theirs.label2id == {f"LABEL_{i}": i for i in range(4)}


@pytest.mark.parametrize("value", [-1, 2.5, "3", True])
def test_bad_num_labels(value):
    with pytest.raises(ValueError, match="num_labels"):
        MobileViTV2Config(num_labels=value)
    config = MobileViTV2Config()
    with pytest.raises(ValueError, match="num_labels"):
        config.num_labels = value


@pytest.mark.parametrize("problem_type", [None, "regression", "single_label_classification", "multi_label_classification"])
def test_valid_problem_types(problem_type):
    assert MobileViTV2Config(problem_type=problem_type, num_labels=3).problem_type == problem_type


@pytest.mark.parametrize("problem_type", ["classification", "Regression", "multi_label", ""])
def test_bad_problem_type(problem_type):
    with pytest.raises(ValueError) as info:
        MobileViTV2Config(problem_type=problem_type)
    message = str(info.value)
    assert "problem_type" in message
    for allowed in ("regression", "single_label_classification", "multi_label_classification"):
        assert allowed in message


def test_single_label_with_one_label_raises():
    with pytest.raises(ValueError, match="num_labels"):
        transformers.MobileViTV2Config(problem_type="single_label_classification", num_labels=1)
    with pytest.raises(ValueError, match="single_label_classification.*num_labels"):
        MobileViTV2Config(problem_type="single_label_classification", num_labels=1)
    # regression with one output is fine
    assert MobileViTV2Config(problem_type="regression", num_labels=1).num_labels == 1


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def test_from_pretrained_reads_config_json(tmp_path):
    data = {
        "model_type": "mobilevitv2",
        "architectures": ["MobileViTV2ForImageClassification"],
        "width_multiplier": 0.75,
        "output_stride": 16,
        "hidden_act": "gelu",
        "atrous_rates": [3, 6, 9],
        "id2label": {"0": "cat", "1": "dog", "2": "bird"},
        "mlp_ratio": 2.0,
    }
    write_json(tmp_path / "config.json", data)
    config = MobileViTV2Config.from_pretrained(tmp_path)
    assert config.width_multiplier == 0.75
    assert config.output_stride == 16
    assert config.hidden_act == "gelu"
    assert config.atrous_rates == [3, 6, 9]
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert config.num_labels == 3
    # unknown keys are kept as attributes, as transformers keeps them
    assert config.mlp_ratio == 2.0
    assert config.architectures == ["MobileViTV2ForImageClassification"]
    # everything else at its default
    assert config.n_attn_blocks == [2, 4, 3]
    assert config.image_size == 256
    # the path of the JSON file itself works too
    assert MobileViTV2Config.from_pretrained(tmp_path / "config.json") == config


def test_unknown_keys_round_trip(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "mobilevitv2", "mlp_ratio": 2.0,
                                          "architectures": ["MobileViTV2Model"], "width_multiplier": 0.5})
    config = MobileViTV2Config.from_pretrained(tmp_path)
    as_dict = config.to_dict()
    assert as_dict["mlp_ratio"] == 2.0
    assert as_dict["architectures"] == ["MobileViTV2Model"]
    assert as_dict["model_type"] == "mobilevitv2"
    json.dumps(as_dict)  # serialisable

    out = tmp_path / "saved"
    config.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert saved["mlp_ratio"] == 2.0
    assert saved["architectures"] == ["MobileViTV2Model"]
    assert saved["width_multiplier"] == 0.5
    assert saved["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    again = MobileViTV2Config.from_pretrained(out)
    assert again == config
    assert again.mlp_ratio == 2.0
    assert again.to_dict() == as_dict
    assert MobileViTV2Config.from_dict(as_dict) == config


def test_save_pretrained_readable_by_transformers(tmp_path):
    config = MobileViTV2Config(width_multiplier=1.25, output_stride=8, id2label={0: "a", 1: "b", 2: "c"},
                               n_attn_blocks=[1, 2, 3], hidden_act="relu")
    config.save_pretrained(tmp_path)
    theirs = transformers.MobileViTV2Config.from_pretrained(tmp_path)
    for f in fields(config):
        assert normalise(getattr(theirs, f.name)) == normalise(getattr(config, f.name)), f.name
    assert theirs.num_labels == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(width_multiplier=0.75, num_labels=4),
        dict(output_stride=8, atrous_rates=[2, 4, 8], hidden_act="relu", id2label={0: "x", 1: "y", 2: "z"},
             problem_type="multi_label_classification", n_attn_blocks=[1, 1, 1], patch_size=3),
    ],
)
def test_config_saved_by_transformers_loads(tmp_path, kwargs):
    theirs = transformers.MobileViTV2Config(**kwargs)
    theirs.save_pretrained(tmp_path)
    ours = MobileViTV2Config.from_pretrained(tmp_path)
    for f in (f for f in fields(ours) if f.name not in OUR_OWN_FIELDS):
        if f.name == "label2id" and theirs.label2id is None:
            continue
        assert normalise(getattr(ours, f.name)) == normalise(getattr(theirs, f.name)), f.name
    assert ours.num_labels == theirs.num_labels
    assert ours.id2label == theirs.id2label
    assert all(isinstance(k, int) for k in ours.id2label)
    assert ours.label2id == {v: k for k, v in theirs.id2label.items()}


def test_config_of_saved_transformers_model_loads(tmp_path):
    """A model's save_pretrained writes architectures, dtype and label2id: null."""
    config = transformers.MobileViTV2Config(width_multiplier=0.5, num_labels=3, aspp_out_channels=16,
                                            n_attn_blocks=[1, 1, 1], architectures=["MobileViTV2ForImageClassification"])
    config.label2id = None  # as a model's save_pretrained writes it
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))["label2id"] is None
    ours = MobileViTV2Config.from_pretrained(tmp_path)
    assert ours.width_multiplier == 0.5
    assert ours.num_labels == 3
    assert ours.label2id == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    assert ours.architectures == ["MobileViTV2ForImageClassification"]


def test_from_pretrained_overrides(tmp_path):
    transformers.MobileViTV2Config(width_multiplier=0.75).save_pretrained(tmp_path)
    ours = MobileViTV2Config.from_pretrained(tmp_path, width_multiplier=1.25, output_stride=16)
    theirs = transformers.MobileViTV2Config.from_pretrained(tmp_path, width_multiplier=1.25, output_stride=16)
    assert ours.width_multiplier == theirs.width_multiplier == 1.25
    assert ours.output_stride == theirs.output_stride == 16


def test_from_pretrained_num_labels_override(tmp_path):
    """transformers' from_pretrained(folder, num_labels=3) re-labels a 4-label config with 3 labels."""
    transformers.MobileViTV2Config(num_labels=4).save_pretrained(tmp_path)
    theirs = transformers.MobileViTV2Config.from_pretrained(tmp_path, num_labels=3)
    with pytest.warns(UserWarning, match="num_labels=3 does not match"):
        ours = MobileViTV2Config.from_pretrained(tmp_path, num_labels=3)
    assert theirs.num_labels == 3
    assert ours.num_labels == theirs.num_labels
    assert ours.id2label == theirs.id2label


def test_wrong_model_type(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"model_type": "mobilevit", "hidden_sizes": [144, 192, 240]})
    with pytest.raises(ValueError) as info:
        MobileViTV2Config.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "mobilevit'" in message and "mobilevitv2" in message


def test_invalid_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"width_multiplier": 0.5,', encoding="utf-8")
    with pytest.raises(ValueError) as info:
        MobileViTV2Config.from_pretrained(tmp_path)
    assert str(path) in str(info.value)
    assert "JSON" in str(info.value)


@pytest.mark.parametrize("payload", [[1, 2, 3], "mobilevitv2", 3, None])
def test_non_object_json(tmp_path, payload):
    path = tmp_path / "config.json"
    write_json(path, payload)
    with pytest.raises(ValueError) as info:
        MobileViTV2Config.from_pretrained(tmp_path)
    assert str(path) in str(info.value)
    assert "object" in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(OSError) as info:
        MobileViTV2Config.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
    missing = tmp_path / "nowhere" / "config.json"
    with pytest.raises(OSError) as info:
        MobileViTV2Config.from_pretrained(missing)
    assert str(missing) in str(info.value)


def test_invalid_value_in_json_names_file_and_field(tmp_path):
    path = tmp_path / "config.json"
    write_json(path, {"model_type": "mobilevitv2", "output_stride": 64})
    with pytest.raises(ValueError) as info:
        MobileViTV2Config.from_pretrained(tmp_path)
    assert str(path) in str(info.value)
    assert "output_stride" in str(info.value)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("output_stride", 4, ["8", "16", "32"]),
        ("output_stride", 64, ["8", "16", "32"]),
        ("atrous_rates", [6, 12], ["3"]),
        ("atrous_rates", [6, 12, 18, 24], ["3"]),
        ("hidden_act", "nope", ["swish", "relu", "gelu"]),
        ("width_multiplier", -0.5, ["positive"]),
        ("width_multiplier", 0, ["positive"]),
        ("conv_kernel_size", 2, ["odd"]),
        ("conv_kernel_size", 4, ["odd"]),
        ("problem_type", "bad", ["regression", "single_label_classification", "multi_label_classification"]),
        ("n_attn_blocks", [2, 4], ["3"]),
        ("base_attn_unit_dims", [128, 192, 0], ["positive"]),
        ("patch_size", 0, ["positive"]),
        ("num_channels", 0, ["positive"]),
        ("expand_ratio", -2.0, ["positive"]),
    ],
)
def test_invalid_value_raises(name, value, allowed):
    with pytest.raises(ValueError) as info:
        MobileViTV2Config(**{name: value})
    message = str(info.value)
    assert name in message
    for word in allowed:
        assert word in message, (word, message)


def test_valid_values_accepted():
    for stride in (8, 16, 32):
        assert MobileViTV2Config(output_stride=stride).output_stride == stride
    for act in ("swish", "silu", "relu", "gelu"):
        assert MobileViTV2Config(hidden_act=act).hidden_act == act
    assert MobileViTV2Config(conv_kernel_size=5).conv_kernel_size == 5
    assert MobileViTV2Config(atrous_rates=(1, 2, 3)).atrous_rates == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# Derived widths: expected_shapes vs transformers' state_dict
# --------------------------------------------------------------------------------------------


def torch_shapes(config: MobileViTV2Config, head: str) -> dict:
    """Names and shapes of transformers' state_dict for ``config`` (built on the meta device: no
    memory, no initialisation cost)."""
    with torch.device("meta"):
        model = getattr(transformers, HEADS[head])(torch_config(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def assert_shapes_match(config: MobileViTV2Config) -> None:
    for head in HEADS:
        ours = expected_shapes(config, head)
        theirs = torch_shapes(config, head)
        missing = sorted(set(theirs) - set(ours))
        extra = sorted(set(ours) - set(theirs))
        wrong = sorted(f"{k}: ours {ours[k]}, transformers {theirs[k]}" for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        assert not (missing or extra or wrong), f"head={head}: missing {missing[:5]}, extra {extra[:5]}, wrong {wrong[:5]}"
        assert list(ours) == list(theirs), f"head={head}: same names, different order"


@pytest.mark.parametrize("width_multiplier", [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
def test_expected_shapes_width_multiplier(width_multiplier):
    assert_shapes_match(MobileViTV2Config(width_multiplier=width_multiplier))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(output_stride=8),
        dict(output_stride=16),
        dict(output_stride=8, width_multiplier=0.75),
        dict(n_attn_blocks=[1, 2, 1]),
        dict(n_attn_blocks=[3, 1, 5], width_multiplier=0.5),
        dict(base_attn_unit_dims=[40, 72, 100]),
        dict(base_attn_unit_dims=[100, 150, 200], width_multiplier=0.6),
        dict(ffn_multiplier=3),
        dict(ffn_multiplier=1, base_attn_unit_dims=[24, 40, 56]),
        dict(expand_ratio=3.0),
        dict(expand_ratio=1.5),
        dict(expand_ratio=2.7, width_multiplier=0.75),
        dict(patch_size=3),
        dict(conv_kernel_size=5),
        dict(num_channels=1),
        dict(num_channels=4),
        dict(num_labels=7, aspp_out_channels=64),
        dict(width_multiplier=0.25),
        dict(width_multiplier=3.0),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_expected_shapes_other_configs(kwargs):
    assert_shapes_match(MobileViTV2Config(**kwargs))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_expected_shapes_no_labels():
    """num_labels=0: transformers' classifier is the identity (no tensors)."""
    config = MobileViTV2Config(num_labels=0, width_multiplier=0.5)
    assert not any(k.startswith("classifier") for k in expected_shapes(config, "classification"))
    assert_shapes_match(config)


def test_expected_shapes_bad_head():
    with pytest.raises(ValueError, match="head"):
        expected_shapes(MobileViTV2Config(), "detection")
