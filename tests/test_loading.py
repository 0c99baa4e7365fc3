"""Loading checkpoints (strict checks, shards, broken files), dtypes, batch-norm folding, state
dicts, seeded initialisation, and the checks on the models' inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy

from conftest import require

torch = require("torch")
transformers = require("transformers")

from numpy_mvit2 import (  # noqa: E402
    CheckpointError,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)
from numpy_mvit2.weights import expected_shapes  # noqa: E402
from reference import make_reference, relative_error, run_reference, save_reference  # noqa: E402

NUM_LABELS = 5
SIZE = 64


def small_config(**kwargs) -> MobileViTV2Config:
    defaults = dict(width_multiplier=0.5, num_labels=NUM_LABELS, aspp_out_channels=32)
    return MobileViTV2Config(**{**defaults, **kwargs})


def pixels(batch=2, size=SIZE, seed=0, channels=3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, channels, size, size)).astype(np.float32)


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    return safetensors_numpy.load_file(str(folder / "model.safetensors"))


def copy_with_tensors(source: Path, target: Path, tensors: dict[str, np.ndarray]) -> Path:
    """A copy of the checkpoint folder ``source`` whose model.safetensors holds ``tensors``."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "config.json", target / "config.json")
    safetensors_numpy.save_file(tensors, str(target / "model.safetensors"))
    return target


def write_shards(folder: Path, tensors: dict[str, np.ndarray], num_shards: int) -> dict:
    """Split ``tensors`` into ``num_shards`` files with a model.safetensors.index.json, as transformers does."""
    names = list(tensors)
    weight_map = {}
    for i in range(num_shards):
        shard = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::num_shards]}
        safetensors_numpy.save_file(part, str(folder / shard))
        weight_map.update({k: shard for k in part})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return index


# --------------------------------------------------------------------------------------------
# Reference checkpoints, built once per module
# --------------------------------------------------------------------------------------------


def saved_reference(tmp_path_factory, head: str, seed: int):
    """(folder, torch model) of a randomized transformers model of ``head``, written to disk."""
    folder = tmp_path_factory.mktemp(head)
    model = make_reference(small_config(), head, seed=seed)
    save_reference(model, folder)
    return folder, model


@pytest.fixture(scope="module")
def classification_ref(tmp_path_factory):
    return saved_reference(tmp_path_factory, "classification", seed=1)


@pytest.fixture(scope="module")
def base_ref(tmp_path_factory):
    return saved_reference(tmp_path_factory, "base", seed=2)


@pytest.fixture(scope="module")
def segmentation_ref(tmp_path_factory):
    return saved_reference(tmp_path_factory, "segmentation", seed=3)


@pytest.fixture(scope="module")
def classifier(classification_ref):
    return MobileViTV2ForImageClassification.from_pretrained(classification_ref[0])


@pytest.fixture(scope="module")
def x():
    return pixels()


@pytest.fixture(scope="module")
def ref_logits(classification_ref, x):
    """transformers' logits for ``x``, computed once."""
    return run_reference(classification_ref[1], x).logits


# --------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------


def test_reference_loads_and_matches(classifier, x, ref_logits):
    assert relative_error(classifier(x).logits, ref_logits) < 1e-5


def test_num_batches_tracked_accepted(classification_ref, tmp_path, x, classifier):
    folder, _ = classification_ref
    tensors = read_tensors(folder)
    assert any(k.endswith("num_batches_tracked") for k in tensors), "transformers writes BN step counters"
    without = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    loaded = MobileViTV2ForImageClassification.from_pretrained(copy_with_tensors(folder, tmp_path, without))
    np.testing.assert_array_equal(loaded(x).logits, classifier(x).logits)


