"""The base-to-new protocol over the offline CLIP's 20 classes, and its score.

Zhou et al., "Conditional Prompt Learning for Vision-Language Models" (CoCoOp),
CVPR 2022, arxiv.org/abs/2203.05557, Sec. 4.1, the protocol CoOp, CoCoOp and SEP
report: each data set's classes are split in two halves, prompts are learned on
the first ("base") half and tested on both, each half classified among its own
classes only, and the harmonic mean H = 2 * base * new / (base + new) sums them
up. The split here is fixed and stated: the first half of each image set's class
list is base (as CoOp's `subsample_classes("base")` keeps the lower half of the
sorted labels), the second half new:

- base: t-shirt, trousers, pullover, dress, coat; zero, one, two, three, four
- new:  sandal, shirt, sneaker, bag, ankle boot; five, six, seven, eight, nine
"""

from __future__ import annotations

from dataclasses import dataclass

from ...vision.contrastive import CLASS_NAMES, TEMPLATES

IMAGE_SETS = ("fashion-mnist", "digits")


@dataclass(frozen=True)
class ClassSplit:
    """Every class (global id = position), and which ids are base and new.

    Parameters
    ----------
    names : tuple[str, ...]
        Class names, the image sets' lists one after the other.
    image_set : tuple[str, ...]
        Each class's image set.
    base, new : tuple[int, ...]
        Global ids of the base and the new classes.
    """

    names: tuple[str, ...]
    image_set: tuple[str, ...]
    base: tuple[int, ...]
    new: tuple[int, ...]

    def caption(self, c: int) -> str:
        """The hand-written caption of class `c` (its set's first template)."""
        return TEMPLATES[self.image_set[c]][0].format(name=self.names[c])


def base_to_new_split(image_sets: tuple[str, ...] = IMAGE_SETS) -> ClassSplit:
    """The first half of each set's classes is base, the second half new."""
    names: list[str] = []
    sets: list[str] = []
    base: list[int] = []
    new: list[int] = []
    for image_set in image_sets:
        own = CLASS_NAMES[image_set]
        half = len(own) // 2
        for i, name in enumerate(own):
            (base if i < half else new).append(len(names))
            names.append(name)
            sets.append(image_set)
    return ClassSplit(tuple(names), tuple(sets), tuple(base), tuple(new))


def harmonic_mean(base: float, new: float) -> float:
    """H = 2 b n / (b + n), 0 when both are 0.

    >>> harmonic_mean(0.8, 0.4)
    0.5333333333333333
    """
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)
