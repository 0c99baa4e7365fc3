"""Checkpoints under timm's and ml-cvnets' names, and the config read from them.

timm: state dicts of ``timm.create_model("mobilevitv2_XXX")`` with every tensor randomized, saved
as timm saves them for the Hub (``config.json`` with ``"architecture"``, ``model.safetensors``);
our logits are compared with timm's own, at 256x256 and at sizes the patch size does not divide
(where timm resizes the map: ``patch_remainder="resize"``).

ml-cvnets: no ml-cvnets package is installable here, so its names are produced from a randomized
transformers model by the renaming rules of transformers' conversion script
(``convert_mlcvnets_to_pytorch.py``), run backwards below, and pinned by a table of names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import quick, require
from reference import (
    cvnets_checkpoint,
    make_reference,
    make_timm_reference,
    relative_error,
    run_reference,
    save_reference,
    save_timm_reference,
    to_cvnets,
)

torch = require("torch")
require("timm")

from numpy_mvit2 import (  # noqa: E402
    CheckpointError,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)
from numpy_mvit2.weights import check_state_dict  # noqa: E402
from numpy_mvit2.weights.names import (  # noqa: E402
    cvnets_name,
    detect_source,
    timm_name,
    to_transformers_names,
)
from numpy_mvit2.weights.shapes import infer_config  # noqa: E402

TOL = 2e-5  # max|ours - torch| / (1 + max|torch|), float32, as in test_parity.py
WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def pixels(seed, batch, height, width):
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


def timm_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x))


def numpy_state(torch_model) -> dict:
    return {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_every_timm_width_maps_onto_transformers_names(width):
    """Every tensor of each published timm architecture has exactly one transformers counterpart of
    the same shape, for the config timm's architecture name implies (and the one read off shapes)."""
    import timm

    arch = f"mobilevitv2_{round(width * 100):03d}"
    state = {k: v.shape for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}
    assert detect_source(state) == "timm"
    renamed, source = to_transformers_names({k: np.empty(s, np.float32) for k, s in state.items()})
    assert source == "timm"
    assert len(renamed) == len([k for k in state if not k.endswith("num_batches_tracked")])
    config = MobileViTV2Config.from_timm_dict({"architecture": arch, "num_classes": 1000})
    assert config.width_multiplier == width
    check_state_dict(renamed, config, "classification", arch)
    assert infer_config(renamed, "classification").width_multiplier == width


def test_timm_name_examples():
    assert timm_name("stem.conv.weight") == "mobilevitv2.conv_stem.convolution.weight"
    assert timm_name("stages.1.1.conv2_kxk.bn.running_var") == "mobilevitv2.encoder.layer.1.layer.1.conv_3x3.normalization.running_var"
    assert timm_name("stages.3.0.conv3_1x1.conv.weight") == "mobilevitv2.encoder.layer.3.downsampling_layer.reduce_1x1.convolution.weight"
    assert timm_name("stages.3.1.transformer.0.attn.qkv_proj.weight") == \
        "mobilevitv2.encoder.layer.3.transformer.layer.0.attention.qkv_proj.convolution.weight"
    assert timm_name("stages.4.1.transformer.2.mlp.fc2.bias") == "mobilevitv2.encoder.layer.4.transformer.layer.2.ffn.conv2.convolution.bias"
    assert timm_name("stages.2.1.norm.weight") == "mobilevitv2.encoder.layer.2.layernorm.weight"
    assert timm_name("stages.2.1.conv_1x1.weight") == "mobilevitv2.encoder.layer.2.conv_1x1.convolution.weight"
    assert timm_name("head.fc.weight") == "classifier.weight"
    for foreign in ("stages.2.2.conv_kxk.conv.weight", "head.norm.weight", "stem.conv.bias", "blocks.0.weight"):
        assert timm_name(foreign) is None, foreign


