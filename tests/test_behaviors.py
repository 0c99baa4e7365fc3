"""One switch, ``behavior``: each checkpoint computes what its own framework computes.

transformers, timm and ml-cvnets compute two things differently with the same weights (see
``numpy_mvit2.config.FrameworkChoices``): a feature map the patch size does not divide (transformers
drops and zero-fills the remainder; timm and ml-cvnets resize the map up), and the local conv of a
dilated stage (transformers leaves it undilated; timm and ml-cvnets dilate it).

References, one per behavior:

- "transformers": transformers' own model (also test_parity.py).
- "timm": timm's own models (``timm.create_model("mobilevitv2_XXX", output_stride=...)``), which
  make both changes themselves.
- "ml-cvnets": ml-cvnets cannot be installed from the package index, so its model is transformers'
  with exactly ml-cvnets' two changes applied (``crosscheck.apply_behavior``). The changes, in
  apple/ml-cvnets (commit 0c0f798):
    * ``cvnets/models/classification/mobilevit_v2.py``, ``MobileViTv2._make_mit_layer``: a dilated
      stage doubles ``self.dilation``, keeps stride 1 in its downsampling ``InvertedResidual``
      (``dilation=prev_dilation``) and builds ``MobileViTBlockv2(..., dilation=self.dilation)``;
      ``base_image_encoder.py``: output stride 8 dilates layers 4 and 5, 16 layer 5;
    * ``cvnets/modules/mobilevit_block.py``, ``MobileViTBlockv2.__init__``: ``conv_3x3_in =
      ConvLayer2d(..., kernel_size=conv_ksize, dilation=dilation, groups=in_channels)`` is
      ``local_rep.0`` (``ConvLayer2d`` pads ``(k - 1) / 2 * dilation``);
    * ``MobileViTBlockv2.resize_input_if_needed``: ``F.interpolate(x, size=(ceil(h/p)*p,
      ceil(w/p)*p), mode="bilinear", align_corners=True)`` when the patch size does not divide the
      map, called first in ``forward_spatial``; its unfold and fold then see the resized size.
  ``apply_behavior`` is itself checked against timm's models below, at output strides 8, 16, 32.

The ml-cvnets checkpoints are written as ml-cvnets writes them: ``torch.save`` of its state dict
(``.pt``) under its names, 4-D tensors in channels-last strides, storages tagged ``cuda:0`` (saved
from a GPU), a segmentation model's auxiliary head present, beside the YAML config it was trained
with.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import quick, require
from reference import (
    OURS,
    cvnets_checkpoint,
    make_reference,
    make_timm_reference,
    randomize_,
    relative_error,
    save_reference,
    save_timm_reference,
)

torch = require("torch")
require("transformers")
require("timm")

from numpy_mvit2 import (  # noqa: E402
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2Model,
)
from numpy_mvit2.config import BEHAVIORS  # noqa: E402
from numpy_mvit2.crosscheck import apply_behavior, crosscheck  # noqa: E402
from numpy_mvit2.errors import ConfigError  # noqa: E402

TOL = {np.float32: 2e-5, np.float64: 1e-10}  # max|ours - ref| / (1 + max|ref|), the bar's measure
WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def pixels(seed, batch, height, width, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(dtype)


def torch_out(model, x, **kwargs):
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return model(torch.from_numpy(x).to(dtype), **kwargs)


# --------------------------------------------------------------------------------------------
# The switch
# --------------------------------------------------------------------------------------------


def test_each_behavior_stands_for_its_framework_choices():
    assert set(BEHAVIORS) == {"transformers", "timm", "ml-cvnets"}
    config = MobileViTV2Config(output_stride=8)
    assert config.behavior is None and config.choices == BEHAVIORS["transformers"]
    assert [s.local_dilation for s in config.stages] == [1, 1, 1, 1, 1]
    for behavior in ("timm", "ml-cvnets"):
        config = MobileViTV2Config(output_stride=8, behavior=behavior)
        assert config.choices.patch_remainder == "resize" and config.choices.dilate_local_conv
        assert [s.local_dilation for s in config.stages] == [1, 1, 1, 2, 4]
        assert [s.downsample_dilation for s in config.stages] == [1, 1, 1, 1, 2]  # the same in all three
        assert [s.local_dilation for s in MobileViTV2Config(output_stride=16, behavior=behavior).stages] == [1, 1, 1, 1, 2]
    # the lower-level fields override one choice each
    config = MobileViTV2Config(output_stride=16, behavior="ml-cvnets", dilate_local_conv=False, patch_remainder="zero")
    assert config.choices == BEHAVIORS["transformers"] and config.behavior == "ml-cvnets"
    assert MobileViTV2Config(patch_remainder="resize").choices.patch_remainder == "resize"


def test_an_unknown_behavior_is_a_value_error_listing_the_allowed(tmp_path):
    for bad in ("pytorch", "cvnets", "", 1, ["timm"]):
        with pytest.raises(ValueError, match=r"behavior=.*allowed: None, 'transformers', 'timm', 'ml-cvnets'"):
            MobileViTV2Config(behavior=bad)
    # checked before anything is read: the path does not even exist
    with pytest.raises(ValueError, match="'transformers', 'timm', 'ml-cvnets'"):
        MobileViTV2ForImageClassification.from_pretrained(tmp_path / "missing", behavior="TIMM")
    with pytest.raises(ValueError, match="dilate_local_conv"):
        MobileViTV2Config(dilate_local_conv="yes")


def test_saved_config_records_the_behavior_and_transformers_config_means_transformers(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    ref = make_reference(config, "classification", seed=1)
    save_reference(ref, tmp_path)  # transformers' config.json: no behavior
    assert "behavior" not in json.loads((tmp_path / "config.json").read_text())
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert model.config.behavior == "transformers"
    # ours records it, and a later load computes it again
    MobileViTV2Config.from_dict(model.config.to_dict(), behavior="ml-cvnets").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["behavior"] == "ml-cvnets"
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).config.behavior == "ml-cvnets"
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path, behavior="timm").config.behavior == "timm"
    # config= is copied, never changed
    given = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path, config=given).config.behavior == "transformers"
    assert given.behavior is None


# --------------------------------------------------------------------------------------------
# "timm": timm's own models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width, size", quick([(w, s) for w, s in zip(WIDTHS, [(100, 77), (61, 93), (256, 256), (45, 131),
                                                                              (97, 75), (130, 66), (77, 100)])], 0))
def test_timm_checkpoints_compute_timm_at_every_width_and_size(tmp_path, width, size):
    ref = make_timm_reference(width, seed=int(width * 8), num_classes=11)
    save_timm_reference(ref, tmp_path)
    x = pixels(1, 2, *size)
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path)  # no keyword: timm's names, timm's function
    assert model.config.behavior == "timm"
    theirs = torch_out(ref, x)
    assert relative_error(model(x).logits, theirs) < TOL[np.float32]
    readable = MobileViTV2ForImageClassification.from_pretrained(tmp_path, fast=False)
    assert relative_error(readable(x).logits, theirs) < TOL[np.float32]


def _dilated_timm(width, output_stride, seed):
    import timm

    torch.manual_seed(seed)
    arch = f"mobilevitv2_{round(width * 100):03d}"
    model = timm.create_model(arch, pretrained=False, num_classes=5, output_stride=output_stride).eval()
    randomize_(model, seed)
    return model


@pytest.mark.parametrize("width, output_stride, size", quick([(0.5, 16, (97, 75)), (0.75, 8, (64, 80)),
                                                              (1.0, 32, (70, 66)), (1.5, 8, (45, 61))], 0))
def test_timm_dilated_backbones_and_apply_behavior_against_timm(tmp_path, width, output_stride, size):
    """timm built with ``output_stride`` 16 or 8 dilates the local conv of its dilated stages and
    resizes maps up to the patch size: ours under "timm" computes its features, and so does
    transformers' model through ``apply_behavior`` (which makes the ml-cvnets reference below),
    while transformers' own does not."""
    ref = _dilated_timm(width, output_stride, seed=3)
    save_timm_reference(ref, tmp_path)
    x = pixels(2, 2, *size)
    with torch.no_grad():
        theirs = ref.forward_features(torch.from_numpy(x))
    ours = MobileViTV2Model.from_pretrained(tmp_path, output_stride=output_stride)
    assert ours.config.behavior == "timm"
    assert relative_error(ours(x).last_hidden_state, theirs) < TOL[np.float32]

    hf = make_reference(MobileViTV2Config(width_multiplier=width, output_stride=output_stride), "base")
    renamed = MobileViTV2Model.from_pretrained(tmp_path, output_stride=output_stride, fold_batch_norm=False)
    hf.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in renamed.state_dict().items()})
    patched = apply_behavior(hf, "timm")
    assert relative_error(torch_out(patched, x).last_hidden_state, theirs) < TOL[np.float32]
    plain = torch_out(hf, x).last_hidden_state  # transformers' function differs here (in size too, at odd sizes)
    assert plain.shape != theirs.shape or relative_error(plain, theirs) > 1e-3
    assert hf.encoder.layer[4].conv_kxk.convolution.dilation == (1, 1)  # the model given is left as it was


