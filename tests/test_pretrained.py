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
