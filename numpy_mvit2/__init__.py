"""MobileViTV2 in plain NumPy, reproducing transformers' ``MobileViTV2*`` models.

    >>> from numpy_mvit2 import MobileViTV2ForImageClassification
    >>> model = MobileViTV2ForImageClassification.from_pretrained("path/to/checkpoint-folder")
    >>> logits = model(pixel_values).logits          # pixel_values: (B, 3, H, W) float32
"""

from . import fast, team  # noqa: F401 - numpy_mvit2.fast.THREADS, numpy_mvit2.team.start() (README, "Speed")
from .config import MobileViTV2Config, make_divisible
from .errors import ConfigError
from .modeling import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    MobileViTV2PreTrainedModel,
    SemanticSegmenterOutput,
)
from .processing import (
    ImageLoadError,
    MobileViTImageProcessor,
    load_image,
    post_process_image_classification,
    post_process_semantic_segmentation,
)
from .summary import summarize
from .weights import CheckpointError

__version__ = "0.1.0"

__all__ = [
    "BaseModelOutputWithPoolingAndNoAttention",
    "CheckpointError",
    "ConfigError",
    "ImageClassifierOutputWithNoAttention",
    "ImageLoadError",
    "MobileViTImageProcessor",
    "MobileViTV2Config",
    "MobileViTV2ForImageClassification",
    "MobileViTV2ForSemanticSegmentation",
    "MobileViTV2Model",
    "MobileViTV2PreTrainedModel",
    "SemanticSegmenterOutput",
    "load_image",
    "make_divisible",
    "post_process_image_classification",
    "post_process_semantic_segmentation",
    "summarize",
]