# --------------------------------------------------------------------------------------------
# "ml-cvnets": files as ml-cvnets writes them
# --------------------------------------------------------------------------------------------


def cvnets_yaml(config: MobileViTV2Config, segmentation: bool) -> str:
    """The options an ml-cvnets YAML config sets for this model, nested as its files nest them."""
    import yaml

    model = {
        "classification": {"name": "mobilevit_v2", "n_classes": 1000 if segmentation else config.num_labels,
                           "mitv2": {"width_multiplier": config.width_multiplier, "attn_norm_layer": "layer_norm_2d"},
                           "activation": {"name": "swish"}},
        "normalization": {"name": "sync_batch_norm", "momentum": 0.1},
        "activation": {"name": "swish", "inplace": False},
        "layer": {"global_pool": "mean", "conv_init": "kaiming_uniform"},
    }
    if segmentation:
        model["segmentation"] = {
            "name": "encoder_decoder", "n_classes": config.num_labels, "seg_head": "deeplabv3",
            "output_stride": config.output_stride, "use_aux_head": True, "activation": {"name": "relu"},
            "deeplabv3": {"aspp_dropout": 0.1, "aspp_out_channels": config.aspp_out_channels,
                          "aspp_rates": list(config.atrous_rates)},
        }
    return yaml.safe_dump({"taskname": "+ MobileViTv2 (generated for a test)", "model": model,
                           "sampler": {"bs": {"crop_size_width": 256, "crop_size_height": 256}}})