def test_strict_loading_lists_every_problem(classification_ref, tmp_path):
    folder, _ = classification_ref
    tensors = read_tensors(folder)
    missing = "mobilevitv2.encoder.layer.3.conv_kxk.convolution.weight"
    missing_shape = tuple(tensors.pop(missing).shape)
    tensors["mobilevitv2.encoder.layer.9.surprise.weight"] = np.zeros((3, 7), np.float32)
    tensors["classifier.weight"] = np.zeros((NUM_LABELS + 1, 128), np.float32)
    expected = expected_shapes(small_config(), "classification")
    target = copy_with_tensors(folder, tmp_path / "broken", tensors)

    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(target)
    message = str(info.value)
    assert str(target / "model.safetensors") in message
    assert missing in message and str(missing_shape) in message
    assert "mobilevitv2.encoder.layer.9.surprise.weight" in message and "(3, 7)" in message
    assert "classifier.weight" in message
    assert str(expected["classifier.weight"]) in message and str((NUM_LABELS + 1, 128)) in message
    assert "missing" in message and "unexpected" in message and "mismatch" in message
    assert "num_batches_tracked" not in message


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_strict_loading_each_problem_alone(classification_ref, tmp_path, problem):
    folder, _ = classification_ref
    tensors = read_tensors(folder)
    key = "mobilevitv2.encoder.layer.2.transformer.layer.0.ffn.conv1.convolution.bias"
    if problem == "missing":
        del tensors[key]
    elif problem == "unexpected":
        tensors["pooler.dense.weight"] = np.ones((2, 2), np.float32)
        key = "pooler.dense.weight"
    else:
        tensors[key] = np.zeros(tensors[key].shape[0] + 1, np.float32)
    target = copy_with_tensors(folder, tmp_path, tensors)
    with pytest.raises(CheckpointError, match=problem if problem != "shape" else "mismatch") as info:
        MobileViTV2ForImageClassification.from_pretrained(target)
    assert key in str(info.value)
    assert str(target) in str(info.value)


def test_config_not_matching_weights(classification_ref, tmp_path):
    folder, _ = classification_ref
    target = tmp_path / "wider"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    config["width_multiplier"] = 0.75
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(target)
    message = str(info.value)
    assert "mismatch" in message
    assert str(target / "model.safetensors") in message
    wide = expected_shapes(MobileViTV2Config(width_multiplier=0.75, num_labels=NUM_LABELS), "classification")
    narrow = expected_shapes(small_config(), "classification")
    assert f"mobilevitv2.conv_stem.convolution.weight: expected {wide['mobilevitv2.conv_stem.convolution.weight']}, " \
           f"found {narrow['mobilevitv2.conv_stem.convolution.weight']}" in message
    assert f"classifier.weight: expected {wide['classifier.weight']}, found {narrow['classifier.weight']}" in message


def test_num_labels_not_matching_weights(classification_ref, tmp_path):
    folder, _ = classification_ref
    target = tmp_path / "labels"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    config["id2label"] = {str(i): f"class {i}" for i in range(NUM_LABELS + 2)}
    config["label2id"] = None
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(target)
    assert f"classifier.bias: expected ({NUM_LABELS + 2},), found ({NUM_LABELS},)" in str(info.value)


# --------------------------------------------------------------------------------------------
# Sharded checkpoints
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_shards", [2, 3])
def test_sharded_checkpoint(classification_ref, classifier, tmp_path, x, num_shards):
    folder, _ = classification_ref
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    write_shards(tmp_path, read_tensors(folder), num_shards)
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded(x).logits, classifier(x).logits)
    for name, value in classifier.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value, err_msg=name)


def test_sharded_checkpoint_written_by_transformers(classification_ref, classifier, tmp_path, x):
    _, model = classification_ref
    model.save_pretrained(str(tmp_path), max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) >= 2
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded(x).logits, classifier(x).logits)


def test_sharded_missing_shard(classification_ref, tmp_path):
    folder, _ = classification_ref
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    write_shards(tmp_path, read_tensors(folder), 3)
    lost = tmp_path / "model-00002-of-00003.safetensors"
    lost.unlink()
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert str(lost) in str(info.value)


