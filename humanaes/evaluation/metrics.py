"""Evaluation metrics of HumanAesExpert (reference section 8), numpy only.

The paper reports 5-class accuracy, macro precision/recall/F1, PLCC, SRCC, KRCC, "MSE" and "MAE".
The official evaluation script has pitfalls we do not copy but do reproduce, clearly labelled, so
numbers can be compared with the paper:

- it takes |PLCC|, |SRCC|, |KRCC| (a model with the wrong sign would look good), so we report the
  signed correlations and, separately, ``official_plcc`` etc.;
- its "mse" is the root mean squared error -> ``official_mse`` = RMSE;
- its "mae" is the square root of the mean absolute error -> ``official_mae`` = sqrt(MAE).

Degenerate input never raises: fewer than two pairs, a constant array (undefined correlation) or a
non-finite value anywhere gives NaN, like scipy's default ``nan_policy="propagate"``. Callers that
want to skip failed items must drop them before calling (evaluation.py does, and lists them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from humanaes.schema import LEVELS, level_index, score_to_level

ArrayLike = Sequence[float] | np.ndarray

NAN = float("nan")

#: The scalar keys of compute_metrics(), in report order.
METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "plcc",
    "srcc",
    "krcc",
    "rmse",
    "mae",
    "official_plcc",
    "official_srcc",
    "official_krcc",
    "official_mse",
    "official_mae",
)

#: Short human labels for reports (the official variants are marked as such).
METRIC_LABELS: dict[str, str] = {
    "accuracy": "Acc",
    "precision": "Prec (macro)",
    "recall": "Rec (macro)",
    "f1": "F1 (macro)",
    "plcc": "PLCC",
    "srcc": "SRCC",
    "krcc": "KRCC",
    "rmse": "RMSE",
    "mae": "MAE",
    "official_plcc": "official |PLCC|",
    "official_srcc": "official |SRCC|",
    "official_krcc": "official |KRCC|",
    "official_mse": 'official "MSE" (=RMSE)',
    "official_mae": 'official "MAE" (=sqrt MAE)',
}


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in length ({p.size} vs {t.size})")
    return p, t


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


# -- levels and classification ----------------------------------------------------------------


def to_levels(scores: ArrayLike) -> np.ndarray:
    """Level indices (0 = bad ... 4 = excellent) of scores, by schema.score_to_level's cut points."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    # Per element through score_to_level so the cut points live in one place (schema.py).
    return np.array([level_index(score_to_level(float(v))) for v in values], dtype=np.int64)


def confusion_matrix(pred: ArrayLike, true: ArrayLike) -> np.ndarray:
    """5x5 counts over LEVELS, rows = true level, columns = predicted level.

    Pairs with a non-finite value have no level and are left out (the other metrics turn NaN).
    """
    p, t = _pair(pred, true)
    keep = np.isfinite(p) & np.isfinite(t)
    cm = np.zeros((len(LEVELS), len(LEVELS)), dtype=np.int64)
    np.add.at(cm, (to_levels(t[keep]), to_levels(p[keep])), 1)
    return cm


def accuracy(pred: ArrayLike, true: ArrayLike) -> float:
    """Fraction of items whose predicted level equals the true level."""
    p, t = _pair(pred, true)
    if p.size == 0 or not _finite(p, t):
        return NAN
    return float(np.mean(to_levels(p) == to_levels(t)))


