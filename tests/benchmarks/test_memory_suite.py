"""The memory suite: its plan, fresh processes per point, and the files it writes."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks.memory.__main__ import main
from benchmarks.memory.suite import SUITES, measure, plan
from benchmarks.memory.worker import ENGINES, MIB, Point


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_suite_measures_every_engine_at_each_models_main_point(name, device):
    points = plan(SUITES[name], device=device)
    assert len({p.key() for p in points}) == len(points)  # no point twice
    for sweep in SUITES[name].sweeps:
        main = {
            p.engine
            for p in points
            if p.model == sweep.model and (p.batch, p.seq) == (8, sweep.main_seq)
            and p.dtype == sweep.dtype and p.allocator in ("live", "cuda")
        }  # fmt: skip
        assert main == set(sweep.engines), sweep.model
        if name == "fused":  # before and after the fused rules, every engine
            assert sweep.engines == (*ENGINES, "spry-unfused")
        elif name == "blocks":  # the block budget's levers against backprop
            assert {"backprop", "spry", "spry-b8", "spry-b32"} <= set(sweep.engines)
        elif name != "7b":  # the 7B point measures the paper's engines only
            assert sweep.engines == ENGINES
    if device == "cpu":  # memory from the live allocator, time with glibc's
        assert all(p.timed == 0 for p in points if p.allocator == "live")
        assert all(p.timed > 0 for p in points if p.allocator == "glibc")
    else:
        assert {p.allocator for p in points} == {"cuda"}


def test_the_7b_suite_measures_one_nf4_step_per_engine():
    points = plan(SUITES["7b"])
    assert {
        (p.model, p.dtype, p.batch, p.seq, p.chunk, p.allocator, p.timed)
        for p in points
    } == {("llama2-7b-shape", "nf4", 8, 64, 128, "live", 0)}
    assert [p.engine for p in points] == [
        "inference", "spry", "mezo", "backprop-checkpoint"]  # fmt: skip


def test_the_7b_shape_is_refused_in_float():
    record = measure(Point("llama2-7b-shape", "spry", 1, 8))
    assert "built in quantized form" in record["error"], record


def test_a_failing_point_is_recorded_not_raised():
    record = measure(Point("no-such-model", "spry", 1, 8))
    assert "unknown model 'no-such-model'" in record["error"]


@pytest.mark.slow  # six processes, each building MiniLM
def test_minilm_points_each_in_a_fresh_process_with_report_files(tmp_path):
    """Real MiniLM, batch 8, 128 tokens: backprop needs far more than forward mode,
    which needs more than inference alone.

    The split of each total is checked against what does not come from the split
    itself: the process's resident set, and the parameter counts.
    """
    main([
        "--models", "minilm", "--engines", "inference,backprop,spry",
        "--seqs", "128", "--batches", "", "--timed-steps", "1",
        "--out", str(tmp_path), "--stem", "m",
    ])  # fmt: skip
    saved = json.loads((tmp_path / "m.json").read_text())
    records = saved["records"]
    assert len(records) == 6  # 3 engines x (live memory, timed glibc)
    assert len({r["pid"] for r in records}) == 6  # a fresh process each
    assert not [r for r in records if "error" in r]
    live = {r["engine"]: r for r in records if r["allocator"] == "live"}
    assert live["backprop"]["extra_mib"] > 2 * live["spry"]["extra_mib"]
    assert live["spry"]["extra_mib"] > live["inference"]["extra_mib"] > 0
    for r in records:
        assert 80 < r["weights_mib"] < 95  # MiniLM's 22.7M float32 parameters
        # AdamW keeps two float32 moments for each parameter it steps; MeZO's SGD
        # and inference keep none
        moments = 0 if r["engine"] == "inference" else 2 * 4 * r["params_stepped"]
        assert r["optimizer_mib"] == pytest.approx(moments / MIB)
        assert r["params_stepped"] < r["params_total"]  # LoRA: the base is frozen
        # The counted tensors are resident: the process's measured RSS before the
        # step holds the weights and optimizer state, besides Python and torch
        assert r["baseline_mib"] > r["weights_mib"] + r["optimizer_mib"]
    timed = [r for r in records if r["allocator"] == "glibc"]
    assert all(r["step_seconds"] > 0 for r in timed)
    with (tmp_path / "m.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 6
    text = (tmp_path / "m.md").read_text()
    assert "## Targets" in text and "| spry |" in text and "How measured" in text
    assert (tmp_path / "m_seq.png").exists() is False  # one seq: nothing to sweep


def test_label_words_kind_differentiates_the_lm_classification_tasks_loss():
    """The bench loss of a label-words model is the task's: cross-entropy over the
    label words' next-token logits at each row's last prompt token, here computed
    by hand from the model's full logits (right padding, so last positions differ).
    """
    import torch
    import torch.nn.functional as F

    from benchmarks.memory.models import LABEL_WORDS, bench_model
    from benchmarks.memory.suite import custom_suite
    from benchmarks.memory.worker import make_loss, random_batch

    model = bench_model("tiny-llama-labelwords")
    assert model.kind == LABEL_WORDS
    trainable = model.build("float32", "cpu")
    gen = torch.Generator().manual_seed(1)
    trainable.load({n: torch.randn(p.shape, generator=gen) * 0.1
                    for n, p in trainable.parameters().items()})  # fmt: skip
    net = trainable.model
    batch = random_batch(model.kind, 1000, 4, 12, device="cpu", seed=0)
    batch["attention_mask"][1, 7:] = 0  # a shorter prompt, right-padded
    batch["labels"] = torch.tensor([0, 1, 1, 0])
    loss, logits = make_loss(model, chunk=0)(net, batch)
    with torch.no_grad():
        full = net(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits  # fmt: skip
    last = torch.tensor([11, 6, 11, 11])
    expected = full[torch.arange(4), last][:, list(model.label_ids)]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, F.cross_entropy(expected, batch["labels"]))
    # the task's shape: its main point is 64 tokens, with no chunked loss to measure
    points = plan(custom_suite(["tiny-llama-labelwords"], seqs=[32], batches=[],
                               dtypes=[], engines=ENGINES, timed_steps=1))  # fmt: skip
    assert {(p.seq, p.chunk) for p in points} == {(64, 0), (32, 0)}


def test_a_label_words_point_measures_in_a_fresh_process():
    record = measure(Point("tiny-llama-labelwords", "spry", 2, 8))
    assert "error" not in record, record.get("error")
    assert record["kind"] == "lm-labelwords" and record["extra_mib"] >= 0
    assert record["params_stepped"] < record["params_trainable"]  # Spry's slice


def test_lever_engines_are_the_default_client_with_one_setting_changed():
    from benchmarks.memory.worker import make_engine_for

    spry, scope = make_engine_for("spry")
    assert scope == "slice" and spry.fused and spry.block_mib == 2.0
    assert make_engine_for("spry-b32")[0].block_mib == 32.0
    assert not make_engine_for("spry-unfused")[0].fused
    k8 = make_engine_for("spry-k8-seq")[0]
    assert (k8.num_tangents, k8.tangent_batch, k8.block_mib) == (8, 1, 2.0)


def test_resuming_keeps_saved_points_outside_the_plan(tmp_path):
    from benchmarks.memory.suite import run_points

    planned = Point("minilm", "spry", 8, 128, chunk=0, dtype="float32")
    other = Point("bert-base-shape", "spry", 8, 128, chunk=0, dtype="float32")
    saved = [{**p.__dict__, "extra_mib": n} for n, p in enumerate((planned, other))]
    records = run_points([planned], results=tmp_path / "r.json", reuse=saved)
    assert records == saved  # nothing left to measure, nothing dropped