def test_sharded_tensor_not_in_its_shard(classification_ref, tmp_path):
    folder, _ = classification_ref
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    index = write_shards(tmp_path, read_tensors(folder), 2)
    index["weight_map"]["mobilevitv2.conv_stem.convolution.weight"] = "model-00002-of-00002.safetensors"
    if "mobilevitv2.conv_stem.convolution.weight" in safetensors_numpy.load_file(str(tmp_path / "model-00002-of-00002.safetensors")):
        index["weight_map"]["mobilevitv2.conv_stem.convolution.weight"] = "model-00001-of-00002.safetensors"
    shard = index["weight_map"]["mobilevitv2.conv_stem.convolution.weight"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    message = str(info.value)
    assert "mobilevitv2.conv_stem.convolution.weight" in message
    assert str(tmp_path / shard) in message


def test_sharded_index_names_unknown_tensor(classification_ref, tmp_path):
    """A tensor in the index that no shard holds, under a name the model does not have."""
    folder, _ = classification_ref
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    index = write_shards(tmp_path, read_tensors(folder), 2)
    index["weight_map"]["mobilevitv2.ghost.weight"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(CheckpointError, match="mobilevitv2.ghost.weight"):
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"metadata": {}}', '{"weight_map": [1, 2]}'])
def test_sharded_bad_index(classification_ref, tmp_path, content):
    folder, _ = classification_ref
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert str(index) in str(info.value)


# --------------------------------------------------------------------------------------------
# Missing and broken files
# --------------------------------------------------------------------------------------------


def test_folder_without_weights(classification_ref, tmp_path):
    shutil.copy(classification_ref[0] / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "model.safetensors" in message


def test_nonexistent_folder(tmp_path):
    missing = tmp_path / "does-not-exist"
    for cls in (MobileViTV2Model, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation):
        with pytest.raises(CheckpointError) as info:
            cls.from_pretrained(missing)
        assert str(missing) in str(info.value)


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 7, b"this is not a safetensors file" * 10, b"\xff" * 64])
def test_corrupt_safetensors(classification_ref, tmp_path, garbage):
    shutil.copy(classification_ref[0] / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(garbage)
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(info.value)


def test_truncated_safetensors(classification_ref, tmp_path):
    data = (classification_ref[0] / "model.safetensors").read_bytes()
    shutil.copy(classification_ref[0] / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(info.value)


@pytest.mark.parametrize("lie", ["past_the_end", "overlapping", "wrong_length"])
def test_safetensors_header_that_lies_about_offsets(classification_ref, tmp_path, lie):
    import json as _json
    import struct

    data = (classification_ref[0] / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = _json.loads(data[8 : 8 + length])
    names = [k for k in header if k != "__metadata__"]
    entry = header[names[0]]
    start, end = entry["data_offsets"]
    if lie == "past_the_end":
        entry["data_offsets"] = [start, len(data) * 2]
    elif lie == "overlapping":
        header[names[1]]["data_offsets"] = entry["data_offsets"]
    else:
        entry["data_offsets"] = [start, end - 4]
    body = _json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    shutil.copy(classification_ref[0] / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body + data[8 + length :])
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    assert str(tmp_path / "model.safetensors") in str(info.value)


def test_weights_preference_order(classification_ref, tmp_path):
    """transformers' order: model.safetensors, its index, pytorch_model.bin, its index."""
    from numpy_mvit2.weights.files import WEIGHT_FILES, find_weights

    assert WEIGHT_FILES == ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    for name in reversed(WEIGHT_FILES):
        (tmp_path / name).write_bytes(b"")
        assert find_weights(tmp_path) == tmp_path / name


# --------------------------------------------------------------------------------------------
# Loading one class's checkpoint into another
# --------------------------------------------------------------------------------------------


def test_base_model_from_classification_checkpoint(classification_ref, x):
    folder, _ = classification_ref
    ours = MobileViTV2Model.from_pretrained(folder)
    assert not any(k.startswith(("classifier", "mobilevitv2.")) for k in ours.state_dict())
    theirs = transformers.MobileViTV2Model.from_pretrained(str(folder)).eval()
    out = ours(x, output_hidden_states=True)
    ref = run_reference(theirs, x, output_hidden_states=True)
    assert relative_error(out.last_hidden_state, ref.last_hidden_state) < 1e-5
    assert relative_error(out.pooler_output, ref.pooler_output) < 1e-5
    assert len(out.hidden_states) == len(ref.hidden_states) == 5
    for ours_h, theirs_h in zip(out.hidden_states, ref.hidden_states):
        assert relative_error(ours_h, theirs_h) < 1e-5


def test_base_model_from_segmentation_checkpoint(segmentation_ref, x):
    folder, _ = segmentation_ref
    ours = MobileViTV2Model.from_pretrained(folder)
    theirs = transformers.MobileViTV2Model.from_pretrained(str(folder)).eval()
    assert relative_error(ours(x).last_hidden_state, run_reference(theirs, x).last_hidden_state) < 1e-5


def test_base_model_from_base_checkpoint(base_ref, x):
    folder, model = base_ref
    ours = MobileViTV2Model.from_pretrained(folder)
    assert relative_error(ours(x).last_hidden_state, run_reference(model, x).last_hidden_state) < 1e-5


def test_classifier_from_backbone_checkpoint_lists_missing_head(base_ref):
    folder, _ = base_ref
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForImageClassification.from_pretrained(folder)
    message = str(info.value)
    assert "missing" in message
    assert f"classifier.weight ({NUM_LABELS}, 256)" in message
    assert f"classifier.bias ({NUM_LABELS},)" in message
    assert "mobilevitv2.conv_stem" not in message  # the backbone itself was found
    assert str(folder / "model.safetensors") in message


def test_segmentation_from_backbone_checkpoint_lists_missing_head(base_ref):
    folder, _ = base_ref
    with pytest.raises(CheckpointError) as info:
        MobileViTV2ForSemanticSegmentation.from_pretrained(folder)
    message = str(info.value)
    assert "segmentation_head.classifier.convolution.weight" in message
    assert "segmentation_head.aspp.project.convolution.weight" in message


# --------------------------------------------------------------------------------------------
# dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, "float64", np.dtype("float64")])
def test_float64(classification_ref, classifier, x, ref_logits, dtype):
    folder, _ = classification_ref
    model64 = MobileViTV2ForImageClassification.from_pretrained(folder, dtype=dtype)
    out = model64(x, output_hidden_states=True)
    assert out.logits.dtype == np.float64
    assert all(h.dtype == np.float64 for h in out.hidden_states)
    assert all(v.dtype == np.float64 for v in model64.state_dict().values())
    assert relative_error(out.logits, ref_logits) < 1e-5
    assert relative_error(out.logits, classifier(x).logits) < 1e-5


def test_float32_default(classifier, x):
    out = classifier(x, output_hidden_states=True)
    assert out.logits.dtype == np.float32
    assert all(h.dtype == np.float32 for h in out.hidden_states)
    with pytest.warns(UserWarning, match=r"float64 .* dtype=np\.float64"):  # cast, and said so
        assert classifier(x.astype(np.float64)).logits.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float16", np.float16, int, np.int32, "int64", "bfloat16", "nonsense", object])
def test_bad_dtype(classification_ref, dtype):
    with pytest.raises(ValueError, match="dtype"):
        MobileViTV2ForImageClassification.from_pretrained(classification_ref[0], dtype=dtype)
    with pytest.raises(ValueError, match="dtype"):
        MobileViTV2Model(small_config(), dtype=dtype)


# --------------------------------------------------------------------------------------------
# Batch-norm folding and state dicts
# --------------------------------------------------------------------------------------------


def test_unfolded_same_outputs(classification_ref, classifier, x):
    folder, _ = classification_ref
    unfolded = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=False)
    folded_out = classifier(x, output_hidden_states=True)
    unfolded_out = unfolded(x, output_hidden_states=True)
    assert relative_error(unfolded_out.logits, folded_out.logits) < 1e-5
    for a, b in zip(unfolded_out.hidden_states, folded_out.hidden_states):
        assert relative_error(a, b) < 1e-5


def test_unfolded_state_dict_keeps_checkpoint_names(classification_ref):
    folder, _ = classification_ref
    unfolded = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=False)
    state = unfolded.state_dict()
    assert any(".normalization.running_var" in k for k in state)
    tensors = {k: v for k, v in read_tensors(folder).items() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)


def test_folded_state_dict_has_no_normalization(classifier):
    assert not any(".normalization." in k for k in classifier.state_dict())


def test_unfolded_state_dict_loads_into_transformers(classification_ref, x, ref_logits):
    folder, _ = classification_ref
    unfolded = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=False)
    theirs = make_reference(small_config(), "classification", seed=99)
    result = theirs.load_state_dict({k: torch.from_numpy(v) for k, v in unfolded.state_dict().items()}, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    assert relative_error(run_reference(theirs, x).logits, ref_logits) == 0.0


@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_state_dict_round_trip(classification_ref, x, fold):
    folder, _ = classification_ref
    model = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=fold)
    again = MobileViTV2ForImageClassification(model.config, state_dict=model.state_dict())
    assert relative_error(again(x).logits, model(x).logits) < 1e-5


