"""What the offline CLIP learns from and is scored by: captions, the loss, zero-shot.

The caption templates of each offline image set (`TEMPLATES`) turn class names into
what the locked text tower reads; `contrastive_loss` is CLIP's symmetric InfoNCE
with a class's caption as every one of its images' text; `zero_shot_accuracy`
classifies images by their nearest class text feature, CLIP's prompt ensemble.
Prompt-tuning tasks (SEP) share the templates and class names; the builder
(`spry.vision.build`) trains and reports with the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .clip import VisionLanguageModel
from .images import DIGIT_CLASSES, FASHION_CLASSES

# Caption templates per image set: what the text tower reads for a class. The
# first of each is the one zero-shot prompts lead with.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "a photo of a {name}",
        "a black and white photo of a {name}",
        "a grey picture of a {name}",
        "a low resolution photo of a {name}",
        "a photo of the {name}, a piece of clothing",
        "a product photo of a {name}",
    ),
    "digits": (
        "a handwritten digit {name}",
        "a black and white picture of the digit {name}",
        "the number {name}, written by hand",
        "a blurry photo of the handwritten number {name}",
        "a low resolution image of the digit {name}",
        "a scan of a handwritten {name}",
    ),
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": FASHION_CLASSES,
    "digits": DIGIT_CLASSES,
}


def captions(image_set: str) -> list[list[str]]:
    """`[class][template]` captions of one set's class names."""
    return [
        [template.format(name=name) for template in TEMPLATES[image_set]]
        for name in CLASS_NAMES[image_set]
    ]


@torch.no_grad()
def class_text_features(
    model: VisionLanguageModel, image_set: str, batch_size: int = 64
) -> Tensor:
    """`(classes, templates, D)` unit-norm caption features of one set."""
    texts = [c for per_class in captions(image_set) for c in per_class]
    feats = torch.cat(
        [
            model.text_features(texts[i : i + batch_size])
            for i in range(0, len(texts), batch_size)
        ]
    )
    return feats.view(len(CLASS_NAMES[image_set]), len(TEMPLATES[image_set]), -1)


def zero_shot_classifier(template_features: Tensor) -> Tensor:
    """CLIP's prompt ensemble: the templates' mean per class, renormalized."""
    return F.normalize(template_features.mean(dim=1), dim=-1)  # (classes, D)


@torch.no_grad()
def zero_shot_accuracy(
    model: VisionLanguageModel,
    images: Tensor,
    labels: Tensor,
    classifier: Tensor,
    batch_size: int = 512,
) -> float:
    """Share of `images` whose nearest class text feature is their label's."""
    correct = 0
    for i in range(0, len(images), batch_size):
        feats = model.image_features(images[i : i + batch_size])
        correct += int(
            (feats @ classifier.T).argmax(-1).eq(labels[i : i + batch_size]).sum()
        )
    return correct / max(1, len(images))


def contrastive_loss(
    image_features: Tensor, text_features: Tensor, labels: Tensor, scale: Tensor
) -> Tensor:
    """Symmetric InfoNCE where each text is a class's caption.

    Parameters
    ----------
    image_features : Tensor
        `(B, D)` unit-norm.
    text_features : Tensor
        `(C, D)` unit-norm, one caption per class.
    labels : Tensor
        `(B,)` class of each image, in `[0, C)`.
    scale : Tensor
        CLIP's logit scale.
    """
    logits = scale * image_features @ text_features.T  # (B, C)
    image_to_text = F.cross_entropy(logits, labels)
    onehot = F.one_hot(labels, len(text_features)).T.to(logits.dtype)  # (C, B)
    present = onehot.sum(1) > 0
    targets = onehot[present] / onehot[present].sum(1, keepdim=True)
    log_probs = logits.T[present].log_softmax(dim=-1)  # (C', B)
    text_to_image = -(targets * log_probs).sum(1).mean()
    return (image_to_text + text_to_image) / 2