@pytest.mark.parametrize("width, seed", quick([(0.5, 1), (0.75, 2)], 0))
def test_timm_safetensors_checkpoint_gives_timm_logits(tmp_path, width, seed):
    ref = make_timm_reference(width, seed=seed, num_classes=10)
    save_timm_reference(ref, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["architecture"].startswith("mobilevitv2_")
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert model.checkpoint_source == "timm"
    assert model.config.width_multiplier == width and model.config.num_labels == 10
    x = pixels(seed, 2, 256, 256)
    assert relative_error(model(x).logits, timm_logits(ref, x)) < TOL
    base = MobileViTV2Model.from_pretrained(tmp_path)  # the backbone alone, as from a transformers checkpoint
    with torch.no_grad():
        features = ref.forward_head(ref.forward_features(torch.from_numpy(x)), pre_logits=True)
    assert relative_error(base(x).pooler_output, features) < TOL


@pytest.mark.parametrize("size", [pytest.param((200, 216), marks=pytest.mark.slow), (100, 77),
                                  pytest.param((33, 33), marks=pytest.mark.slow)])
def test_patch_remainder_switch_against_each_reference(tmp_path, size):
    """Where the patch size does not divide a feature map, a timm checkpoint reproduces timm (its
    default behavior: the map resized) and, with ``patch_remainder="zero"`` or
    ``behavior="transformers"``, transformers, on the same weights."""
    ref = make_timm_reference(0.5, seed=3, num_classes=7)
    save_timm_reference(ref, tmp_path)
    x = pixels(4, 2, *size)

    resized = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert resized.config.behavior == "timm" and resized.config.choices.patch_remainder == "resize"
    theirs_timm = timm_logits(ref, x)
    assert relative_error(resized(x).logits, theirs_timm) < TOL

    zero = MobileViTV2ForImageClassification.from_pretrained(tmp_path, patch_remainder="zero")
    assert zero.config.behavior == "timm" and zero.config.choices.patch_remainder == "zero"
    hf = make_reference(zero.config, "classification")
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in to_transformers_names(numpy_state(ref))[0].items()}, strict=False)
    theirs_hf = run_reference(hf, x).logits
    assert relative_error(zero(x).logits, theirs_hf) < TOL
    as_transformers = MobileViTV2ForImageClassification.from_pretrained(tmp_path, behavior="transformers")
    assert relative_error(as_transformers(x).logits, theirs_hf) < TOL
    # the two behaviours really differ at these sizes, so each test above pins its own
    assert relative_error(theirs_timm, theirs_hf) > 1e-3
    # hidden-state sizes follow the resize
    sizes = [h.shape[-2:] for h in resized(x, output_hidden_states=True).hidden_states]
    assert sizes == resized.config.feature_map_sizes(*size)[1:]


def test_resize_accepts_inputs_too_small_for_zero(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    with pytest.raises(ValueError, match="too small"):
        MobileViTV2ForImageClassification(config)(pixels(0, 1, 20, 20))
    config.patch_remainder = "resize"
    assert MobileViTV2ForImageClassification(config)(pixels(0, 1, 20, 20)).logits.shape == (1, 3)
    config.patch_remainder, config.behavior = None, "ml-cvnets"
    assert MobileViTV2ForImageClassification(config)(pixels(0, 1, 20, 20)).logits.shape == (1, 3)


def test_timm_folder_without_config_is_inferred(tmp_path):
    ref = make_timm_reference(0.75, seed=5, num_classes=4)
    save_timm_reference(ref, tmp_path)
    (tmp_path / "config.json").unlink()
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path / "model.safetensors")
    assert model.config.width_multiplier == 0.75 and model.config.num_labels == 4
    x = pixels(5, 1, 256, 256)
    assert relative_error(model(x).logits, timm_logits(ref, x)) < TOL


def test_timm_config_that_does_not_match_the_weights(tmp_path):
    ref = make_timm_reference(0.5, seed=6, num_classes=5)
    save_timm_reference(ref, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["architecture"] = "mobilevitv2_075"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    message = str(info.value)
    assert "model.safetensors (timm names" in message and "width_multiplier=0.75" in message
    assert "shape mismatch" in message and "expected (24, 3, 3, 3), found (16, 3, 3, 3)" in message
    data["architecture"] = "resnet50"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'resnet50' is not a MobileViTV2"):
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)


def test_foreign_timm_tensor_is_named(tmp_path):
    from safetensors.numpy import save_file

    state = numpy_state(make_timm_reference(0.5, num_classes=3))
    state["stages.2.1.extra.weight"] = np.zeros(3, np.float32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"stages\.2\.1\.extra\.weight"):
        MobileViTV2ForImageClassification.from_pretrained(tmp_path / "model.safetensors")


# --------------------------------------------------------------------------------------------
# ml-cvnets / CoreNet
# --------------------------------------------------------------------------------------------