def test_state_dict_round_trip_segmentation(segmentation_ref, x):
    folder, model = segmentation_ref
    ours = MobileViTV2ForSemanticSegmentation.from_pretrained(folder, fold_batch_norm=False)
    again = MobileViTV2ForSemanticSegmentation(ours.config, state_dict=ours.state_dict())
    assert relative_error(again(x).logits, run_reference(model, x).logits) < 1e-5


def test_state_dict_from_torch_model(classification_ref, classifier, x):
    """Model(config, state_dict=torch_model.state_dict() as NumPy) equals from_pretrained."""
    folder, model = classification_ref
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = MobileViTV2ForImageClassification(MobileViTV2Config.from_pretrained(folder), state_dict=state)
    np.testing.assert_array_equal(ours(x).logits, classifier(x).logits)


def test_state_dict_constructor_checks():
    state = MobileViTV2ForImageClassification(small_config(), fold_batch_norm=False).state_dict()
    del state["classifier.bias"]
    with pytest.raises(CheckpointError, match="classifier.bias"):
        MobileViTV2ForImageClassification(small_config(), state_dict=state)


# --------------------------------------------------------------------------------------------
# Seeded random initialisation
# --------------------------------------------------------------------------------------------


def test_seeded_init_reproducible():
    config = small_config()
    a = MobileViTV2ForImageClassification(config, seed=0).state_dict()
    b = MobileViTV2ForImageClassification(config, seed=0).state_dict()
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    default = MobileViTV2ForImageClassification(config).state_dict()
    assert all(np.array_equal(a[k], default[k]) for k in a)


