"""SEP's parts on hand-made tensors: the token selection, the TFM, the split.

No CLIP is built here (milliseconds); tests/tasks/test_sep_task.py runs the parts
inside the prompted offline CLIP.
"""

from __future__ import annotations

import pytest
import torch

from spry.tasks.sep.classes import base_to_new_split, harmonic_mean
from spry.tasks.sep.fusion import TokenFusionModule
from spry.tasks.sep.selection import (
    energy_scores,
    energy_top_k,
    gather_tokens,
    tokens_after_prompts,
)

# -- the selection of representative tokens ----------------------------------------


def _tokens_with_energies(energies: list[list[float]], width: int = 4) -> torch.Tensor:
    """Tokens whose mean squared activation is exactly `energies[b][t]`."""
    e = torch.tensor(energies)  # (B, T)
    return e.sqrt().unsqueeze(-1).expand(-1, -1, width).clone()  # x^2 mean = e


def test_energy_is_the_mean_squared_activation():
    tokens = torch.tensor([[[1.0, -3.0], [2.0, 0.0]]])  # (1, 2, 2)
    assert energy_scores(tokens).tolist() == [[5.0, 2.0]]


def test_per_input_selection_takes_each_images_highest_energy_tokens():
    # Prepare: image 0's strong tokens are 3 and 1, image 1's are 0 and 2
    tokens = _tokens_with_energies([[0.1, 5.0, 0.2, 9.0], [7.0, 0.1, 6.0, 0.3]])
    # Execute
    chosen = energy_top_k(tokens, 2, per_input=True)
    # Assert: ordered by energy, per image
    assert chosen.tolist() == [[3, 1], [0, 2]]
    picked = gather_tokens(tokens, chosen)
    assert picked.shape == (2, 2, 4)
    assert torch.equal(picked[0, 0], tokens[0, 3])
    assert torch.equal(picked[1, 1], tokens[1, 2])


def test_per_batch_selection_is_the_released_codes_batch_mean():
    # Batch means: [3.55, 2.55, 3.1, 4.65] -> tokens 3 then 0 for every image
    tokens = _tokens_with_energies([[0.1, 5.0, 0.2, 9.0], [7.0, 0.1, 6.0, 0.3]])
    chosen = energy_top_k(tokens, 2, per_input=False)
    assert chosen.tolist() == [[3, 0], [3, 0]]


def test_selection_refuses_more_tokens_than_there_are():
    with pytest.raises(ValueError, match="k should be"):
        energy_top_k(torch.zeros(1, 3, 2), 4)


def test_text_rule_is_the_k_tokens_after_the_k_prompts():
    hidden = torch.zeros(2, 10, 4)
    assert tokens_after_prompts(hidden, 1, 4) == (5, 9)
    with pytest.raises(ValueError, match="pad it"):
        tokens_after_prompts(hidden, 1, 5)  # needs 11 tokens


# -- the Token Fusion Module ----------------------------------------------------------


@pytest.mark.parametrize(("width", "heads"), [(32, 1), (128, 2), (384, 6)])
def test_tfm_keeps_the_prompts_shape_with_width_over_64_heads(width, heads):
    tfm = TokenFusionModule(width, hidden=16)
    prompts, selected = torch.randn(3, 4, width), torch.randn(3, 4, width)
    assert tfm.heads == heads
    assert tfm(prompts, selected).shape == (3, 4, width)


def test_tfm_refuses_a_selection_of_another_size():
    tfm = TokenFusionModule(32, hidden=16)
    with pytest.raises(ValueError, match="as many selected tokens as prompts"):
        tfm(torch.randn(1, 4, 32), torch.randn(1, 3, 32))


def test_tfm_starts_as_the_authors_mix_and_is_the_selected_tokens_at_mix_one():
    # Prepare
    tfm = TokenFusionModule(32, hidden=16)
    prompts, selected = torch.randn(2, 4, 32), torch.randn(2, 4, 32)
    # Assert: a = b = 0.75 at the start, as in the released code
    assert tfm.mix_attention.item() == tfm.mix_mlp.item() == 0.75
    # Execute: with both mixes 1 the residual path alone remains
    with torch.no_grad():
        tfm.mix_attention.fill_(1.0)
        tfm.mix_mlp.fill_(1.0)
    assert torch.equal(tfm(prompts, selected), selected)


def test_tfm_output_follows_the_formula():
    tfm = TokenFusionModule(32, hidden=16)
    p, s = torch.randn(2, 4, 32), torch.randn(2, 4, 32)
    a, b = tfm.mix_attention, tfm.mix_mlp
    f = a * s + (1 - a) * tfm.attend(tfm.norm1(p), tfm.norm1(s), None)
    expected = b * f + (1 - b) * tfm.mlp(tfm.norm2(f))
    torch.testing.assert_close(tfm(p, s), expected)


def test_tfm_attends_to_no_padding():
    # Prepare: the last selected token is padding
    tfm = TokenFusionModule(32, hidden=16)
    p, s = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    mask = torch.tensor([[1, 1, 0]])
    other = s.clone()
    other[0, 2] = 100.0
    # Execute, Assert: what the padding holds does not reach the attention
    torch.testing.assert_close(tfm.attend(p, s, mask), tfm.attend(p, other, mask))
    assert not torch.allclose(tfm.attend(p, s, None), tfm.attend(p, other, None))


# -- the base-to-new split ------------------------------------------------------------


def test_split_is_the_first_half_of_each_set():
    split = base_to_new_split()
    assert len(split.names) == 20
    assert [split.names[c] for c in split.base] == [
        "t-shirt", "trousers", "pullover", "dress", "coat",
        "zero", "one", "two", "three", "four",
    ]  # fmt: skip
    assert [split.names[c] for c in split.new] == [
        "sandal", "shirt", "sneaker", "bag", "ankle boot",
        "five", "six", "seven", "eight", "nine",
    ]  # fmt: skip
    assert not set(split.base) & set(split.new)
    assert split.caption(0) == "a photo of a t-shirt"
    assert split.caption(17) == "a handwritten digit seven"


@pytest.mark.parametrize(
    ("base", "new", "expected"),
    [(0.8, 0.4, 0.64 / 1.2), (0.5, 0.5, 0.5), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0)],
)
def test_harmonic_mean(base, new, expected):
    assert harmonic_mean(base, new) == pytest.approx(expected)
