"""Batched greedy generation for a causal LM, with a KV cache, for evaluation.

Exact match scores what a model writes, so evaluation has to generate. Generation
is one of the few places where transformers' own loop is the right tool: its
`generate(do_sample=False, use_cache=True)` keeps each layer's keys and values, so
every new token costs one position's forward instead of a recompute of the whole
growing sequence (`max_new_tokens` full passes). Prompts of different lengths share
one batch by padding on the left, where the attention mask hides the padding and
the model's position ids (computed from the mask) start at each prompt's first
real token, so a prompt's continuation does not depend on its batch mates.

Works on a PEFT-wrapped model (its `generate` forwards to the base model with the
adapters active) and on frozen weights stored in bfloat16 (`spry.models.precision`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def left_padded(
    tokenizer: Any, prompts: Sequence[str], *, max_prompt_tokens: int = 0
) -> dict[str, Tensor]:
    """`prompts` as one left-padded batch (`input_ids`, `attention_mask`).

    Each prompt is tokenized without special tokens (as the causal-LM task encodes
    it for training) and keeps its last `max_prompt_tokens` (0: all).
    """
    pad = _pad_id(tokenizer)
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if max_prompt_tokens > 0:
        rows = [r[-max_prompt_tokens:] for r in rows]
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row)
            mask[i, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(tokenizer.eos_token_id if pad is None else pad)


def _until_eos(tokens: Tensor, eos: int) -> list[int]:
    """The tokens before the first end-of-sequence."""
    out: list[int] = []
    for token in tokens.tolist():
        if token == eos:
            break
        out.append(int(token))
    return out


@torch.no_grad()
def generate_tokens(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int = 0,
    device: str | torch.device = "cpu",
) -> list[list[int]]:
    """Greedy continuation token ids of each prompt, cut before the first EOS.

    One `generate` call for the whole of `prompts` (the caller batches): greedy
    (`do_sample=False`), with the KV cache, at most `max_new_tokens` new tokens.
    """
    if not prompts:
        return []
    batch = left_padded(tokenizer, prompts, max_prompt_tokens=max_prompt_tokens)
    batch = {k: v.to(device) for k, v in batch.items()}
    eos = int(tokenizer.eos_token_id)
    was_training = model.training
    model.eval()  # dropout off: greedy decoding is a function of the weights
    try:
        with warnings.catch_warnings():
            # a model's own generation config may set temperature/top_p for
            # sampling; greedy decoding ignores them, and says so once per call
            warnings.simplefilter("ignore", UserWarning)
            out = model.generate(
                **batch,
                do_sample=False,
                use_cache=True,
                max_new_tokens=max_new_tokens,
                num_beams=1,
                pad_token_id=_pad_id(tokenizer),
                eos_token_id=eos,
                temperature=None,
                top_p=None,
                top_k=None,
            )
    finally:
        model.train(was_training)
    new = out[:, batch["input_ids"].shape[1] :].cpu()  # (B, <= max_new_tokens)
    return [_until_eos(row, eos) for row in new]


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    max_prompt_tokens: int = 0,
    device: str | torch.device = "cpu",
) -> list[str]:
    """The greedy continuation of each prompt as text, `batch_size` prompts a call.

    Parameters
    ----------
    model : nn.Module
        A causal LM (transformers or PEFT-wrapped); left in the mode it came in.
    tokenizer : Any
        Its tokenizer (an EOS token; padding falls back to EOS).
    prompts : Sequence[str]
        The prompts, continued exactly as written (no chat template).
    max_new_tokens : int
        At most this many tokens per prompt; generation stops earlier at EOS.
    batch_size : int (default: 64)
        Prompts per `generate` call.
    max_prompt_tokens : int (default: 0)
        A longer prompt keeps its last this many tokens (0: all).
    device : str (default: "cpu")
        Where the model is.

    Returns
    -------
    list[str]
        The decoded new text per prompt (special tokens skipped), in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size should be at least 1, got {batch_size}")
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        tokens = generate_tokens(
            model,
            tokenizer,
            prompts[start : start + batch_size],
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            device=device,
        )
        texts.extend(tokenizer.decode(t, skip_special_tokens=True) for t in tokens)
    return texts