def test_seeded_init_differs_between_seeds(x):
    config = small_config()
    a = MobileViTV2ForImageClassification(config, seed=0)
    b = MobileViTV2ForImageClassification(config, seed=1)
    weights = [k for k, v in a.state_dict().items() if v.ndim > 1]
    assert all(not np.array_equal(a.state_dict()[k], b.state_dict()[k]) for k in weights)
    assert not np.allclose(a(x).logits, b(x).logits)


def test_seeded_init_covers_expected_shapes():
    config = small_config()
    for cls, head in ((MobileViTV2Model, "base"), (MobileViTV2ForImageClassification, "classification"),
                      (MobileViTV2ForSemanticSegmentation, "segmentation")):
        state = cls(config, seed=3, fold_batch_norm=False).state_dict()
        assert {k: v.shape for k, v in state.items()} == expected_shapes(config, head)


def test_seeded_init_default_config_scale():
    config = MobileViTV2Config()
    image = pixels(batch=1, size=256, seed=5)
    out = MobileViTV2Model(config, seed=0)(image, output_hidden_states=True)
    for h in (*out.hidden_states, out.last_hidden_state, out.pooler_output):
        assert np.all(np.isfinite(h))
        assert 0.05 < float(np.std(h)) < 20.0
        assert float(np.max(np.abs(h))) < 1e3
    assert out.last_hidden_state.shape == (1, 512, 8, 8)
    logits = MobileViTV2ForImageClassification(MobileViTV2Config(num_labels=10), seed=0)(image).logits
    assert logits.shape == (1, 10)
    assert np.all(np.isfinite(logits)) and 0.05 < float(np.std(logits)) < 20.0


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((3, SIZE, SIZE), np.float32), ["4-D", "(3, 64, 64)"]),
        (np.zeros((1, 1, 3, SIZE, SIZE), np.float32), ["4-D"]),
        (np.zeros((1, 4, SIZE, SIZE), np.float32), ["channels", "num_channels=3"]),
        (np.zeros((1, SIZE, SIZE, 3), np.float32), ["channels"]),
        (np.zeros((0, 3, SIZE, SIZE), np.float32), ["empty"]),
        (np.full((1, 3, SIZE, SIZE), "a"), ["dtype"]),
        (None, ["pixel_values"]),
    ],
    ids=["3d", "5d", "4-channels", "channels-last", "empty-batch", "strings", "none"],
)
def test_bad_pixel_values(classifier, bad, words):
    with pytest.raises(ValueError) as info:
        classifier(bad)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_input_too_small(classifier):
    with pytest.raises(ValueError) as info:
        classifier(np.zeros((1, 3, 16, 16), np.float32))
    message = str(info.value)
    assert "too small" in message
    assert "16x16" in message and "patch_size=2" in message and "at least 33" in message