# Pinned: names as ml-cvnets writes them, beside the names transformers' conversion script gives.
CVNETS_PAIRS = [
    ("conv_1.block.conv.weight", "mobilevitv2.conv_stem.convolution.weight"),
    ("conv_1.block.norm.running_mean", "mobilevitv2.conv_stem.normalization.running_mean"),
    ("layer_1.0.block.exp_1x1.block.conv.weight", "mobilevitv2.encoder.layer.0.layer.0.expand_1x1.convolution.weight"),
    ("layer_2.1.block.red_1x1.block.norm.bias", "mobilevitv2.encoder.layer.1.layer.1.reduce_1x1.normalization.bias"),
    ("layer_3.0.block.conv_3x3.block.conv.weight", "mobilevitv2.encoder.layer.2.downsampling_layer.conv_3x3.convolution.weight"),
    ("layer_3.1.local_rep.0.block.norm.weight", "mobilevitv2.encoder.layer.2.conv_kxk.normalization.weight"),
    ("layer_3.1.local_rep.1.block.conv.weight", "mobilevitv2.encoder.layer.2.conv_1x1.convolution.weight"),
    ("layer_3.1.global_rep.0.pre_norm_attn.0.weight", "mobilevitv2.encoder.layer.2.transformer.layer.0.layernorm_before.weight"),
    ("layer_4.1.global_rep.1.pre_norm_attn.1.qkv_proj.block.conv.weight",
     "mobilevitv2.encoder.layer.3.transformer.layer.1.attention.qkv_proj.convolution.weight"),
    ("layer_4.1.global_rep.3.pre_norm_ffn.0.bias", "mobilevitv2.encoder.layer.3.transformer.layer.3.layernorm_after.bias"),
    ("layer_5.1.global_rep.2.pre_norm_ffn.1.block.conv.bias", "mobilevitv2.encoder.layer.4.transformer.layer.2.ffn.conv1.convolution.bias"),
    ("layer_5.1.global_rep.2.pre_norm_ffn.3.block.conv.weight", "mobilevitv2.encoder.layer.4.transformer.layer.2.ffn.conv2.convolution.weight"),
    ("layer_5.1.global_rep.3.weight", "mobilevitv2.encoder.layer.4.layernorm.weight"),
    ("layer_4.1.conv_proj.block.norm.running_var", "mobilevitv2.encoder.layer.3.conv_projection.normalization.running_var"),
    ("classifier.1.weight", "classifier.weight"),
    ("encoder.layer_2.0.block.exp_1x1.block.conv.weight", "mobilevitv2.encoder.layer.1.layer.0.expand_1x1.convolution.weight"),
    ("seg_head.aspp.aspp_layer.convs.0.block.conv.weight", "segmentation_head.aspp.convs.0.convolution.weight"),
    ("seg_head.aspp.aspp_layer.convs.2.block.norm.bias", "segmentation_head.aspp.convs.2.normalization.bias"),
    ("seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.conv.weight", "segmentation_head.aspp.convs.4.conv_1x1.convolution.weight"),
    ("seg_head.aspp.aspp_layer.project.block.norm.weight", "segmentation_head.aspp.project.normalization.weight"),
    ("seg_head.classifier.block.conv.bias", "segmentation_head.classifier.convolution.bias"),
]


@pytest.mark.parametrize("cvnets, transformers_name", CVNETS_PAIRS, ids=[p[0] for p in CVNETS_PAIRS])
def test_cvnets_name_table(cvnets, transformers_name):
    assert cvnets_name(cvnets) == transformers_name
    # and the backwards renaming the tests below build ml-cvnets checkpoints with agrees with the table
    segmentation = cvnets.startswith(("encoder.", "seg_head."))
    assert to_cvnets(transformers_name, [2, 4, 3], segmentation) == cvnets


def test_cvnets_unknown_names():
    for foreign in ("layer_3.1.global_rep.0.pre_norm_ffn.2.weight", "layer_6.0.block.exp_1x1.block.conv.weight",
                    "conv_1x1_exp.block.conv.weight", "layer_3.2.local_rep.0.block.conv.weight"):
        assert cvnets_name(foreign) is None, foreign


@pytest.mark.parametrize("head", quick(["classification", "segmentation"], 0))
def test_cvnets_names_under_transformers_behavior_give_transformers_logits(tmp_path, head):
    """ml-cvnets' names are renamed; with ``behavior="transformers"`` the weights compute
    transformers' function (ml-cvnets' own is pinned in test_behaviors.py)."""
    from safetensors.numpy import save_file

    segmentation = head == "segmentation"
    config = MobileViTV2Config(width_multiplier=0.75, num_labels=6, n_attn_blocks=[1, 2, 2],
                               **({"output_stride": 16, "aspp_out_channels": 64} if segmentation else {}))
    ref = make_reference(config, head, seed=8)
    state = cvnets_checkpoint(ref, config, segmentation)
    assert detect_source(state) == "cvnets"
    path = tmp_path / "mobilevitv2-0.75.safetensors"
    save_file(state, path)
    cls = MobileViTV2ForSemanticSegmentation if segmentation else MobileViTV2ForImageClassification
    overrides = {"output_stride": 16} if segmentation else {}
    assert cls.from_pretrained(path, **overrides).config.behavior == "ml-cvnets"
    model = cls.from_pretrained(path, behavior="transformers", **overrides)  # no config: read off the shapes
    assert model.checkpoint_source == "cvnets" and model.config.behavior == "transformers"
    assert model.config.width_multiplier == 0.75 and model.config.n_attn_blocks == [1, 2, 2]
    assert model.config.num_labels == 6
    x = pixels(9, 2, 128, 160)
    assert relative_error(model(x).logits, run_reference(ref, x).logits) < TOL