def precision_recall_f1(pred: ArrayLike, true: ArrayLike) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the levels present in truth or prediction.

    Same as sklearn's ``average="macro", zero_division=0``: a class never predicted has precision
    0, a class never true has recall 0, and F1 is 0 when precision + recall is 0.
    """
    p, t = _pair(pred, true)
    if p.size == 0 or not _finite(p, t):
        return NAN, NAN, NAN
    cm = confusion_matrix(p, t)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    present = (predicted + actual) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return float(prec[present].mean()), float(rec[present].mean()), float(f1[present].mean())


# -- correlations -------------------------------------------------------------------------------


def rankdata(values: ArrayLike) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata "average")."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], n]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def plcc(pred: ArrayLike, true: ArrayLike) -> float:
    """Signed Pearson linear correlation; NaN for n < 2, a constant array or non-finite input."""
    p, t = _pair(pred, true)
    if p.size < 2 or not _finite(p, t):
        return NAN
    dp = p - p.mean()
    dt = t - t.mean()
    denom = math.sqrt(float(dp @ dp) * float(dt @ dt))
    if denom == 0.0:
        return NAN
    return float(np.clip(float(dp @ dt) / denom, -1.0, 1.0))


def srcc(pred: ArrayLike, true: ArrayLike) -> float:
    """Signed Spearman rank correlation (Pearson of tie-averaged ranks)."""
    p, t = _pair(pred, true)
    if p.size < 2 or not _finite(p, t):
        return NAN
    return plcc(rankdata(p), rankdata(t))


def _tie_pairs(sorted_values: np.ndarray) -> int:
    """Number of tied pairs, sum of t*(t-1)/2 over runs of equal values of a sorted array."""
    if sorted_values.size == 0:
        return 0
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    counts = np.diff(np.r_[starts, sorted_values.size]).astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def _count_inversions(values: np.ndarray) -> int:
    """Pairs i < j with values[i] > values[j] (strict), via a Fenwick tree over dense ranks.

    O(n log n); a Python loop, which is fast enough for test sets of tens of thousands.
    """
    _, dense = np.unique(values, return_inverse=True)
    size = int(dense.max()) + 1 if dense.size else 0
    tree = [0] * (size + 1)
    inversions = 0
    seen = 0
    for r in dense.tolist():
        # count of earlier values <= this one: prefix sum up to rank r (1-based r+1)
        i = r + 1
        not_greater = 0
        while i > 0:
            not_greater += tree[i]
            i -= i & -i
        inversions += seen - not_greater
        i = r + 1
        while i <= size:
            tree[i] += 1
            i += i & -i
        seen += 1
    return inversions


def krcc(pred: ArrayLike, true: ArrayLike) -> float:
    """Kendall's tau-b (tie-corrected), as scipy.stats.kendalltau's default."""
    p, t = _pair(pred, true)
    n = p.size
    if n < 2 or not _finite(p, t):
        return NAN
    # Sort by true then pred: discordant pairs are then the strict inversions of pred.
    order = np.lexsort((p, t))
    ts, ps = t[order], p[order]
    total = n * (n - 1) // 2
    t_ties = _tie_pairs(ts)
    p_ties = _tie_pairs(np.sort(p, kind="mergesort"))
    # Pairs tied in both: runs of equal (t, p) in the lexsorted order.
    same = np.r_[True, (ts[1:] != ts[:-1]) | (ps[1:] != ps[:-1])]
    starts = np.flatnonzero(same)
    counts = np.diff(np.r_[starts, n]).astype(np.int64)
    both_ties = int((counts * (counts - 1) // 2).sum())
    discordant = _count_inversions(ps)
    concordant_minus_discordant = total - t_ties - p_ties + both_ties - 2 * discordant
    denom = math.sqrt(float(total - t_ties)) * math.sqrt(float(total - p_ties))
    if denom == 0.0:
        return NAN
    return float(np.clip(concordant_minus_discordant / denom, -1.0, 1.0))


# -- errors ---------------------------------------------------------------------------------------


def rmse(pred: ArrayLike, true: ArrayLike) -> float:
    """Root mean squared error (defined for n >= 1)."""
    p, t = _pair(pred, true)
    if p.size == 0 or not _finite(p, t):
        return NAN
    return float(math.sqrt(float(np.mean((p - t) ** 2))))


def mae(pred: ArrayLike, true: ArrayLike) -> float:
    """Mean absolute error (defined for n >= 1)."""
    p, t = _pair(pred, true)
    if p.size == 0 or not _finite(p, t):
        return NAN
    return float(np.mean(np.abs(p - t)))


# -- everything at once ----------------------------------------------------------------------------


def compute_metrics(pred: ArrayLike, true: ArrayLike) -> dict[str, Any]:
    """All metrics of reference section 8 for one set of (predicted, true) overall scores.

    Returns ``n``, the keys of METRIC_KEYS (floats, NaN where undefined) and ``confusion_matrix``
    (5x5 nested lists, rows = true level, columns = predicted, LEVELS order).
    """
    p, t = _pair(pred, true)
    precision, recall, f1 = precision_recall_f1(p, t)
    out: dict[str, Any] = {
        "n": int(p.size),
        "accuracy": accuracy(p, t),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "plcc": plcc(p, t),
        "srcc": srcc(p, t),
        "krcc": krcc(p, t),
        "rmse": rmse(p, t),
        "mae": mae(p, t),
    }
    out["official_plcc"] = abs(out["plcc"])
    out["official_srcc"] = abs(out["srcc"])
    out["official_krcc"] = abs(out["krcc"])
    out["official_mse"] = out["rmse"]  # the official "mse" is an RMSE
    out["official_mae"] = math.sqrt(out["mae"]) if not math.isnan(out["mae"]) else NAN
    out["confusion_matrix"] = confusion_matrix(p, t).tolist()
    return out