def save_cvnets_pt(state: dict, path) -> None:
    """``torch.save`` as ml-cvnets leaves its checkpoints: channels-last 4-D tensors, storages
    tagged ``cuda:0`` (a GPU run; torch tags the location at save time, so a tagger placed first
    in its registry stands in for the GPU for the length of one save)."""
    from torch import serialization

    def gpu(obj):
        return "cuda:0"

    tensors = {}
    for name, value in state.items():
        t = torch.from_numpy(np.ascontiguousarray(value))
        tensors[name] = t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t
    serialization.register_package(-1000, gpu, lambda obj, location: None)
    try:
        torch.save(tensors, path)
    finally:
        serialization._package_registry[:] = [e for e in serialization._package_registry if e[1] is not gpu]


CVNETS_CASES = [  # width, head, output stride, (height, width), dtype
    (0.5, "segmentation", 16, (97, 75), np.float32),
    (0.75, "segmentation", 8, (64, 80), np.float64),
    (1.0, "segmentation", 16, (128, 96), np.float32),
    (1.25, "classification", 32, (99, 101), np.float32),
    (1.5, "segmentation", 8, (70, 66), np.float64),
    (1.75, "segmentation", 32, (80, 80), np.float32),
    (2.0, "segmentation", 16, (61, 93), np.float32),
    (2.0, "classification", 32, (256, 256), np.float64),
    (0.5, "classification", 32, (45, 61), np.float64),
]


