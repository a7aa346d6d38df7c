"""Models: offline default weights, PEFT LoRA wrapping, stable trainable names."""

from .classifier import (
    OFFLINE_MODELS,
    ModelError,
    TrainableModel,
    build_classifier,
    is_head,
    resolve_model_path,
    stable_name,
)

__all__ = [
    "OFFLINE_MODELS",
    "ModelError",
    "TrainableModel",
    "build_classifier",
    "is_head",
    "resolve_model_path",
    "stable_name",
]
