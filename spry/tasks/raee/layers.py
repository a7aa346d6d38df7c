"""Per-layer views of a BERT-style encoder: pooled states, and a forward that stops.

Early exiting (`retrieval`, RAEE) needs two things from the backbone:

- `layer_states`: the mean-pooled hidden state after the embeddings and after every
  layer, from one ordinary forward pass. It labels the retrieval database (which
  exit predicts an example correctly) and checks `forward_to_layer`.
- `forward_to_layer`: the mean-pooled state after layer ``l``, computing only the
  embeddings and the first ``l`` layers, so its cost grows with ``l``. This is the
  pass that early exit actually saves time on.

`forward_to_layer` runs ``encoder.embeddings`` and ``encoder.encoder.layer[i]``
itself, so it must build the layers' attention mask exactly as the model does. In
transformers 5.x ``BertModel.forward`` no longer calls
``get_extended_attention_mask``: ``_create_attention_masks`` calls
``masking_utils.create_bidirectional_mask(config, inputs_embeds, attention_mask)``
(``create_causal_mask`` for decoders), which picks the mask format from
``config._attn_implementation``: eager gets an additive (B, 1, T, T) float mask with
the dtype's minimum at padded keys, sdpa a bool one, and a batch without padding may
get ``None``. We call the same public function, so the layers see the same mask
under every attention implementation.

Both helpers run under ``torch.no_grad()``: RAEE is training-free, and these are
inference passes. Put the encoder in ``eval()`` mode first, or dropout makes the
two disagree.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["forward_to_layer", "layer_states", "mean_pool"]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over real (unpadded) tokens, in float32.

    Parameters
    ----------
    hidden : Tensor
        (..., B, T, H) hidden states; leading dimensions (e.g. layers) broadcast.
    attention_mask : Tensor
        (B, T), 1 for real tokens and 0 for padding.

    Returns
    -------
    Tensor
        (..., B, H) float32. A row with no real token pools to zeros rather than nan.
    """
    mask = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    total = (hidden.float() * mask).sum(-2)  # (..., B, H)
    return total / mask.sum(-2).clamp_min(1.0)  # (B, 1) broadcasts


def layer_states(
    encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor
) -> Tensor:
    """Mean-pooled hidden states after the embeddings and after each layer.

    Parameters
    ----------
    encoder : nn.Module
        A Hugging Face BERT-style encoder (``BertModel``), or a model with one as
        its ``base_model`` (``BertForSequenceClassification``).
    input_ids, attention_mask : Tensor
        (B, T) token ids and their padding mask, as a tokenizer returns them.

    Returns
    -------
    Tensor
        (L + 1, B, H) float32: index 0 is after the embeddings, index ``l`` after
        layer ``l``.
    """
    backbone = _backbone(encoder)
    with torch.no_grad():
        out = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
        )
        hidden = torch.stack(out.hidden_states)  # (L + 1, B, T, H)
        return mean_pool(hidden, attention_mask)  # (L + 1, B, H)


def forward_to_layer(
    encoder: nn.Module, input_ids: Tensor, attention_mask: Tensor, layer: int
) -> Tensor:
    """The mean-pooled hidden state after ``layer``, computing no later layer.

    Equal to ``layer_states(encoder, input_ids, attention_mask)[layer]`` (to float
    rounding), at ``layer / L`` of the transformer layers' cost.

    Parameters
    ----------
    encoder : nn.Module
        As in `layer_states`.
    input_ids, attention_mask : Tensor
        (B, T).
    layer : int
        0..L; 0 is the embeddings alone, L the full encoder (without its pooler).

    Returns
    -------
    Tensor
        (B, H) float32.
    """
    from transformers.masking_utils import create_bidirectional_mask

    backbone = _backbone(encoder)
    layers = backbone.encoder.layer
    if (
        isinstance(layer, bool)
        or not isinstance(layer, int)
        or not (0 <= layer <= len(layers))
    ):
        raise ValueError(
            f"forward_to_layer(encoder, input_ids, attention_mask, layer): `layer` "
            f"should be an int in 0..{len(layers)}, got {layer!r}"
        )
    with torch.no_grad():
        # As BertModel.forward: no token_type_ids/position_ids means the defaults.
        hidden = backbone.embeddings(input_ids=input_ids)  # (B, T, H)
        mask = create_bidirectional_mask(
            config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask
        )  # (B, 1, T, T) additive for eager, bool for sdpa, or None
        for block in layers[:layer]:
            hidden = block(hidden, mask)
            if isinstance(hidden, tuple):  # older layers returned (hidden, ...)
                hidden = hidden[0]
        return mean_pool(hidden, attention_mask)  # (B, H)


def _backbone(encoder: nn.Module) -> nn.Module:
    """The BertModel itself: a task model's ``base_model``, or the encoder given."""
    backbone = getattr(encoder, "base_model", encoder)
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if getattr(backbone, "embeddings", None) is None or layers is None:
        raise ValueError(
            f"expected a BERT-style encoder with `.embeddings` and `.encoder.layer`, "
            f"got {type(encoder).__name__}"
        )
    if getattr(backbone.config, "is_decoder", False):
        raise ValueError(
            f"{type(encoder).__name__} is configured as a decoder (causal attention); "
            "these helpers build the bidirectional mask of an encoder"
        )
    return backbone