def test_smallest_inputs_that_work(classifier, classification_ref):
    _, model = classification_ref
    for shape in ((1, 3, 48, 48), (1, 3, 70, 50)):
        image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        assert relative_error(classifier(image).logits, run_reference(model, image).logits) < 1e-5


def test_integer_pixels_accepted(classifier):
    image = np.random.default_rng(0).integers(0, 255, (1, 3, SIZE, SIZE))
    np.testing.assert_array_equal(classifier(image).logits, classifier(image.astype(np.float32)).logits)


# --------------------------------------------------------------------------------------------
# Segmentation labels
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(segmentation_ref):
    return MobileViTV2ForSemanticSegmentation.from_pretrained(segmentation_ref[0])


@pytest.mark.parametrize("shape", [(2, 1, SIZE, SIZE), (2, SIZE * SIZE), (SIZE, SIZE), (3, SIZE, SIZE)])
def test_segmentation_labels_wrong_shape(segmenter, x, shape):
    with pytest.raises(ValueError, match="labels"):
        segmenter(x, labels=np.zeros(shape, np.int64))


def test_segmentation_labels_loss_matches(segmenter, segmentation_ref, x):
    _, model = segmentation_ref
    labels = np.random.default_rng(1).integers(0, NUM_LABELS, (2, SIZE, SIZE))
    labels[0, :5] = 255  # ignored
    out = segmenter(x, labels=labels)
    ref = run_reference(model, x, labels=torch.from_numpy(labels))
    assert abs(float(out.loss) - float(ref.loss)) < 1e-4 * (1 + abs(float(ref.loss)))


def test_segmentation_one_label_with_labels():
    config = small_config(num_labels=1)
    model = MobileViTV2ForSemanticSegmentation(config, seed=0)
    x = pixels(batch=1)
    labels = np.zeros((1, SIZE, SIZE), np.int64)
    with pytest.raises(ValueError, match="^The number of labels should be greater than one$"):
        model(x, labels=labels)
    theirs = transformers.MobileViTV2ForSemanticSegmentation(transformers.MobileViTV2Config(
        width_multiplier=0.5, num_labels=1, aspp_out_channels=32)).eval()
    with pytest.raises(ValueError, match="^The number of labels should be greater than one$"):
        with torch.no_grad():
            theirs(torch.from_numpy(x), labels=torch.from_numpy(labels))
    assert model(x).logits.shape == (1, 1, SIZE // 32, SIZE // 32)  # without labels it runs
