"""Frozen linear layers in forward mode: the same tangent, without W-sized zeros."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spry.engines.frozen import FrozenLinear, _Frozen, frozen_linears
from spry.memory import LIVE_ENV


def test_tangent_and_value_equal_the_plain_rule_also_under_vmap():
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(6, 5).requires_grad_(False)
    x, tangents = torch.randn(4, 6, generator=gen), torch.randn(3, 4, 6, generator=gen)

    def plain(v):
        return torch.func.jvp(lambda a: torch.tanh(layer(a)), (x,), (v,))

    def lean(v):
        frozen = _Frozen(layer.weight, layer.bias)
        return torch.func.jvp(
            lambda a: torch.tanh(FrozenLinear.apply(a, frozen)), (x,), (v,)
        )

    for expected, got in zip(
        torch.func.vmap(plain)(tangents), torch.func.vmap(lean)(tangents), strict=True
    ):
        torch.testing.assert_close(got, expected)


def test_only_frozen_plain_linears_are_rerouted_and_restored():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    model[0].requires_grad_(False)  # frozen
    with frozen_linears(model):
        assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
        x = torch.randn(2, 3)
        torch.testing.assert_close(
            model[0](x), F.linear(x, model[0].weight, model[0].bias)
        )
    assert "forward" not in vars(model[0])


_PROGRAM = """
import contextlib, json, sys, torch
from torch import nn
from spry.engines.frozen import frozen_linears
from spry.memory import track_peak_memory
head = nn.Linear(576, 49152, bias=False).requires_grad_(False)  # SmolLM2's shape
x, v = torch.randn(16, 576), torch.randn(16, 576)
lean = sys.argv[1] == "lean"
def jvp():
    with frozen_linears(head) if lean else contextlib.nullcontext():
        return torch.func.jvp(lambda a: head(a).sum(), (x,), (v,))
jvp()  # warm-up
with track_peak_memory("cpu") as report:
    jvp()
print(json.dumps(report.extra_bytes / 2**20))
"""


def _extra_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **LIVE_ENV},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["plain", "lean"])
def test_the_output_layer_jvp_needs_no_weight_sized_block(mode):
    """W is 108 MiB; the outputs and their tangent are 3 MiB each."""
    extra = _extra_mib(mode)
    if mode == "plain":  # what PyTorch's rule costs, so the fix has a reason
        assert extra > 100, extra
    else:
        assert extra < 20, extra
