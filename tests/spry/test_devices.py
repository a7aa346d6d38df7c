"""Device profiles, the memory model and budget-aware dealing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from spry.devices import (
    CATALOG,
    HOST,
    DeviceProfile,
    Fleet,
    assign_profiles,
    load_catalog,
    parse_mix,
    profile_counts,
)
from spry.memory_model import MemoryModel
from spry.splitting import assign_groups, assign_within_budgets

MIB = 2**20


def test_mix_shares_are_normalised_and_unknown_names_list_the_known_ones():
    mix = parse_mix("phone-4gb:3,laptop-16gb:1", CATALOG)
    assert [(p.name, s) for p, s in mix] == [("phone-4gb", 0.75), ("laptop-16gb", 0.25)]
    assert parse_mix("", CATALOG) == [(HOST, 1.0)]
    with pytest.raises(ValueError, match="unknown device profile 'iphone'.*phone-8gb"):
        parse_mix("iphone:1", CATALOG)
    with pytest.raises(ValueError, match="should be > 0"):
        parse_mix("phone-4gb:0", CATALOG)


def test_a_catalogue_file_adds_profiles_and_a_bad_one_names_the_table(tmp_path):
    good = tmp_path / "devices.toml"
    good.write_text("[watch-1gb]\nbudget-mib = 400\nspeed = 0.05\n")
    catalog = load_catalog(good)
    assert catalog["watch-1gb"] == DeviceProfile("watch-1gb", 400.0, 0.05)
    assert "phone-4gb" in catalog
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\nbudget = 400\n")
    with pytest.raises(ValueError, match=r"\[watch\] should hold `budget-mib`"):
        load_catalog(bad)


def test_profiles_are_dealt_in_exact_shares_as_a_function_of_the_seed():
    mix = parse_mix(
        "phone-4gb:0.4,phone-8gb:0.3,jetson-8gb:0.2,laptop-16gb:0.1", CATALOG
    )
    assert profile_counts(mix, 1000) == [400, 300, 200, 100]
    assert sum(profile_counts(mix, 7)) == 7
    first = assign_profiles(mix, 1000, seed=0)
    assert Counter(p.name for p in first) == {
        "phone-4gb": 400, "phone-8gb": 300, "jetson-8gb": 200, "laptop-16gb": 100
    }  # fmt: skip
    assert assign_profiles(mix, 1000, seed=0) == first
    assert assign_profiles(mix, 1000, seed=1) != first


def test_memory_model_is_the_line_through_its_probes_with_a_floor_on_the_slope():
    small = {"params": 1_000, "peak_bytes": 600 * MIB}
    full = {"params": 11_000, "peak_bytes": 600 * MIB + 10_000 * 100}
    model = MemoryModel.fit(small, full, num_tangents=1)
    assert model.per_param_bytes == pytest.approx(100)
    assert model.peak_bytes(1_000) == pytest.approx(600 * MIB)
    assert model.peak_bytes(11_000) == pytest.approx(full["peak_bytes"])
    # A difference below what RSS resolves (or negative) falls back to 4 (3 + K)
    noisy = MemoryModel.fit(small, {**full, "peak_bytes": 599 * MIB}, num_tangents=2)
    assert noisy.per_param_bytes == 20
    assert noisy.peak_bytes(1_000) == pytest.approx(600 * MIB)


def test_fleet_room_is_the_budget_less_margin_and_prediction():
    memory = MemoryModel(fixed_bytes=500 * MIB, per_param_bytes=1_000)
    phone = DeviceProfile("p", budget_mib=1100, speed=0.5)
    fleet = Fleet([phone, HOST], memory, margin=0.1)
    assert fleet.room(0, 0) == pytest.approx(1000 * MIB - 500 * MIB)
    assert fleet.room(0, 1_000) == pytest.approx(500 * MIB - 1_000_000)
    assert fleet.room(1, 10**9) == float("inf")
    assert fleet.cost(2_000) == 2_000_000
    assert Fleet([phone]).room(0, 10**9) == float("inf")  # no memory model, no limit


@pytest.mark.parametrize("num_groups", [1, 3, 12, 25])
@pytest.mark.parametrize("num_clients", [1, 4, 10])
def test_with_unlimited_room_budgeted_dealing_is_spry_dealing(num_groups, num_clients):
    groups = [(f"a{g}", f"b{g}") for g in range(num_groups)]
    clients = list(range(50, 50 + num_clients))
    unlimited = dict.fromkeys(clients, float("inf"))
    assert assign_within_budgets(
        groups, clients, room=unlimited, cost=[1.0] * num_groups, shared=("h",)
    ) == assign_groups(groups, clients, shared=("h",))


def test_no_client_is_dealt_more_than_its_room_and_bigger_devices_take_more():
    rng = random.Random(0)
    for _ in range(300):
        groups = [(f"g{g}",) for g in range(rng.randint(1, 30))]
        clients = list(range(rng.randint(1, 12)))
        cost = [rng.uniform(1, 10) for _ in groups]
        room = {c: rng.choice([0.5, 5, 20, 80, float("inf")]) for c in clients}
        dealt = assign_within_budgets(groups, clients, room=room, cost=cost)
        index = {g[0]: i for i, g in enumerate(groups)}
        for client, names in dealt.items():
            assert sum(cost[index[n]] for n in names) <= room[client] + 1e-9
            assert names  # a client sent work has at least one group
        # Left out only when it cannot hold even the cheapest group
        for client in set(clients) - set(dealt):
            assert room[client] < min(cost)
        # Every group is trained when one client alone could hold everything
        if any(room[c] >= sum(cost) for c in clients):
            assert {n for names in dealt.values() for n in names} == set(index)


def test_more_room_means_a_larger_slice():
    groups = [(f"g{g}",) for g in range(12)]
    room = {0: 1.5, 1: 4.5, 2: float("inf")}
    dealt = assign_within_budgets(groups, [0, 1, 2], room=room, cost=[1.0] * 12)
    sizes = [len(dealt[c]) for c in (0, 1, 2)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[1] == 4
    assert sum(sizes) == 12  # nothing untrained: the big device took the rest


# --- budgets ask the task: its model and its largest batch ------------------------


def _run(**values):
    from spry.config import RunConfig, default_values

    return RunConfig.from_run_config({**default_values(), **values})


def test_the_classifier_probe_is_a_batch_of_full_length_sentences():
    from spry.tasks import load_task

    cfg = _run(**{"batch-size": 3, "max-length": 16})
    task = load_task(cfg)
    assert task.probe_context() == {"num-labels": 2}
    trainable, batch = task.probe_inputs("cpu", {"num-labels": 2})
    assert batch["input_ids"].shape == (3, 16)  # padded to max-length: the worst
    assert batch["labels"].tolist() == [0, 1, 0]
    assert list(trainable.names) == list(task.model().names)


def test_budgets_work_for_a_task_other_than_classification(tmp_path, monkeypatch):
    """VeriX's MLP is measured in a fresh process through the task's probe."""
    from spry.devices import plan_fleet
    from spry.tasks import load_task

    monkeypatch.setenv("SPRY_CACHE", str(tmp_path))
    cfg = _run(
        **{
            "task": "verix",
            "verix.hidden": "16,16",  # three groups: the smallest slice is not all
            "num-clients": 4,
            "clients-per-round": 2,
            "eval-clients-per-round": 2,
            "device-profiles": "phone-4gb:1",
        }
    )
    task = load_task(cfg)
    trainable = task.model()
    names = list(trainable.names)
    _, batch = task.probe_inputs("cpu", task.probe_context())
    assert batch["pixels"].shape == (cfg.client.batch_size, 64)  # client 0's first
    fleet = plan_fleet(cfg, names, task.head_names(names), task)
    assert fleet.budgeted and fleet.memory is not None
    small, full = fleet.memory.probes
    sizes = {n: p.numel() for n, p in trainable.parameters().items()}
    assert full["params"] == sum(sizes.values())  # every tensor of the MLP
    assert 0 < small["params"] < full["params"]
    assert 0 < fleet.memory.peak_bytes(full["params"]) < 4 * 2**30
    assert len(list((tmp_path / "memory-model").glob("*.json"))) == 2  # cached
