"""Summaries that say what they are: mean, median, IQR, case-level bootstrap 95 % CI, counts.

A number without its case count is not a result, so every summary carries `n` (cases used) and
`n_excluded` (NaN cases, e.g. empty reference and prediction).
"""

from __future__ import annotations

import numpy as np

N_BOOT = 2000  # case-level bootstrap resamples (seeded)


def bootstrap_ci(values, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05, stat=np.mean) -> tuple[float, float]:
    """Percentile bootstrap CI of `stat` over cases (resampling cases with replacement).
    NaN with fewer than 2 cases: one case gives no interval (a zero-width one would claim certainty)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = stat(v[idx], axis=1)
    return float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2))


def summarize(values, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{mean, median, q1, q3, ci_low, ci_high, n, n_excluded} of per-case values; NaNs excluded and counted."""
    v = np.asarray(list(values), dtype=float)
    ok = v[np.isfinite(v)]
    out = {"n": int(len(ok)), "n_excluded": int(len(v) - len(ok))}
    if len(ok) == 0:
        return {**out, **{k: float("nan") for k in ("mean", "median", "q1", "q3", "ci_low", "ci_high")}}
    lo, hi = bootstrap_ci(ok, n_boot, seed)
    q1, med, q3 = np.percentile(ok, [25, 50, 75])
    return {"mean": float(ok.mean()), "median": float(med), "q1": float(q1), "q3": float(q3),
            "ci_low": lo, "ci_high": hi, **out}


def paired_difference(a, b, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Per-case differences a - b on the same cases (pairs with a NaN dropped): mean, bootstrap CI,
    Wilcoxon signed-rank p (NaN with fewer than 2 non-zero differences)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same cases: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    # n_excluded counts the pairs dropped for a NaN on either side.
    out = {**summarize(d, n_boot, seed), "n_excluded": int(len(a) - ok.sum())}
    p = float("nan")
    if np.count_nonzero(d) >= 2:
        from scipy.stats import wilcoxon

        p = float(wilcoxon(d).pvalue)
    return {**out, "wilcoxon_p": p}


def fmt(s: dict, digits: int = 3) -> str:
    """'mean 0.812 (95% CI 0.77-0.85), median 0.83, n=12 (1 excluded)'; with n=1, 'no CI with n=1'."""
    if s["n"] == 0:
        return f"n=0 ({s['n_excluded']} excluded)"
    f = f"{{:.{digits}f}}"
    ex = f" ({s['n_excluded']} excluded)" if s["n_excluded"] else ""
    ci = (f"95% CI {f.format(s['ci_low'])}-{f.format(s['ci_high'])}" if np.isfinite(s["ci_low"])
          else f"no CI with n={s['n']}")
    return f"mean {f.format(s['mean'])} ({ci}), median {f.format(s['median'])}, n={s['n']}{ex}"


def compare_models(values: dict, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Paired comparison of every pair of models on the cases both have.

    Args:
        values: {model: {case_id: value}} for one zone and metric (NaN values allowed).

    Returns one dict per pair (a, b) in the order the models were given: "a", "b", "differences"
    ({case_id: a - b} on the shared cases with both values finite), and paired_difference's summary
    (mean difference, bootstrap 95 % CI, median, IQR, n, n_excluded, wilcoxon_p).
    """
    from itertools import combinations

    out = []
    for a, b in combinations(list(values), 2):
        shared = [c for c in values[a] if c in values[b]]
        va = np.array([values[a][c] for c in shared], float)
        vb = np.array([values[b][c] for c in shared], float)
        ok = np.isfinite(va) & np.isfinite(vb)
        diffs = {c: float(x - y) for c, x, y, k in zip(shared, va, vb, ok) if k}
        out.append({"a": a, "b": b, **paired_difference(va, vb, n_boot, seed), "differences": diffs})
    return out
