"""Which CLIP a vision task runs on, and the offline CLIP's settings, declared once.

CLIPScope and SEP both run on the project's own CLIP (`spry.vision.build`) by
default, or on a transformers `CLIPModel` a user has (`clip=<name or folder>`):
the same option, the same image-tower shape and training size options for the
offline one, the same checks, and the same build (or cache load). A vision
task's Options extend `OfflineClipOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError
from .base import TaskOptions


@dataclass(frozen=True)
class OfflineClipOptions(TaskOptions):
    """The CLIP (`clip`) and the offline CLIP's tower and training size (`clip-*`)."""

    clip: str = field(
        default="offline",
        metadata={"help": "offline | a transformers CLIPModel name or folder"},
    )
    clip_epochs: int = field(default=3, metadata={"help": "offline CLIP: epochs"})
    clip_max_train: int = field(
        default=0, metadata={"help": "offline CLIP: train images per set (0: all)"}
    )
    clip_width: int = field(default=128, metadata={"help": "offline CLIP: ViT width"})
    clip_depth: int = field(default=4, metadata={"help": "offline CLIP: ViT layers"})
    clip_heads: int = field(default=4, metadata={"help": "offline CLIP: ViT heads"})
    clip_patch: int = field(default=4, metadata={"help": "offline CLIP: patch side"})

    def __post_init__(self) -> None:
        if not self.clip.strip():
            raise ConfigError(
                "`clip` should be 'offline' or a CLIPModel name or folder"
            )
        self.require_at_least(
            1, "clip_epochs", "clip_width", "clip_depth", "clip_heads", "clip_patch"
        )
        self.require_at_least(0, "clip_max_train")

    def offline_clip(self, held_out_classes: tuple[str, ...] = ()) -> Any:
        """The offline CLIP these options name: built once, then from the cache."""
        from ..vision.build import OfflineClipConfig, build_offline_clip
        from ..vision.vit import ViTConfig

        config = OfflineClipConfig(
            vit=ViTConfig(
                width=self.clip_width,
                depth=self.clip_depth,
                heads=self.clip_heads,
                patch_size=self.clip_patch,
            ),
            epochs=self.clip_epochs,
            max_train_per_set=self.clip_max_train,
            held_out_classes=held_out_classes,
        )
        model, _ = build_offline_clip(config, progress=False)
        return model

    def vision_language_model(self, held_out_classes: tuple[str, ...] = ()) -> Any:
        """The CLIP `clip` names: the offline one (built or cached) or a real one.

        `held_out_classes` are kept out of the offline CLIP's training; a real
        CLIP is used as it is. Either implements `spry.vision.clip.LayerwiseClip`.
        """
        if self.clip == "offline":
            return self.offline_clip(held_out_classes)
        from ..vision.clip import load_transformers_clip

        return load_transformers_clip(self.clip)
