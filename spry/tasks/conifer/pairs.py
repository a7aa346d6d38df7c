"""Conifer's data: seeded instructions paired with their reference responses.

Apart from `instructions` (drawing an instruction) and `writer` (answering one),
since the writer reads instructions: here both meet, without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .instructions import (
    LEVELS,
    MAX_DRAWS,
    Instruction,
    Unsatisfiable,
    draw_instruction,
    usable_sentence,
)
from .writer import write_reference


def build_instructions(
    sentences: Sequence[str],
    polarities: Sequence[str],
    *,
    per_level: int,
    seed: int,
    levels: Sequence[int] = LEVELS,
) -> list[tuple[Instruction, str]]:
    """`per_level` instructions of each level with their reference responses.

    Interleaved by level (1, 2, ..., 5, 1, 2, ...), so a prefix keeps every level.
    Instruction i of level L is drawn from (seed, L, i) alone; the `sentences`
    used are only the usable ones (`usable_sentence`).
    """
    spaced = [" ".join(s.split()) for s in sentences]  # single spaces
    keep = [i for i, s in enumerate(spaced) if usable_sentence(s)]
    texts = [spaced[i] for i in keep]
    signs = [polarities[i] for i in keep]
    made: dict[int, list[tuple[Instruction, str]]] = {lv: [] for lv in levels}
    for level in levels:
        for index in range(per_level):
            rng = np.random.default_rng([seed, level, index])
            for _ in range(MAX_DRAWS):
                try:
                    instruction = draw_instruction(level, texts, signs, rng)
                    made[level].append((instruction, write_reference(instruction)))
                    break
                except Unsatisfiable:
                    continue
            else:
                raise Unsatisfiable(
                    f"no satisfiable level-{level} instruction in {MAX_DRAWS} draws"
                )
    return [made[lv][i] for i in range(per_level) for lv in levels]