def make_cvnets_checkpoint(folder, width, head, output_stride, seed=0):
    """A randomized transformers model, its ml-cvnets reference, and the ``.pt`` + YAML folder."""
    segmentation = head == "segmentation"
    config = MobileViTV2Config(width_multiplier=width, num_labels=7,
                               **({"output_stride": output_stride, "aspp_out_channels": 48, "atrous_rates": [2, 3, 5]}
                                  if segmentation else {}))
    hf = make_reference(config, head, seed=seed)
    folder.mkdir(exist_ok=True)
    save_cvnets_pt(cvnets_checkpoint(hf, config, segmentation), folder / f"mobilevitv2-{width}.pt")
    (folder / "deeplabv3_mobilevitv2.yaml" if segmentation else folder / "mobilevit_v2.yaml").write_text(
        cvnets_yaml(config, segmentation))
    return config, hf


@pytest.mark.parametrize("width, head, output_stride, size, dtype", quick(CVNETS_CASES, 0, 3))
def test_cvnets_files_compute_cvnets_by_default_and_transformers_on_request(tmp_path, width, head, output_stride,
                                                                           size, dtype):
    config, hf = make_cvnets_checkpoint(tmp_path / "ckpt", width, head, output_stride, seed=int(width * 4))
    ref = hf if dtype == np.float32 else copy.deepcopy(hf).double()
    cvnets_ref = apply_behavior(ref, "ml-cvnets")
    x = pixels(5, 2, *size, dtype=dtype)
    theirs = torch_out(cvnets_ref, x, output_hidden_states=True)

    model = OURS[head].from_pretrained(tmp_path / "ckpt", dtype=dtype)  # no keyword
    assert model.checkpoint_source == "cvnets" and model.config.behavior == "ml-cvnets"
    assert model.weights_file.suffix == ".pt"
    assert model.config.output_stride == output_stride and model.config.num_labels == 7  # from the YAML
    out = model(x, output_hidden_states=True)
    assert relative_error(out.logits, theirs.logits) < TOL[dtype]
    for a, b in zip(out.hidden_states, theirs.hidden_states, strict=True):
        assert relative_error(a, b) < TOL[dtype]

    # the readable path, and the weights file named directly (its YAML found beside it)
    readable = OURS[head].from_pretrained(tmp_path / "ckpt" / f"mobilevitv2-{width}.pt", dtype=dtype, fast=False)
    assert readable.config.behavior == "ml-cvnets"
    assert relative_error(readable(x).logits, theirs.logits) < TOL[dtype]
    # context scores: the same on both paths
    for a, b in zip(model(x, output_attentions=True).attentions, readable(x, output_attentions=True).attentions,
                    strict=True):
        assert relative_error(a, b) < TOL[dtype]

    # the same files under behavior="transformers" compute transformers' function
    as_hf = OURS[head].from_pretrained(tmp_path / "ckpt", dtype=dtype, behavior="transformers")
    plain = torch_out(ref, x).logits
    assert relative_error(as_hf(x).logits, plain) < TOL[dtype]
    # and where the two functions differ (a dilated stage, a map the patch size does not divide),
    # they differ by far more than round-off, so each comparison pins its own
    sizes = {b: MobileViTV2Config(behavior=b).feature_map_sizes(*size) for b in ("transformers", "ml-cvnets")}
    if output_stride < 32 or sizes["transformers"] != sizes["ml-cvnets"]:
        assert theirs.logits.shape != plain.shape or relative_error(theirs.logits, plain) > 1e-4


