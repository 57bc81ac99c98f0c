"""humanaes.evaluation.evaluator with a small real scorer whose scores are a function of the pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import humanaes
from humanaes.cli import main
from humanaes.data import Sample, load_split
from humanaes.evaluation.evaluator import evaluate
from humanaes.schema import DIMENSIONS, ScoreResult
from humanaes.scorer import BaseScorer


class BrightnessScorer(BaseScorer):
    """Scores an image by its mean brightness; the heads are simple functions of it.

    lm = brightness, regression = 1 - brightness (a head with the wrong sign), expert = brightness
    for all twelve dimensions, MetaVoter = the mean of lm and expert.
    """

    name = "brightness"
    supported_modes = ("fast", "expert", "metavoter")
    default_mode = "metavoter"

    def prepare(self, image: Image.Image, **options):
        return float(np.asarray(image, dtype=np.float64).mean() / 255.0)

    def score_prepared(self, prepared, names, mode, **options):
        out = []
        for b, name in zip(prepared, names):
            r = ScoreResult(image=name, lm_score=b, regression_score=1.0 - b)
            r.set_expert([b] * 12)
            if mode == "metavoter":
                r.metavoter_score = (b + b) / 2
                r.finalize(r.metavoter_score)
            elif mode == "expert":
                r.finalize(b)
            else:  # fast: the regression head alone
                r.lm_score = None
                r.expert = r.expert_levels = None
                r.finalize(r.regression_score)
            out.append(r)
        return out


class NoOverallScorer(BrightnessScorer):
    name = "no-overall"

    def score_prepared(self, prepared, names, mode, **options):
        return [ScoreResult(image=n) for n in names]


def _dataset(tmp_path: Path) -> Path:
    """A HumanBeauty root: 10 grey images whose true score is their brightness (+ small jitter)."""
    root = tmp_path / "hb"
    images = root / "S" / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(10):
        value = 25 * i + 5
        Image.new("RGB", (6, 4), (value, value, value)).save(images / f"g{i}.png")
        score = round(min(1.0, value / 255 + (0.03 if i % 3 == 0 else 0.0)), 6)
        row = {"image_name": f"S/images/g{i}.png", "source": "even" if i % 2 == 0 else "odd", "score": score, "is_expert": False}
        if i < 4:  # four rows with 12-dimension labels
            row["score"] = [round(score * (0.9 + 0.01 * d), 6) for d in range(11)] + [score]
            row["is_expert"] = True
        rows.append(row)
    (images / "broken.png").write_bytes(b"\x89PNG garbage")
    rows.append({"image_name": "S/images/broken.png", "source": "odd", "score": 0.5, "is_expert": False})
    rows.append({"image_name": "S/images/gone.png", "source": "even", "score": 0.5, "is_expert": False})
    (root / "test_label.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_metavoter_report(tmp_path):
    samples = load_split(_dataset(tmp_path), "test")
    report = evaluate(BrightnessScorer(), samples, mode="metavoter", batch_size=3, out_dir=tmp_path / "out")

    assert report.n_total == 12 and report.n_scored == 10 and report.n_errors == 2
    assert {e["image"] for e in report.errors} == {"S/images/broken.png", "S/images/gone.png"}
    assert report.overall["n"] == 10 and report.overall["plcc"] > 0.99 and report.overall["srcc"] == pytest.approx(1.0)
    assert set(report.per_source) == {"even", "odd"} and report.per_source["odd"]["n"] == 5
    # Every head present is evaluated alone; the regression head has the wrong sign.
    assert set(report.heads) == {"lm_score", "regression_score", "expert_overall", "metavoter_score"}
    assert report.heads["regression_score"]["plcc"] < -0.99
    assert report.heads["regression_score"]["official_plcc"] > 0.99  # why the official |PLCC| misleads
    assert set(report.per_dimension) == set(DIMENSIONS) and report.per_dimension[DIMENSIONS[0]]["n"] == 4

    out = tmp_path / "out"
    data = _strict_json(out / "report.json")
    assert data["n_errors"] == 2 and data["overall"]["confusion_matrix"] == report.overall["confusion_matrix"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and sum(p["error"] is not None for p in preds) == 2
    md = (out / "report.md").read_text()
    for text in ["Per source", "ablation", "Per dimension", "`S/images/gone.png`: file not found", "official \\|PLCC\\|", "scatter.png"]:
        assert text in md
    for png in ("scatter.png", "confusion.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 400
            assert len(np.unique(np.asarray(im.convert("L")))) > 10  # something was drawn


def test_evaluate_fast_mode_has_only_its_heads(tmp_path):
    samples = load_split(_dataset(tmp_path), "test")
    report = evaluate(BrightnessScorer(), samples, mode="fast")
    assert set(report.heads) == {"regression_score"}
    assert report.overall["plcc"] < -0.99 and not report.per_dimension and not report.files


def test_evaluate_without_overall_scores_lists_every_item(tmp_path):
    samples = load_split(_dataset(tmp_path), "test")
    report = evaluate(NoOverallScorer(), samples, out_dir=tmp_path / "o")
    assert report.n_scored == 0 and report.n_errors == 12
    assert any("no overall score" in e["error"] for e in report.errors)
    assert math.isnan(report.overall["plcc"]) and _strict_json(tmp_path / "o" / "report.json")["overall"]["plcc"] is None


def test_evaluate_single_sample_is_degenerate_not_fatal(tmp_path):
    path = tmp_path / "one.png"
    Image.new("RGB", (4, 4), (100, 100, 100)).save(path)
    report = evaluate(BrightnessScorer(), [Sample(image=path, image_name="one.png", source="s", score=0.35)], mode="expert")
    assert report.n_scored == 1 and math.isnan(report.overall["plcc"]) and report.overall["accuracy"] == 1.0


def test_eval_command(tmp_path, monkeypatch):
    root = _dataset(tmp_path)
    calls = []

    def fake_load(model, device=None, dtype=None):
        calls.append((model, device, dtype))
        return BrightnessScorer()

    monkeypatch.setattr(humanaes, "load", fake_load, raising=False)
    out = tmp_path / "report"
    res = CliRunner().invoke(
        main, ["eval", "--model", "bright", str(root), "--out", str(out), "--batch-size", "4", "--device", "cpu", "--dtype", "float32"]
    )
    assert res.exit_code == 0, res.output
    assert calls == [("bright", "cpu", "float32")]
    assert "scored 10 of 12" in res.output and "2 of 12 items could not be scored" in res.output
    assert (out / "report.md").is_file() and (out / "confusion.png").is_file()

    # A label file directly, and a missing split: one-line error before any model is loaded.
    res = CliRunner().invoke(main, ["eval", "-m", "bright", str(root / "test_label.jsonl"), "--out", str(out), "--limit", "3"])
    assert res.exit_code == 0 and "of 3 items" in res.output
    res = CliRunner().invoke(main, ["eval", "-m", "bright", str(root), "--split", "val"])
    assert res.exit_code == 2 and "no val_label.jsonl" in res.output and len(calls) == 2
