"""The server's merge of the clients' tips: near-duplicates become one, counted.

Clients that play different games often write the same advice in other words
("Open containers before looking for items inside" / "Always open a container
before taking things out of it"). Tips are compared by the cosine of their
sentence embeddings: all-MiniLM-L6-v2, mean-pooled, the offline sentence encoder
the project already ships (`spry.vision.clip.load_sentence_tower`). Exact repeats
(case and final punctuation aside) are one tip before any embedding.

`merge_tips` clusters greedily in a fixed order: a tip joins the most similar
cluster whose first tip it matches at `threshold` or more, else starts its own.
A cluster's support is the number of sources (clients, and the previous shared
set) that wrote one of its tips; the first-written tip speaks for it. The
`max_tips` most supported clusters are kept (ties: the earlier written).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> (N, D) unit rows
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Tip:
    """A merged tip: its text and how many sources wrote it (or a near-copy)."""

    text: str
    support: int


class SentenceEmbedder:
    """Unit-norm sentence embeddings from a locked encoder (MiniLM by default)."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, max_length: int = 64) -> None:
        self.name = name
        self.max_length = max_length
        self._tower = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if self._tower is None:
            from ...vision.clip import load_sentence_tower

            self._tower = load_sentence_tower(self.name, self.max_length)
        if not texts:
            return np.zeros((0, self._tower.width), dtype=np.float32)
        with torch.no_grad():
            embeds = self._tower(list(texts)).embeds
        unit = torch.nn.functional.normalize(embeds.float(), dim=-1)
        return unit.cpu().numpy()


def same_text(tip: str) -> str:
    """The key under which exact repeats are one tip."""
    return " ".join(tip.lower().split()).rstrip(".!")


def merge_tips(
    sources: Sequence[Sequence[str]],
    embed: Embedder,
    *,
    threshold: float,
    max_tips: int,
) -> list[Tip]:
    """The de-duplicated tips of all `sources`, most supported first, capped.

    `sources` are tip lists in a fixed order (the caller sorts them: the order
    decides which wording speaks for a cluster and breaks ties).
    """
    texts: list[str] = []  # distinct tips, first wording, in order
    writers: list[set[int]] = []
    index: dict[str, int] = {}
    for source, tips in enumerate(sources):
        for tip in tips:
            key = same_text(tip)
            if not key:
                continue
            if key not in index:
                index[key] = len(texts)
                texts.append(tip.strip())
                writers.append(set())
            writers[index[key]].add(source)
    if not texts:
        return []
    vectors = embed(texts)
    heads: list[int] = []  # the first tip of each cluster
    members: list[set[int]] = []  # each cluster's writers
    for i in range(len(texts)):
        if heads:
            similar = vectors[heads] @ vectors[i]
            best = int(np.argmax(similar))
            if float(similar[best]) >= threshold:
                members[best] |= writers[i]
                continue
        heads.append(i)
        members.append(set(writers[i]))
    order = sorted(range(len(heads)), key=lambda c: (-len(members[c]), heads[c]))
    return [Tip(texts[heads[c]], len(members[c])) for c in order[:max_tips]]