def test_cvnets_yaml_is_what_sets_the_output_stride(tmp_path):
    """The weights cannot tell the output stride; without the YAML it must be given."""
    config, hf = make_cvnets_checkpoint(tmp_path / "ckpt", 0.5, "segmentation", 8)
    x = pixels(3, 1, 64, 64)
    theirs = torch_out(apply_behavior(hf, "ml-cvnets"), x).logits
    yaml_file = next((tmp_path / "ckpt").glob("*.yaml"))
    kept = yaml_file.read_text()
    yaml_file.unlink()
    seg = OURS["segmentation"]
    with pytest.warns(UserWarning, match="without their YAML config; the output stride cannot be read off"):
        without = seg.from_pretrained(tmp_path / "ckpt")
    assert without.config.output_stride == 32 and without.config.behavior == "ml-cvnets"
    given = seg.from_pretrained(tmp_path / "ckpt", output_stride=8, atrous_rates=[2, 3, 5])
    assert relative_error(given(x).logits, theirs) < TOL[np.float32]
    # the YAML passed as config=, from anywhere
    (tmp_path / "elsewhere.yaml").write_text(kept)
    named = seg.from_pretrained(tmp_path / "ckpt", config=tmp_path / "elsewhere.yaml")
    assert named.config.output_stride == 8 and named.config.behavior == "ml-cvnets"
    assert relative_error(named(x).logits, theirs) < TOL[np.float32]
    # an unrelated YAML file beside the weights is passed over, even one PyYAML cannot make values of
    for text in ("authors: [someone]\n", "date: 2024-13-45\n", "n: " + "9" * 5000 + "\n", "[unclosed\n", "a: *b\n"):
        (tmp_path / "ckpt" / "notes.yaml").write_text(text)
        with pytest.warns(UserWarning, match="without their YAML config"):
            assert seg.from_pretrained(tmp_path / "ckpt").config.output_stride == 32


@pytest.mark.parametrize("text, match", [
    ("model: {classification: {name: resnet}}", "not a MobileViTV2 config"),
    ("model: {classification: {name: mobilevit_v2}, segmentation: {name: encoder_decoder, seg_head: pspnet}}",
     "seg_head='pspnet' is not supported"),
    ("model: {classification: {name: mobilevit_v2}, segmentation: {name: encoder_decoder, "
     "deeplabv3: {aspp_sep_conv: true}}}", "aspp_sep_conv=True is not supported"),
    ("model: {classification: {name: mobilevit_v2, mitv2: {attn_norm_layer: layer_norm}}}", "attn_norm_layer"),
    ("model: {classification: {name: mobilevit_v2}, segmentation: {name: encoder_decoder, activation: {name: swish}}}",
     "ReLU in the DeepLabV3 head"),
    ("model: {classification: {name: mobilevit_v2, activation: {name: prelu}}}", "activation.name='prelu'"),
    ("model: {classification: {name: mobilevit_v2, mitv2: {width_multiplier: 1e9}}}", "width_multiplier"),
    ("model: {classification: {name: mobilevit_v2}, segmentation: {name: e, output_stride: 4}}", "output_stride"),
    ("a: &x [1, 2]\nb: *x\n", "aliases"),
    ("[" * 100 + "]" * 100, "nested"),
    ("model: [unclosed", "not a YAML file"),
    ("- 1\n- 2\n", "expected a YAML mapping"),
    ("when: 2024-13-45\n", "not a YAML file we can read"),
    ("n: " + "9" * 5000 + "\n", "not a YAML file we can read"),
    ("model: {classification: {name: mobilevit_v2}, normalization: {name: group_norm}}", "normalization.name"),
])
def test_cvnets_yaml_refuses_what_we_cannot_compute(tmp_path, text, match):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        MobileViTV2Config.from_cvnets_yaml(path)
    assert str(path) in str(info.value)


