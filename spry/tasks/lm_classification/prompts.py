"""Prompts and label words: how a labelled sentence becomes a question to a causal LM.

MeZO (Malladi et al., 2023, arxiv.org/abs/2305.17333) and LM-BFF before it
(Gao et al., 2021, arxiv.org/abs/2012.15723) classify with a template around the
sentence ("Review: {text}", a newline, "Sentiment:") and one label word per class
(" negative", " positive"): the model's next-token likelihood of each word, read
at the prompt's last position, scores its class. A word is scored by its first token,
so the words of a task need distinct first tokens.

A prompt longer than `max-length` tokens loses the start of its sentence: the
template's head and, above all, its tail (the cue the label word answers) are kept
whole, so a long review is still asked the same question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...config import ConfigError

SLOT = "{text}"


@dataclass(frozen=True)
class PromptTemplate:
    """A template split at its one `{text}` slot: `head + text + tail`.

    Parameters
    ----------
    head : str
        What precedes the sentence ("Review: ").
    tail : str
        What follows it, up to where the label word goes (a newline and "Sentiment:").
    """

    head: str
    tail: str

    @classmethod
    def parse(cls, template: str) -> PromptTemplate:
        """Split `template` at `{text}`; a written backslash-n is a newline.

        A value given as `--set` cannot hold a newline, so the two characters
        backslash and n stand for one (as in the default's TOML spelling).
        """
        template = template.replace("\\n", "\n")
        if template.count(SLOT) != 1:
            raise ConfigError(
                f"`template` should contain {SLOT} exactly once (where the sentence "
                f"goes), got {template!r}"
            )
        head, _, tail = template.partition(SLOT)
        return cls(head=head, tail=tail)

    def fill(self, text: str) -> str:
        return self.head + text + self.tail

    @property
    def word_prefix(self) -> str:
        """What precedes a label word: a space, unless the template ends with one."""
        return "" if self.fill("")[-1:].isspace() else " "

    def token_ids(
        self, tokenizer: Any, texts: Sequence[str], max_length: int
    ) -> list[list[int]]:
        """Each text's prompt as token ids, `max_length` at most.

        The prompt is tokenized whole (as the model would read it), then, when too
        long, the tokens of the sentence are dropped from its start; the template's
        head and tail tokens stay. With only the template left and still too long,
        its end is kept. A slow tokenizer (no offsets) tokenizes the three parts
        apart.
        """
        if getattr(tokenizer, "is_fast", False):
            return [
                _fit(parts, max_length) for parts in self._split_fast(tokenizer, texts)
            ]
        head = _ids(tokenizer, self.head)
        tail = _ids(tokenizer, self.tail)
        return [_fit((head, _ids(tokenizer, t), tail), max_length) for t in texts]

    def _split_fast(
        self, tokenizer: Any, texts: Sequence[str]
    ) -> list[tuple[list[int], list[int], list[int]]]:
        """(head, text, tail) tokens of each whole prompt, split by their offsets.

        A token that straddles a boundary (" the" after "Review: ") belongs to the
        text: the head and tail keep only tokens entirely their own.
        """
        prompts = [self.fill(t) for t in texts]
        encoded = tokenizer(
            prompts, add_special_tokens=False, return_offsets_mapping=True
        )
        start = len(self.head)
        split: list[tuple[list[int], list[int], list[int]]] = []
        for text, ids, offsets in zip(
            texts, encoded["input_ids"], encoded["offset_mapping"], strict=True
        ):
            end = start + len(text)
            head = [i for i, (_, b) in zip(ids, offsets, strict=True) if b <= start]
            tail = [
                i
                for i, (a, b) in zip(ids, offsets, strict=True)
                if a >= end and b > start
            ]
            middle = ids[len(head) : len(ids) - len(tail)]
            split.append((head, middle, tail))
        return split


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fit(parts: tuple[list[int], list[int], list[int]], limit: int) -> list[int]:
    """The head, the end of the text and the tail:, `limit` tokens at most."""
    head, text, tail = parts
    room = limit - len(head) - len(tail)
    if room < 0:
        return [*head, *tail][-limit:]
    kept = text[len(text) - room :] if room < len(text) else text
    return [*head, *kept, *tail]


def label_token_ids(
    tokenizer: Any, words: Sequence[str], prefix: str = " "
) -> list[int]:
    """The first token of `prefix + word` for each word (MeZO scores those).

    Raises `ConfigError` in one line when two words share their first token (their
    scores would be the same number) or a word has no token.
    """
    firsts: list[int] = []
    for word in words:
        ids = _ids(tokenizer, prefix + word)
        if not ids:
            raise ConfigError(f"label word {word!r} has no token")
        firsts.append(ids[0])
    for token in dict.fromkeys(firsts):
        sharing = [w for w, t in zip(words, firsts, strict=True) if t == token]
        if len(sharing) > 1:
            raise ConfigError(
                f"label words {sharing} share their first token "
                f"{tokenizer.decode([token])!r} (id {token}); a word is scored by its "
                "first token, so each needs a distinct one: set other "
                "`lm-classification.label-words`"
            )
    return firsts


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> dict[str, Tensor]:
    """`input_ids` and `attention_mask`, right-padded to the longest row."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
