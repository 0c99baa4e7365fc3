"""Opt-in checks against the published numbers of the real Apple checkpoints.

These need files this machine cannot download, so the module is collected only when one of the
checkpoint variables is set (see conftest.py), and each test needs its checkpoint and the image:

    NUMPY_MVIT2_IMAGENET_CHECKPOINT=apple/mobilevitv2-1.0-imagenet1k-256   (a repo id, or a folder)
    NUMPY_MVIT2_VOC_CHECKPOINT=apple/mobilevitv2-1.0-voc-deeplabv3
    NUMPY_MVIT2_COCO_CATS=/path/to/000000039769.jpg                    (COCO val2017, two cats)

A repo id is downloaded into the Hugging Face cache on first use (its main branch holds only
pytorch_model.bin, which numpy_mvit2 reads without PyTorch); a folder may hold model.safetensors or
pytorch_model.bin.

The expected values are those of transformers' own integration tests for these checkpoints.
Preprocessing uses transformers' PIL image processor with the checkpoint's preprocessor_config.json.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

IMAGENET = os.environ.get("NUMPY_MVIT2_IMAGENET_CHECKPOINT")
VOC = os.environ.get("NUMPY_MVIT2_VOC_CHECKPOINT")
CATS = os.environ.get("NUMPY_MVIT2_COCO_CATS")


def preprocess(folder: str) -> np.ndarray:
    from conftest import require

    require("transformers")
    from PIL import Image
    from transformers.models.mobilevit.image_processing_pil_mobilevit import MobileViTImageProcessorPil

    processor = MobileViTImageProcessorPil.from_pretrained(folder)
    return processor(images=Image.open(CATS), return_tensors="np")["pixel_values"].astype(np.float32)


@pytest.mark.skipif(not (IMAGENET and CATS), reason="needs NUMPY_MVIT2_IMAGENET_CHECKPOINT and NUMPY_MVIT2_COCO_CATS")
def test_imagenet_checkpoint_published_logits():
    from numpy_mvit2 import MobileViTV2ForImageClassification

    model = MobileViTV2ForImageClassification.from_pretrained(IMAGENET)
    logits = model(preprocess(IMAGENET)).logits
    assert logits.shape == (1, 1000)
    np.testing.assert_allclose(logits[0, :3], [-1.6336, -0.073204, -0.51883], atol=1e-4)
    assert model.config.id2label[int(logits[0].argmax())] == "tabby, tabby cat"


@pytest.mark.skipif(not (VOC and CATS), reason="needs NUMPY_MVIT2_VOC_CHECKPOINT and NUMPY_MVIT2_COCO_CATS")
def test_voc_checkpoint_published_logits():
    from numpy_mvit2 import MobileViTV2ForSemanticSegmentation

    model = MobileViTV2ForSemanticSegmentation.from_pretrained(VOC)
    logits = model(preprocess(VOC)).logits
    assert logits.shape == (1, 21, 32, 32)
    expected = [[7.0863, 7.1525, 6.8201], [6.6931, 6.8770, 6.8933], [6.2978, 7.0366, 6.9636]]
    np.testing.assert_allclose(logits[0, 0, :3, :3], expected, atol=1e-4)


@pytest.mark.skipif(not (VOC and CATS), reason="needs NUMPY_MVIT2_VOC_CHECKPOINT and NUMPY_MVIT2_COCO_CATS")
def test_voc_checkpoint_under_ml_cvnets_behavior(record_property, capsys):
    """The VOC weights were trained in ml-cvnets, whose DeepLabV3 dilates the local conv of stage 5
    (output stride 16); the published logits are transformers', which does not. This runs the
    checkpoint as it was trained and reports how far that is from the published numbers (no bar:
    they were produced by transformers' function)."""
    from numpy_mvit2 import MobileViTV2ForSemanticSegmentation

    pixels = preprocess(VOC)
    as_trained = MobileViTV2ForSemanticSegmentation.from_pretrained(VOC, behavior="ml-cvnets")
    assert as_trained.config.behavior == "ml-cvnets" and as_trained.config.output_stride == 16
    logits = as_trained(pixels).logits
    assert logits.shape == (1, 21, 32, 32) and np.isfinite(logits).all()
    published = np.array([[7.0863, 7.1525, 6.8201], [6.6931, 6.8770, 6.8933], [6.2978, 7.0366, 6.9636]])
    corner = logits[0, 0, :3, :3]
    transformers_logits = MobileViTV2ForSemanticSegmentation.from_pretrained(VOC)(pixels).logits
    whole = float(np.abs(logits - transformers_logits).max() / (1 + np.abs(transformers_logits).max()))
    agree = float((logits.argmax(1) == transformers_logits.argmax(1)).mean())
    report = (f"ml-cvnets behavior: logits[0, 0, :3, :3] differ from the published (transformers') by at most "
              f"{np.abs(corner - published).max():.4f}; over the whole map max|diff| / (1 + max|transformers|) = "
              f"{whole:.4f}; the per-pixel classes agree on {agree:.1%} of the 32x32 map")
    record_property("ml_cvnets_vs_published", report)
    with capsys.disabled():
        print("\n" + report)