def test_cvnets_yaml_size_is_bounded(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("model:\n  classification:\n    name: mobilevit_v2\n" + "# padding\n" * 20_000)
    with pytest.raises(ConfigError, match="more than"):
        MobileViTV2Config.from_cvnets_yaml(path)


def test_cvnets_yaml_fields():
    """The options read, from ml-cvnets' VOC DeepLabV3 config's keys."""
    import tempfile
    from pathlib import Path

    config = MobileViTV2Config(width_multiplier=1.5, output_stride=16, aspp_out_channels=512, atrous_rates=[6, 12, 18],
                               num_labels=21)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deeplabv3_mobilevitv2.yaml"
        path.write_text(cvnets_yaml(config, segmentation=True))
        read = MobileViTV2Config.from_cvnets_yaml(path)
    assert (read.width_multiplier, read.output_stride, read.aspp_out_channels, read.atrous_rates, read.num_labels,
            read.hidden_act, read.image_size, read.behavior) == (1.5, 16, 512, [6, 12, 18], 21, "swish", 256, "ml-cvnets")


def test_cvnets_yaml_defaults_are_ml_cvnets_argument_defaults(tmp_path):
    """Options a YAML leaves out take ml-cvnets' argparse defaults: ReLU (``model.activation.name``),
    1000 classes; for DeepLabV3 21 classes, an ASPP of 256 channels, rates (6, 12, 18), dropout 0.1,
    and no dilation unless an output stride is named. Names are compared lower-cased, as
    ml-cvnets compares them, and ``layer_norm_nchw`` is the same norm as ``layer_norm_2d``."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {classification: {name: mobilevit_v2}}")
    read = MobileViTV2Config.from_cvnets_yaml(path)
    assert (read.hidden_act, read.num_labels, read.width_multiplier) == ("relu", 1000, 1.0)
    path.write_text("model: {classification: {name: mobilevit_v2, mitv2: {attn_norm_layer: Layer_Norm_NCHW}, "
                    "activation: {name: Swish}}, segmentation: {name: encoder_decoder}, layer: {global_pool: rms}}")
    read = MobileViTV2Config.from_cvnets_yaml(path)
    assert (read.hidden_act, read.num_labels, read.aspp_out_channels, read.atrous_rates, read.aspp_dropout_prob,
            read.output_stride) == ("swish", 21, 256, [6, 12, 18], 0.1, 32)


def test_an_explicit_behavior_replaces_overrides_a_config_json_stored(tmp_path):
    save_reference(make_reference(MobileViTV2Config(width_multiplier=0.5, num_labels=3), "classification"), tmp_path)
    stored = MobileViTV2Config.from_pretrained(tmp_path, behavior="transformers", patch_remainder="zero",
                                               dilate_local_conv=False)
    stored.save_pretrained(tmp_path)  # as an earlier version of this project wrote patch_remainder
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path, behavior="ml-cvnets")
    assert model.config.choices == BEHAVIORS["ml-cvnets"]
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path, behavior="ml-cvnets", patch_remainder="zero")
    assert model.config.choices.patch_remainder == "zero" and model.config.choices.dilate_local_conv
    # without the keyword the stored choices hold
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).config.choices == BEHAVIORS["transformers"]


def test_a_behavior_set_after_construction_is_computed_by_both_paths():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3, output_stride=16, aspp_out_channels=16)
    fast = OURS["segmentation"](config, seed=4)
    readable = OURS["segmentation"](MobileViTV2Config.from_dict(config.to_dict()), seed=4, fast=False)
    x = pixels(6, 1, 66, 78)
    before = fast(x).logits
    for model in (fast, readable):
        model.config.behavior = "ml-cvnets"
    after = fast(x).logits
    assert after.shape != before.shape or relative_error(after, before) > 1e-4
    assert relative_error(after, readable(x).logits) < TOL[np.float32]


def test_apply_behavior_replaces_an_earlier_one():
    config = MobileViTV2Config(width_multiplier=0.5, output_stride=16)
    hf = make_reference(config, "base", seed=5)
    x = pixels(7, 1, 70, 54)
    again = apply_behavior(apply_behavior(hf, "ml-cvnets"), "transformers")
    assert relative_error(torch_out(again, x).last_hidden_state, torch_out(hf, x).last_hidden_state) == 0
    twice = apply_behavior(apply_behavior(hf, "timm"), "ml-cvnets")
    once = apply_behavior(hf, "ml-cvnets")
    assert relative_error(torch_out(twice, x).last_hidden_state, torch_out(once, x).last_hidden_state) == 0


# --------------------------------------------------------------------------------------------
# Defaults by source, and the explicit override
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["transformers", "timm", "cvnets"])
def test_default_by_source_and_explicit_override(tmp_path, source):
    if source == "transformers":
        save_reference(make_reference(MobileViTV2Config(width_multiplier=0.5, num_labels=3), "classification"), tmp_path)
        default = "transformers"
    elif source == "timm":
        save_timm_reference(make_timm_reference(0.5, num_classes=3), tmp_path)
        default = "timm"
    else:
        make_cvnets_checkpoint(tmp_path, 0.5, "classification", 32)
        default = "ml-cvnets"
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert model.config.behavior == default and model.checkpoint_source == source
    for behavior in BEHAVIORS:
        forced = MobileViTV2ForImageClassification.from_pretrained(tmp_path, behavior=behavior)
        assert forced.config.behavior == behavior and forced.config.choices == BEHAVIORS[behavior]
    # a lower-level override keeps the chosen behavior and changes its one choice
    mixed = MobileViTV2ForImageClassification.from_pretrained(tmp_path, patch_remainder="resize")
    assert mixed.config.behavior == default and mixed.config.choices.patch_remainder == "resize"


# --------------------------------------------------------------------------------------------
# crosscheck takes the behavior
# --------------------------------------------------------------------------------------------


def test_crosscheck_under_each_behavior(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=4, output_stride=16, aspp_out_channels=32)
    hf = make_reference(config, "segmentation", seed=2)
    save_reference(hf, tmp_path)
    for behavior in BEHAVIORS:
        report = crosscheck(checkpoint=tmp_path, behavior=behavior, height=67, width=53)
        assert report.passed, (behavior, str(report))
        assert report.max_error("float64") < 1e-10
        assert any(behavior in note for note in report.notes) == (behavior != "transformers")
    # a model under ml-cvnets' behavior against transformers' model: adjusted, and it passes
    ours = OURS["segmentation"].from_pretrained(tmp_path, behavior="ml-cvnets", dtype=np.float64)
    report = crosscheck(ours, hf, height=67, width=53)
    assert report.passed and any("ml-cvnets" in note for note in report.notes)


# --------------------------------------------------------------------------------------------
# The command line: --behavior on classify, segment and info
# --------------------------------------------------------------------------------------------


def run_cli(*args, cwd):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "numpy_mvit2", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_cli_behavior_on_segment_classify_and_info(tmp_path):
    from PIL import Image

    make_cvnets_checkpoint(tmp_path / "seg", 0.5, "segmentation", 16)
    make_cvnets_checkpoint(tmp_path / "cls", 0.5, "classification", 32)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(tmp_path / "photo.png")

    info = run_cli("info", "--model", str(tmp_path / "seg"), "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["behavior"] == "ml-cvnets" and data["head"] == "segmentation"  # from the YAML
    info = run_cli("info", "--model", str(tmp_path / "seg"), "--behavior", "transformers", cwd=tmp_path)
    assert info.returncode == 0 and "behavior transformers" in info.stdout.splitlines()[0]

    scores = {}
    for behavior in (None, "ml-cvnets", "transformers"):
        extra = () if behavior is None else ("--behavior", behavior)
        out = run_cli("segment", "photo.png", "--model", str(tmp_path / "seg"), "-o", f"out-{behavior}", "--json",
                      "--quiet", *extra, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        scores[behavior] = [item["classes"] for item in json.loads(out.stdout)]
    assert scores[None] == scores["ml-cvnets"] != scores["transformers"]
    for behavior in ("timm", "transformers"):
        out = run_cli("classify", "photo.png", "--model", str(tmp_path / "cls"), "--behavior", behavior, "--quiet",
                      cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    bad = run_cli("classify", "photo.png", "--model", str(tmp_path / "cls"), "--behavior", "cvnets", cwd=tmp_path)
    assert bad.returncode == 2 and "choose from 'transformers', 'timm', 'ml-cvnets'" in bad.stderr
    assert "Traceback" not in bad.stderr
