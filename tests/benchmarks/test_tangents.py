from __future__ import annotations

import pytest

from benchmarks.tangents import markdown, parse_args, plan


def _record(mode, slice_, k, seconds, size=768):
    return {"mode": mode, "slice": slice_, "tangents": k, "slice_size": size,
            "extra_mib": 10.0, "step_seconds": seconds, "batch": 8, "seq": 64,
            "threads": 1, "torch": "2.13.0", "machine": "linux"}  # fmt: skip


def test_the_plan_skips_long_loops_and_adds_the_exact_head():
    jobs = plan(parse_args(["--tangents", "1,64", "--slices", "layer-5,head"]))
    modes = [(j["mode"], j["slice"], j["tangents"]) for j in jobs]
    assert modes[:2] == [("inference", "all", 0), ("backprop", "all", 0)]
    assert ("loop", "layer-5", 64) not in modes  # above --max-loop 16
    assert ("vmap", "layer-5", 64) in modes and ("loop", "layer-5", 1) in modes
    assert ("vmap", "head", 0) in modes  # the exact head, one basis tangent each
    assert modes[-1] == ("vmap", "tuned", 1)  # the default client's estimate


def test_the_table_gives_time_per_tangent_and_the_ratio_to_backprop():
    table = markdown([
        _record("backprop", "all", 0, 0.2, size=10_000),
        _record("vmap", "layer-5", 16, 0.4),
        _record("vmap", "head", 0, 0.077, size=770),
    ])  # fmt: skip
    assert "| layer-5 K=16 vmap | 768 | 10.0 | 400 | 25.0 | 2.00 |" in table
    assert "| head K=exact (basis, 770) vmap | 770 | 10.0 | 77 | 0.1 | 0.38 |" in table


def test_unknown_slices_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--slices", "layer-9"])
