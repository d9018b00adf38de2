"""Combination functions on hand-made maps with known answers."""

import numpy as np

from mricore import zones
import pytest

from ensemble import combine
from mricore.errors import ConfigError


def onehot(labels, n=3):
    """(M, V) labels -> (M, 3, V) one-hot probabilities."""
    labels = np.asarray(labels)
    return np.stack([(labels == c) for c in range(n)], axis=1).astype(np.float32)


def weighted(probs, weights):
    """The engine's weighted combination: one running combine.WeightedSum over (M, 3, V) maps."""
    acc = combine.WeightedSum()
    for p, w in zip(probs, weights):
        acc.add(p, w)
    return acc.result()


def test_mean_known_answer():
    p = np.array([[[0.6, 0.2], [0.3, 0.1], [0.1, 0.7]],
                  [[0.2, 0.2], [0.7, 0.1], [0.1, 0.7]]], np.float32)  # (M=2, 3, V=2)
    out = weighted(p, [1.0] * len(p))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [0.4, 0.5, 0.1], atol=1e-6)
    np.testing.assert_allclose(out[:, 1], [0.2, 0.1, 0.7], atol=1e-6)
    assert zones.labels_from_probabilities(out).tolist() == [1, 2]


def test_weighted_scalar_weights():
    p = onehot([[1], [2]])  # member 0 says TZ, member 1 says PZ
    out = weighted(p, [3.0, 1.0])
    np.testing.assert_allclose(out[:, 0], [0.0, 0.75, 0.25], atol=1e-6)


def test_weighted_per_class_weights_renormalised():
    # Per-class weights: TZ trusted from member 0 only, PZ from member 1 only, background equal.
    p = np.array([[[0.2], [0.8], [0.0]], [[0.2], [0.0], [0.8]]], np.float32)
    w = [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    out = weighted(p, w)
    raw = np.array([0.2, 0.8, 0.8])  # per-class weighted means before renormalisation
    np.testing.assert_allclose(out[:, 0], raw / raw.sum(), atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-6)


def test_weights_from_selection_maps_wg_tz_pz():
    vals = [{"WG_mean": 0.9, "TZ_mean": 0.8, "PZ_mean": 0.6}, {"WG_mean": 0.85, "TZ_mean": 0.7, "PZ_mean": 0.65}]
    w = combine.weights_from_selection(vals, ["a", "b"])
    np.testing.assert_allclose(w, [[0.9, 0.8, 0.6], [0.85, 0.7, 0.65]])


@pytest.mark.parametrize("val", [None, {"WG_mean": 0.9, "TZ_mean": 0.8}, {"WG_mean": 0.9, "TZ_mean": float("nan"),
                                                                          "PZ_mean": 0.5}])
def test_weights_from_selection_missing_names_member(val):
    with pytest.raises(ConfigError, match="member b"):
        combine.weights_from_selection([{"WG_mean": 1, "TZ_mean": 1, "PZ_mean": 1}, val], ["a", "b"])


VOTE_CASES = [
    # (member labels per voxel, expected label without tie-break)  comment
    ([[1], [1], [2]], [1]),        # clear majority
    ([[0], [2], [2]], [2]),        # foreground majority
    ([[1], [2]], [1]),             # 1-1 tie TZ vs PZ -> lowest label
    ([[0], [1]], [0]),             # 1-1 tie background vs TZ -> background (conservative)
    ([[0], [1], [2]], [0]),        # three-way tie -> lowest label
]


@pytest.mark.parametrize("labels,expected", VOTE_CASES)
def test_majority_vote_tie_rule_lowest_label(labels, expected):
    assert combine.majority_vote(np.array(labels, np.uint8)).tolist() == expected


def test_majority_vote_tie_broken_by_mean_probability():
    labels = np.array([[1, 1], [2, 2]], np.uint8)          # 1-1 tie on both voxels
    prob = np.array([[0.1, 0.1], [0.3, 0.5], [0.6, 0.4]], np.float32)
    assert combine.majority_vote(labels, tie_break=prob).tolist() == [2, 1]


def test_majority_vote_probability_never_overrides_votes():
    labels = np.array([[1], [1], [2]], np.uint8)
    prob = np.array([[0.0], [0.0], [1.0]], np.float32)     # probabilities favour PZ strongly
    assert combine.majority_vote(labels, tie_break=prob).tolist() == [1]


def test_vote_fractions():
    f = combine.vote_fractions(np.array([[0, 1], [1, 1], [2, 1], [1, 0]], np.uint8))
    np.testing.assert_allclose(f[:, 0], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(f[:, 1], [0.25, 0.75, 0.0])


def test_staple_identical_members_returns_them():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (6, 7, 5)).astype(np.uint8)
    out, perf = combine.staple(np.stack([lab, lab, lab]))
    assert np.array_equal(out, lab)
    assert len(perf) == 3
    for p in perf:
        assert p["sensitivity"] == {"background": 1.0, "TZ": 1.0, "PZ": 1.0}


def test_staple_flags_the_unreliable_member():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, (10, 10, 10)).astype(np.uint8)
    bad = truth.copy()
    bad[truth == 1] = 2          # this member calls every TZ voxel PZ
    out, perf = combine.staple(np.stack([truth, truth, bad]))
    assert np.array_equal(out, truth)
    assert perf[2]["sensitivity"]["TZ"] < 0.05 and perf[0]["sensitivity"]["TZ"] > 0.95
    cm = np.array(perf[2]["confusion"])  # rows: member's label, columns: true label
    assert cm[2, 1] > 0.95


