"""Reading a run's client step peaks and setting them beside the benchmark's point."""

from __future__ import annotations

import json

from benchmarks.sim_memory import bench_engine, compare, markdown, read_run

MIB = 2**20


def _run_folder(tmp_path, engine="forward", split=True):
    config = {
        "engine": engine, "split": split, "model": "all-MiniLM-L6-v2",
        "batch-size": 8, "max-length": 64, "client-num-cpus": 1,
        "clients-per-round": 2,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(
        json.dumps({"method": "spry", "config": config})
    )
    # (partition, tensors, extra, worker RSS, predicted, tokens) per client-round
    rounds = {
        "0": {},
        "1": {"peaks": [[0, 4, 20 * MIB, 800 * MIB, None, 64],
                        [1, 4, 15 * MIB, 801 * MIB, None, 40]]},
        "2": {"peaks": [[2, 4, 21 * MIB, 805 * MIB, None, 64],
                        [3, 4, 18 * MIB, 802 * MIB, None, 55]]},
    }  # fmt: skip
    (tmp_path / "rounds.json").write_text(json.dumps(rounds))
    step = {"extra-mib": 21.0, "tokens": 64, "round": 2, "worker-rss-mib": 805.0,
            "live-allocator": True}  # fmt: skip
    (tmp_path / "summary.json").write_text(
        json.dumps({"status": "completed", "client-step-peak": step})
    )
    return tmp_path


def test_a_run_gives_its_largest_step_peak_its_length_and_the_same_length_spread(
    tmp_path,
):
    run = read_run(_run_folder(tmp_path))

    assert run["step-peak-mib"] == 21.0 and run["tokens"] == 64
    assert run["at-length-mib"] == [20.0, 21.0]  # client-rounds at 64 tokens
    assert run["longest-tokens"] == 64 and run["client-rounds"] == 4
    assert run["rounds"] == 2
    assert (run["bench-model"], run["bench-engine"]) == ("minilm", "spry")


def test_the_benchmark_engine_of_each_method():
    assert bench_engine({"engine": "forward", "split": False}) == "fedfgd"
    assert bench_engine({"engine": "backprop-checkpoint"}) == "backprop-checkpoint"
    assert bench_engine({"engine": "mezo"}) == "mezo"


def test_within_the_tolerance_or_not(tmp_path):
    run = read_run(_run_folder(tmp_path))
    bench = {"extra-mib": 20.0, "extra-mib-all": [19.5, 20.0, 20.5], "live": True}

    near = compare(run, bench)
    far = compare(run, {**bench, "extra-mib": 17.0})

    assert near["ratio"] == 21.0 / 20.0 and near["within-tolerance"]
    assert not far["within-tolerance"]  # 21 / 17 = 1.24
    table = markdown([near, far], "spry run --method <method> --rounds 2")
    assert "| spry | spry | 2 x 2 | 21.0 | 64 | 20.0-21.0, 2 | 20.0 " in table
    assert "| 1.050 | yes | yes | 805 |" in table and "| 1.235 | no |" in table
