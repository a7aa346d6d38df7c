"""A tiny random transformers `CLIPModel` with a real `CLIPTokenizer`, in a folder.

No CLIP weights or vocabulary are reachable here, so the tokenizer is CLIP's own
byte-pair tokenizer over a made-up vocabulary: single characters (with and
without CLIP's end-of-word mark `</w>`) plus the few merges that make "a photo
of a" four tokens, as in CLIP's real vocabulary, and CLIP's start and end
tokens, the end token also padding (as openai's CLIP tokenizers pad). What the
tests check is the walk through the towers, not what a random CLIP knows.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

START, END = "<|startoftext|>", "<|endoftext|>"
MERGES = ["p h", "ph o", "pho t", "phot o</w>", "o f</w>"]
TEXT_LAYERS = 3
IMAGE_LAYERS = 2
TEXT_WIDTH, IMAGE_WIDTH, EMBED = 32, 48, 16
IMAGE_SIZE = 32


def save_tiny_clip(folder: Path, *, seed: int = 0) -> Path:
    """Write a random `CLIPModel` and its tokenizer into `folder`; return it."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".-,'")
    pieces = symbols + [s + "</w>" for s in symbols]
    pieces += [m.replace(" ", "") for m in MERGES] + [START, END]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=END
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(pieces),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": 2,
            "max_position_embeddings": 40,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": IMAGE_WIDTH,
            "intermediate_size": 96,
            "num_hidden_layers": IMAGE_LAYERS,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=EMBED,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