def test_zone_consistency_after_combination_and_largest_component():
    from mricore.zones import keep_largest_component

    rng = np.random.default_rng(2)
    probs = rng.dirichlet([1, 1, 1], size=(3, 12, 12, 4)).transpose(0, 4, 1, 2, 3).astype(np.float32)
    for label in (zones.labels_from_probabilities(weighted(probs, [1.0] * len(probs))),
                  combine.majority_vote(np.argmax(probs, axis=1).astype(np.uint8))):
        for lab in (label, keep_largest_component(label)):
            z = zones.masks(lab)
            assert np.array_equal(z["WG"], z["TZ"] | z["PZ"])
            assert not (z["TZ"] & z["PZ"]).any()
            assert np.array_equal(z["WG"], lab > 0)
    np.testing.assert_allclose(weighted(probs, [1.0] * len(probs)).sum(axis=0), 1.0, atol=1e-5)


def test_entropy_and_disagreement():
    prob = np.array([[1.0, 1 / 3], [0.0, 1 / 3], [0.0, 1 / 3]], np.float32)
    np.testing.assert_allclose(combine.entropy(prob), [0.0, 1.0], atol=1e-5)
    members = np.array([[1, 0], [2, 0], [1, 0], [1, 2]], np.uint8)
    np.testing.assert_allclose(combine.disagreement(members, np.array([1, 0], np.uint8)), [0.25, 0.25])


def test_gland_region_is_any_member_or_the_combined_map():
    label = np.array([0, 1, 0, 0], np.uint8)
    members = np.array([[0, 1, 2, 0], [0, 1, 0, 0]], np.uint8)
    assert combine.gland_region(label, members).tolist() == [False, True, True, False]
    assert not combine.gland_region(np.zeros(4, np.uint8), np.zeros((2, 4), np.uint8)).any()


def test_memory_lean_maps_equal_the_plain_numpy_formulas():
    # The engine's per-voxel maps are computed class by class / member by member to keep big input
    # grids under the memory target; they must stay the textbook formulas, ties included.
    rng = np.random.default_rng(0)
    raw = rng.random((3, 6, 5, 4)).astype(np.float32)
    raw[1, 0] = raw[0, 0]                      # ties between background and TZ: the lower label wins
    raw[:, 1, 0] = 0.5                         # three-way ties
    prob = raw / raw.sum(axis=0, keepdims=True)
    assert np.array_equal(zones.labels_from_probabilities(prob), np.argmax(prob, axis=0).astype(np.uint8))
    ref = np.clip(-(prob * np.log(np.clip(prob, 1e-12, 1))).sum(0) / np.log(3), 0, 1)
    np.testing.assert_allclose(combine.entropy(prob), ref, atol=1e-6)
    members = rng.integers(0, 3, (5, 6, 5, 4)).astype(np.uint8)
    label = rng.integers(0, 3, (6, 5, 4)).astype(np.uint8)
    np.testing.assert_allclose(combine.disagreement(members, label), (members != label).mean(0), atol=1e-7)
    assert np.array_equal(combine.gland_region(label, members), (label > 0) | (members > 0).any(0))


def test_weighted_sum_hands_over_its_buffer_once():
    acc = combine.WeightedSum()
    acc.add(np.array([[1.0], [0.0], [0.0]], np.float32), 2.0)
    acc.add(np.array([[0.0], [1.0], [0.0]], np.float32), 2.0)
    assert acc.result()[:, 0].tolist() == [0.5, 0.5, 0.0]
    with pytest.raises(ValueError, match="already taken"):
        acc.result()
