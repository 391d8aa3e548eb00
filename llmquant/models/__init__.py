"""Architecture role maps (data), model loading, the rotation plan and tiny random models."""

from llmquant.models.adapters import SUPPORTED_ARCHITECTURES, ArchAdapter, get_adapter
from llmquant.models.loading import load_model
from llmquant.models.rotate import (
    RotationPlan,
    install_rotation_modules,
    load_rotated_pretrained,
    rotate_model,
)
from llmquant.models.tiny import tiny_random_model

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "ArchAdapter",
    "RotationPlan",
    "get_adapter",
    "install_rotation_modules",
    "load_model",
    "load_rotated_pretrained",
    "rotate_model",
    "tiny_random_model",
]
