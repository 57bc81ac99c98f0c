"""humanaes.evaluation.metrics against scipy.stats / sklearn on random data, with and without ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from humanaes.evaluation import metrics as M
from humanaes.schema import LEVELS, level_index, score_to_level


def _datasets():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, 200)
    yield "continuous", true, np.clip(true + rng.normal(0, 0.15, 200), 0, 1)
    # Heavy ties on both sides (scores rounded to a coarse grid), as on real rating data.
    t = np.round(rng.uniform(0, 1, 150) * 8) / 8
    yield "ties", t, np.round(np.clip(t + rng.normal(0, 0.2, 150), 0, 1) * 5) / 5
    yield "anti", true[:50], 1 - true[:50] + rng.normal(0, 0.05, 50)
    yield "small", np.array([0.1, 0.5, 0.5, 0.9]), np.array([0.3, 0.3, 0.7, 0.7])


@pytest.mark.parametrize("name,true,pred", list(_datasets()), ids=[d[0] for d in _datasets()])
def test_against_reference_implementations(name, true, pred):
    m = M.compute_metrics(pred, true)
    assert m["n"] == len(true)
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred, true)[0], abs=1e-12)
    assert m["srcc"] == pytest.approx(stats.spearmanr(pred, true)[0], abs=1e-12)
    assert m["krcc"] == pytest.approx(stats.kendalltau(pred, true)[0], abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(true, pred)), abs=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), abs=1e-12)

    lt = [level_index(score_to_level(v)) for v in true]
    lp = [level_index(score_to_level(v)) for v in pred]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(lt, lp))
    p, r, f, _ = skm.precision_recall_fscore_support(lt, lp, average="macro", zero_division=0)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(lt, lp, labels=range(5)).tolist()

    # Official variants: absolute correlations, RMSE as "MSE", sqrt(MAE) as "MAE".
    assert m["official_plcc"] == abs(m["plcc"])
    assert m["official_krcc"] == abs(m["krcc"])
    assert m["official_mse"] == m["rmse"]
    assert m["official_mae"] == pytest.approx(math.sqrt(m["mae"]))


def test_signed_correlation_is_negative_for_reversed_model():
    true = np.linspace(0, 1, 20)
    m = M.compute_metrics(1 - true, true)
    assert m["plcc"] == pytest.approx(-1) and m["srcc"] == pytest.approx(-1) and m["krcc"] == pytest.approx(-1)
    assert m["official_plcc"] == pytest.approx(1)


def test_levels_use_schema_cut_points():
    cuts = [0.0, 0.19999, 0.2, 0.4, 0.59999, 0.6, 0.8, 1.0]
    assert [LEVELS[i] for i in M.to_levels(cuts)] == [score_to_level(c) for c in cuts]
    assert list(M.to_levels([0.2, 0.8])) == [1, 4]


def test_rankdata_matches_scipy():
    x = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], dtype=float)
    np.testing.assert_allclose(M.rankdata(x), stats.rankdata(x))


@pytest.mark.parametrize(
    "pred,true",
    [
        ([], []),
        ([0.5], [0.4]),
        ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]),  # constant prediction
        ([0.1, float("nan"), 0.3], [0.1, 0.2, 0.3]),
        ([0.1, 0.2, 0.3], [0.1, 0.2, float("inf")]),
    ],
)
def test_degenerate_input_gives_nan_without_crashing(pred, true):
    m = M.compute_metrics(pred, true)
    for key in ("plcc", "srcc", "krcc"):
        assert math.isnan(m[key]) and math.isnan(m["official_" + key])
    assert len(m["confusion_matrix"]) == 5


def test_nan_poisons_every_scalar_and_confusion_skips_it():
    m = M.compute_metrics([0.1, float("nan"), 0.9], [0.1, 0.5, 0.9])
    assert all(math.isnan(m[k]) for k in M.METRIC_KEYS)
    assert sum(map(sum, m["confusion_matrix"])) == 2


def test_single_pair_errors_are_defined():
    m = M.compute_metrics([0.5], [0.3])
    assert m["rmse"] == pytest.approx(0.2) and m["mae"] == pytest.approx(0.2)
    assert m["accuracy"] == 0.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        M.compute_metrics([0.1, 0.2], [0.1])
