"""mricore.stats: summaries carry their counts, the bootstrap is seeded and covers the mean, paired
comparisons agree with scipy's Wilcoxon test and drop pairs with a NaN."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from mricore import stats as S


def test_summary_counts_exclude_nan():
    s = S.summarize([0.8, np.nan, 0.6, 0.7, np.nan])
    assert (s["n"], s["n_excluded"]) == (3, 2)
    assert s["mean"] == pytest.approx(0.7) and s["median"] == pytest.approx(0.7)
    assert (s["q1"], s["q3"]) == (pytest.approx(0.65), pytest.approx(0.75))


def test_summary_all_nan_is_nan_with_counts():
    s = S.summarize([np.nan, np.nan])
    assert (s["n"], s["n_excluded"]) == (0, 2) and math.isnan(s["mean"]) and math.isnan(s["ci_low"])


def test_bootstrap_is_seeded_and_covers_the_mean():
    v = np.random.default_rng(0).normal(0.8, 0.05, 40)
    a, b = S.bootstrap_ci(v, seed=1), S.bootstrap_ci(v, seed=1)
    assert a == b
    assert a[0] < v.mean() < a[1]
    # Width close to the normal approximation 2 * 1.96 * sd / sqrt(n).
    assert a[1] - a[0] == pytest.approx(2 * 1.96 * v.std(ddof=1) / np.sqrt(len(v)), rel=0.2)
    assert S.bootstrap_ci(v, seed=2) != a


def test_bootstrap_uses_at_least_1000_resamples():
    assert S.N_BOOT >= 1000


def test_paired_difference_matches_scipy_and_drops_nan_pairs():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.7, 0.9, 20)
    b = a - rng.normal(0.02, 0.01, 20)
    a[4] = np.nan  # this pair is dropped and counted
    d = S.paired_difference(a, b)
    ok = np.isfinite(a)
    assert (d["n"], d["n_excluded"]) == (19, 1)
    assert d["mean"] == pytest.approx(np.mean(a[ok] - b[ok]))
    assert d["wilcoxon_p"] == pytest.approx(wilcoxon(a[ok] - b[ok]).pvalue)
    assert d["ci_low"] > 0  # a is consistently better: the CI of the mean difference excludes 0


def test_paired_difference_rejects_unpaired_lengths():
    with pytest.raises(ValueError, match="same cases"):
        S.paired_difference([1, 2, 3], [1, 2])


def test_compare_models_pairs_shared_cases_only():
    vals = {"a": {"c1": 0.9, "c2": 0.8, "c3": 0.7}, "b": {"c1": 0.8, "c2": 0.8, "c4": 0.1},
            "c": {"c1": 0.5, "c2": np.nan, "c3": 0.6}}
    out = S.compare_models(vals)
    assert [(o["a"], o["b"]) for o in out] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert out[0]["differences"] == {"c1": pytest.approx(0.1), "c2": 0.0}  # c3/c4 not shared
    assert out[1]["differences"] == {"c1": pytest.approx(0.4), "c3": pytest.approx(0.1)}
    assert (out[1]["n"], out[1]["n_excluded"]) == (2, 1)  # c2 has a NaN on one side
    assert math.isnan(out[0]["wilcoxon_p"])  # fewer than 2 non-zero differences


def test_fmt_says_mean_median_and_counts():
    text = S.fmt(S.summarize([0.8, 0.9, np.nan]))
    assert text.startswith("mean 0.850") and "median" in text and "n=2 (1 excluded)" in text


def test_one_case_has_no_confidence_interval():
    # A zero-width "95 % CI" from one case would claim certainty: it is NaN, and fmt says why.
    s = S.summarize([0.8])
    assert s["n"] == 1 and s["mean"] == 0.8 and np.isnan(s["ci_low"]) and np.isnan(s["ci_high"])
    assert "no CI with n=1" in S.fmt(s) and "95% CI" not in S.fmt(s)
