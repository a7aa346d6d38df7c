"""CLIPScope's parts on hand-made cases with known answers.

WordNet reading (a hand-written wndb(5) line; the real Debian file when
installed), label mining on a toy embedding whose nearest and farthest nouns are
known by construction, the score against its formula on hand-made
probabilities, the federated prior against the pooled counts, and the
baselines and metrics on hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spry.tasks.clipscope.mining import id_distances, mine_ood_labels
from spry.tasks.clipscope.prior import (
    class_prior,
    merge_counts,
    prediction_counts,
    uniform_prior,
)
from spry.tasks.clipscope.score import (
    clipscope_score,
    energy_score,
    id_probability,
    msp_score,
    online_clipscope_scores,
    ood_metrics,
)
from spry.tasks.clipscope.wordnet import (
    WORDNET_DIR,
    Synset,
    WordNetError,
    base_forms,
    noun_candidates,
    parse_data_line,
    read_exceptions,
    read_synsets,
    synonyms,
)

needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason=f"needs Debian's wordnet-base ({WORDNET_DIR}/data.noun is missing): "
    "apt-get install --no-install-recommends wordnet-base",
)

# -- WordNet --------------------------------------------------------------------------


def test_parses_a_wndb_data_line():
    line = (
        "03472232 06 n 03 gym_shoe 0 sneaker 0 tennis_shoe 0 002 @ 04199027 n 0000 "
        "~ 04022332 n 0000 | a canvas shoe with a pliable rubber sole  \n"
    )
    synset = parse_data_line(line)
    assert synset == Synset(
        3472232,
        ("gym shoe", "sneaker", "tennis shoe"),
        "a canvas shoe with a pliable rubber sole",
    )
    # w_cnt is hexadecimal: 0a = 10 words
    words = " ".join(f"w{i} 0" for i in range(10))
    assert len(parse_data_line(f"00000001 03 n 0a {words} 000 | g").words) == 10
    with pytest.raises(WordNetError, match="wndb"):
        parse_data_line("not a data line")


def test_candidates_are_deduplicated_without_id_names_and_synonyms():
    # Prepare
    synsets = [
        Synset(1, ("gym shoe", "sneaker", "tennis shoe"), ""),
        Synset(2, ("Sneaker",), ""),  # another sense, other case
        Synset(3, ("bag",), ""),
        Synset(4, ("volcano",), ""),
        Synset(5, ("Volcano", "mountain"), ""),
    ]
    # Execute
    excluded = synonyms(["sneaker"], synsets)
    nouns = noun_candidates(synsets, excluded)
    # Assert
    assert excluded == {"gym shoe", "sneaker", "tennis shoe"}
    assert nouns == ["bag", "volcano", "mountain"]


def test_plural_class_names_find_their_synsets():
    # morphy's noun rules and exception list, as WordNet applies them
    assert "trouser" in base_forms("trousers")
    assert "box" in base_forms("boxes") and "woman" in base_forms("women")
    assert "mouse" in base_forms("mice", {"mice": "mouse"})
    synsets = [Synset(1, ("trouser", "pant"), ""), Synset(2, ("trousseau",), "")]
    assert synonyms(["trousers"], synsets) == {"trousers", "trouser", "pant"}


@needs_wordnet
def test_reads_the_real_noun_file():
    synsets = list(read_synsets())
    assert len(synsets) == 82115  # WordNet 3.0's noun synsets
    excluded = synonyms(["sneaker", "T-shirt", "trousers"], synsets, read_exceptions())
    assert {"gym shoe", "tennis shoe", "tee shirt", "trouser", "pant"} <= excluded
    nouns = noun_candidates(synsets, excluded)
    assert "sneaker" not in {n.lower() for n in nouns}
    assert len(nouns) == len({n.lower() for n in nouns}) > 100_000


# -- mining ---------------------------------------------------------------------------


def _toy_space():
    """Two ID classes along e0, e1; candidates at known cosines to them."""
    e = torch.eye(4)
    id_features = e[:2]
    # (name, cos to e0, cos to e1); the rest of the unit norm goes to e2/e3
    table = [
        ("near-e0", 0.99, 0.0),
        ("mid", 0.5, 0.5),
        ("near-e1", 0.0, 0.95),
        ("far", -0.9, -0.3),
        ("orthogonal", 0.0, 0.0),
        ("farthest", -0.7, -0.7),
        ("fairly-near", 0.8, 0.1),
    ]
    rows = []
    for _, a, b in table:
        rest = math.sqrt(max(0.0, 1 - a * a - b * b))
        rows.append([a, b, rest, 0.0])
    features = F.normalize(torch.tensor(rows), dim=-1)
    return [name for name, _, _ in table], features, id_features


def test_distance_is_a_percentile_of_negative_cosines():
    names, features, id_features = _toy_space()
    cos = features @ id_features.T
    # percentile 0: minus the nearest class's cosine
    torch.testing.assert_close(id_distances(features, id_features, 0.0), -cos.amax(1))
    # percentile 50 of two classes: minus their mean cosine
    torch.testing.assert_close(id_distances(features, id_features, 50.0), -cos.mean(1))
    with pytest.raises(ValueError, match="percentile"):
        id_distances(features, id_features, 101.0)


def test_mining_returns_the_nearest_and_the_farthest():
    # Prepare
    names, features, id_features = _toy_space()
    # Execute
    mined = mine_ood_labels(
        names, features, id_features, num_nearest=2, num_farthest=2, percentile=0.0
    )
    # Assert: by construction (max cosine 0.99, 0.95 | -0.3, -0.7)
    assert mined.nearest == ("near-e0", "near-e1")
    assert mined.farthest == ("farthest", "far")
    assert mined.labels == ("farthest", "far", "near-e0", "near-e1")
    # every nearest label is nearer than every label not chosen, and so on
    d = dict(zip(names, mined.distances.tolist(), strict=True))
    rest = set(names) - set(mined.labels)
    assert max(d[n] for n in mined.nearest) <= min(d[n] for n in rest)
    assert min(d[n] for n in mined.farthest) >= max(d[n] for n in rest)


def test_mining_checks_its_counts():
    names, features, id_features = _toy_space()
    with pytest.raises(ValueError, match="candidates"):
        mine_ood_labels(names, features, id_features, num_nearest=5, num_farthest=5)
    with pytest.raises(ValueError, match="features"):
        mine_ood_labels(names[:3], features, id_features, num_nearest=1, num_farthest=1)


# -- the score ------------------------------------------------------------------------


def test_score_equals_the_formula_on_hand_made_probabilities():
    # Prepare: logits = log(probabilities), so every softmax is known by hand
    id_probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    ood_mass = torch.tensor([[0.25, 0.75], [1.0, 2.0]])  # sums 1 and 3
    id_logits, ood_logits = id_probs.log(), ood_mass.log()
    prior = torch.tensor([0.2, 0.5, 0.3])
    # p(ID|x) = 1 / (1 + 1) and 1 / (1 + 3)
    # S = p(y_hat|x) / p(y_hat) * p(ID|x) = 0.5 / 0.2 * 0.5 and 0.6 / 0.5 * 0.25
    expected = torch.tensor([1.25, 0.3])
    # Execute / Assert
    torch.testing.assert_close(
        id_probability(id_logits, ood_logits), torch.tensor([0.5, 0.25])
    )
    torch.testing.assert_close(clipscope_score(id_logits, ood_logits, prior), expected)
    # without mined labels p(ID|x) = 1; with a uniform prior, C * MSP
    none = torch.empty(2, 0)
    torch.testing.assert_close(
        clipscope_score(id_logits, none, prior), torch.tensor([2.5, 1.2])
    )
    torch.testing.assert_close(
        clipscope_score(id_logits, none, uniform_prior(3)), 3 * msp_score(id_logits)
    )


def test_score_refuses_a_zero_prior():
    with pytest.raises(ValueError, match="positive"):
        clipscope_score(torch.zeros(1, 2), torch.zeros(1, 0), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="classes"):
        clipscope_score(torch.zeros(1, 2), torch.zeros(1, 0), torch.ones(3) / 3)


def test_online_scores_count_predictions_as_images_arrive():
    # Prepare: three images predicted 0, 0, 1; no OOD labels
    id_probs = torch.tensor([[0.6, 0.2, 0.2], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1]])
    none = torch.empty(3, 0)
    # counts start at [1, 1, 1]: priors 1/3, then 2/4 for class 0, then 1/5 for 1
    expected = torch.tensor([0.6 * 3, 0.5 / 0.5, 0.7 / 0.2], dtype=torch.float64)
    # Execute / Assert
    torch.testing.assert_close(
        online_clipscope_scores(id_probs.log(), none), expected, rtol=1e-6, atol=0
    )


# -- the federated prior ------------------------------------------------------------


def test_federated_prior_equals_the_pooled_counts():
    # Prepare: three clients' logits over 5 ID classes, of different sizes
    generator = torch.Generator().manual_seed(0)
    clients = [torch.randn(n, 5, generator=generator) for n in (7, 30, 1)]
    pooled = torch.cat(clients)
    # Execute: each client shares its counts only; the server sums them
    shared = [prediction_counts(logits, 5) for logits in clients]
    merged = merge_counts(shared)
    # Assert
    np.testing.assert_array_equal(merged, prediction_counts(pooled, 5))
    assert merged.sum() == 38
    torch.testing.assert_close(
        class_prior(merged), class_prior(prediction_counts(pooled, 5))
    )
    # add-one smoothing, applied once at the server
    torch.testing.assert_close(
        class_prior(np.array([3, 0, 1])), torch.tensor([4 / 7, 1 / 7, 2 / 7])
    )


def test_merge_refuses_mismatched_counts():
    with pytest.raises(ValueError, match="classes"):
        merge_counts([np.zeros(3, np.int64), np.zeros(4, np.int64)])
    with pytest.raises(ValueError, match="no client"):
        merge_counts([])


# -- baselines and metrics ------------------------------------------------------------


def test_msp_and_energy_on_hand_made_logits():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax [0.25, 0.75]
    torch.testing.assert_close(msp_score(logits), torch.tensor([0.75]))
    torch.testing.assert_close(energy_score(logits), torch.tensor([math.log(4.0)]))
    torch.testing.assert_close(
        energy_score(logits, temperature=2.0),
        torch.tensor([2 * math.log(1 + math.sqrt(3.0))]),
    )


def test_auroc_and_fpr95_on_a_hand_made_case():
    id_scores = np.array([0.9, 0.8, 0.7, 0.6])
    ood_scores = np.array([0.5, 0.4, 0.85, 0.1])
    metrics = ood_metrics(id_scores, ood_scores)
    # pairs (id, ood) ordered right: 4 + 3 + 3 + 3 of 16
    assert metrics["auroc"] == pytest.approx(13 / 16)
    # keeping 95% of ID keeps all four (threshold 0.6): one OOD of four passes
    assert metrics["fpr95"] == pytest.approx(0.25)
    perfect = ood_metrics(np.array([3.0, 2.0]), np.array([1.0, 0.0]))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0}