def test_infer_config_names_what_it_cannot_match(tmp_path):
    from safetensors.numpy import save_file

    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    ref = make_reference(config, "classification")
    state = numpy_state(ref)
    state["mobilevitv2.conv_stem.convolution.weight"] = np.zeros((15, 3, 3, 3), np.float32)
    save_file(state, tmp_path / "weights.safetensors")
    with pytest.raises(CheckpointError, match=r"no MobileViTV2 width multiplier matches.*stem \(15, 3, 3, 3\)"):
        MobileViTV2ForImageClassification.from_pretrained(tmp_path / "weights.safetensors")
    # a transformers checkpoint without its config.json is read off its shapes too
    save_reference(ref, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    model = MobileViTV2ForImageClassification.from_pretrained(tmp_path / "ckpt")
    assert model.config.width_multiplier == 0.5 and model.config.num_labels == 3


# --------------------------------------------------------------------------------------------
# pytorch_model.bin / .pth files, read in a process where torch cannot be imported
# --------------------------------------------------------------------------------------------

BLOCKED_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from numpy_mvit2 import MobileViTV2ForImageClassification

    args = json.loads(sys.argv[1])
    x = np.load(args["pixels"])
    out = {}
    for name, path in args["checkpoints"].items():
        model = MobileViTV2ForImageClassification.from_pretrained(path)
        out[name] = model(x).logits
        out[name + "_source"] = np.array(model.checkpoint_source)
    np.savez(args["out"], **out)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "timm"))
    assert not loaded, loaded
    """
)


@pytest.mark.slow
def test_torch_files_from_timm_and_transformers_without_torch(tmp_path):
    """timm's pytorch_model.bin (save_for_hf), a bare timm state dict saved as .pth, and a
    transformers state dict in float16 with a non-contiguous tensor and two tensors sharing one
    storage: all loaded where torch cannot be imported, all giving their torch model's logits."""
    from import_blocker import BLOCKER

    timm_ref = make_timm_reference(0.5, seed=11, num_classes=6)
    save_timm_reference(timm_ref, tmp_path / "timm-bin", safe_serialization=False)
    assert (tmp_path / "timm-bin" / "pytorch_model.bin").is_file()
    torch.save({"state_dict": timm_ref.state_dict(), "epoch": 3}, tmp_path / "timm.pth")  # a training checkpoint

    config = MobileViTV2Config(width_multiplier=0.5, num_labels=4)
    hf = make_reference(config, "classification", seed=12).half().float()  # values exactly representable in float16
    state = {k: v.half() if v.is_floating_point() else v for k, v in hf.state_dict().items()}
    name = "classifier.weight"
    state[name] = state[name].t().contiguous().t()  # same values, non-contiguous (column-major) layout
    assert not state[name].is_contiguous()
    shared = torch.cat([state["classifier.bias"], state["mobilevitv2.conv_stem.normalization.bias"]])
    state["classifier.bias"] = shared[:4]
    state["mobilevitv2.conv_stem.normalization.bias"] = shared[4:]
    assert state["classifier.bias"].untyped_storage().data_ptr() == state["mobilevitv2.conv_stem.normalization.bias"].untyped_storage().data_ptr()
    folder = tmp_path / "hf-bin"
    folder.mkdir()
    (folder / "config.json").write_text(hf.config.to_json_string())
    torch.save(state, folder / "pytorch_model.bin")

    x = pixels(13, 2, 128, 128)
    np.save(tmp_path / "x.npy", x)
    args = {"pixels": str(tmp_path / "x.npy"), "out": str(tmp_path / "out.npz"),
            "checkpoints": {"timm_bin": str(tmp_path / "timm-bin"), "timm_pth": str(tmp_path / "timm.pth"), "hf_fp16": str(folder)}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", BLOCKER + BLOCKED_CHILD, json.dumps(args)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "out.npz")
    theirs_timm = timm_logits(timm_ref, x)
    assert relative_error(out["timm_bin"], theirs_timm) < TOL and str(out["timm_bin_source"]) == "timm"
    assert relative_error(out["timm_pth"], theirs_timm) < TOL
    assert relative_error(out["hf_fp16"], run_reference(hf, x).logits) < TOL and str(out["hf_fp16_source"]) == "transformers"
