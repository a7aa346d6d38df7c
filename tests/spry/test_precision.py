"""Frozen base weights in lower precision: what is stored how, and what it costs.

On the real MiniLM classifier: frozen weights take the new dtype and half the bytes,
trainable tensors and logits stay float32, and the forward-mode directional
derivative still equals backprop's gradient dotted with the tangent.
"""

from __future__ import annotations

import pytest
import torch

from spry.classification import classification_loss
from spry.config import ModelConfig
from spry.engines import directional_derivative, make_engine
from spry.models import build_classifier
from spry.models.precision import FROZEN_FORMATS, frozen_dtype


def weight_bytes(model: torch.nn.Module, trainable: bool) -> int:
    return sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if p.requires_grad == trainable
    )


def batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (8, 32), generator=gen)
    labels = torch.randint(0, 2, (8,), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def derivative_and_exact(dtype: str) -> tuple[float, float]:
    """(jvp, backprop gradient . tangent) at the same non-zero LoRA/head weights."""
    trainable = build_classifier(ModelConfig(frozen_dtype=dtype), num_labels=2, seed=0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # LoRA B starts at zero: make every tensor matter
        for p in trainable.parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    params = {trainable.own_name(n): p for n, p in trainable.parameters().items()}
    gen = torch.Generator().manual_seed(1)
    tangent = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    model, data = trainable.model, batch()
    _, derivative, logits = directional_derivative(
        model, classification_loss, data, params, tangent
    )
    assert logits.dtype == torch.float32
    exact = make_engine("backprop").estimate(
        model, classification_loss, data, params, generator=gen
    )
    dotted = sum((exact.grads[n] * tangent[n]).sum() for n in params)
    return float(derivative), float(dotted)


def test_config_and_module_agree_on_the_dtypes():
    assert set(ModelConfig.FROZEN_DTYPES) == set(FROZEN_FORMATS)
    with pytest.raises(ValueError, match="frozen dtype"):
        frozen_dtype("int8")  # a quantization scheme, not a torch dtype
    with pytest.raises(ValueError, match="frozen-dtype"):
        ModelConfig(frozen_dtype="fp8")


def test_bfloat16_halves_the_frozen_weights_and_keeps_trainables_float32(
    default_model,
):
    low = build_classifier(ModelConfig(frozen_dtype="bfloat16"), num_labels=2, seed=0)
    frozen = {p.dtype for p in low.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in low.parameters().values()} == {torch.float32}
    full = default_model.model
    assert weight_bytes(low.model, False) * 2 == weight_bytes(full, False)
    assert weight_bytes(low.model, True) == weight_bytes(full, True)
    # Same starting point: the trainable tensors are initialised identically.
    for name, value in default_model.parameters().items():
        torch.testing.assert_close(low.parameters()[name], value)


@pytest.mark.parametrize(("dtype", "against_float32"), [
    ("bfloat16", 0.1), ("float16", 0.02),
])  # fmt: skip
def test_low_precision_jvp_matches_its_backprop_and_nearly_float32(
    dtype, against_float32
):
    derivative, exact = derivative_and_exact(dtype)
    reference, reference_exact = derivative_and_exact("float32")
    assert reference == pytest.approx(reference_exact, rel=1e-4)
    # Forward mode and backprop differentiate the same low-precision function
    # (their arithmetic rounds differently: bfloat16 keeps 8 bits)...
    assert derivative == pytest.approx(exact, rel=3e-2)
    # ...which is within a few percent of the float32 one (measured: 1.7% for
    # bfloat16, 0.2% for float16).
    assert derivative == pytest.approx(reference, rel=against_float32)
