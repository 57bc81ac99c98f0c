"""Evaluate a scorer on labelled samples (reference section 8) and write a JSON + Markdown report.

What is measured, each with every metric of humanaes.evaluation.metrics:
- the mode's overall score vs the true overall score (the headline numbers);
- the same per source (MEBeauty, AVA, ... behave very differently);
- each head alone (LM, regression, expert overall, MetaVoter), the paper's ablation;
- the twelve dimensions on rows that carry 12-dimension labels, when the scorer outputs them.

Items the scorer could not score (unreadable image, model failure, no overall score) are counted
and listed in the report, never silently dropped; metrics are computed on the scored items.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from humanaes.data import Sample
from humanaes.errors import DataError
from humanaes.evaluation.metrics import METRIC_KEYS, METRIC_LABELS, compute_metrics
from humanaes.fsutil import atomic_write
from humanaes.hints import hint
from humanaes.schema import DIMENSIONS, LEVELS, OVERALL, ScoreResult, score_to_level

if TYPE_CHECKING:  # import cycle-free typing only
    from humanaes.scorer import BaseScorer

#: Head outputs compared in the ablation (report key -> label); read from a result by _head_values.
REPORTED_HEADS: dict[str, str] = {
    "lm_score": "LM head",
    "regression_score": "regression head",
    "expert_overall": "expert head (Comprehensive Aesthetic Score)",
    "metavoter_score": "MetaVoter",
}
#: Metrics shown in the compact tables (all of METRIC_KEYS are in the JSON).
MAIN_KEYS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1", "plcc", "srcc", "krcc", "rmse", "mae")
OFFICIAL_KEYS: tuple[str, ...] = tuple(k for k in METRIC_KEYS if k.startswith("official_"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _head_values(result: ScoreResult) -> dict[str, float | None]:
    expert = result.expert or {}
    values = {
        "lm_score": result.lm_score,
        "regression_score": result.regression_score,
        "expert_overall": expert.get(DIMENSIONS[OVERALL]),
        "metavoter_score": result.metavoter_score,
    }
    return {k: (float(v) if _finite(v) else None) for k, v in values.items()}


def _jsonable(value: Any) -> Any:
    """NaN/inf -> None so the report is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _cell(value: Any) -> str:
    # A literal "|" (as in "official |PLCC|") would split a Markdown table cell.
    return _fmt(value).replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


@dataclass
class EvalReport:
    """Everything evaluate() measured. `predictions` holds one dict per input sample."""

    mode: str
    model: str
    n_total: int
    n_scored: int
    overall: dict[str, Any]
    per_source: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_dimension: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    title: str = ""

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    def to_dict(self, *, include_predictions: bool = False) -> dict[str, Any]:
        out = {
            "title": self.title,
            "model": self.model,
            "mode": self.mode,
            "n_total": self.n_total,
            "n_scored": self.n_scored,
            "n_errors": self.n_errors,
            "levels": list(LEVELS),
            "overall": self.overall,
            "per_source": self.per_source,
            "heads": self.heads,
            "per_dimension": self.per_dimension,
            "errors": self.errors,
            "files": self.files,
        }
        if include_predictions:
            out["predictions"] = self.predictions
        return _jsonable(out)

    def summary(self) -> str:
        """A few lines for the terminal: counts and the headline metrics."""
        m = self.overall
        head = ", ".join(f"{METRIC_LABELS[k]} {_fmt(m.get(k))}" for k in MAIN_KEYS)
        official = ", ".join(f"{METRIC_LABELS[k]} {_fmt(m.get(k))}" for k in OFFICIAL_KEYS)
        return (
            f"{self.model} ({self.mode}): scored {self.n_scored} of {self.n_total} items, {self.n_errors} errors\n"
            f"  {head}\n  {official}"
        )

    def to_markdown(self) -> str:
        m = self.overall
        lines = [f"# {self.title or 'Evaluation'}", ""]
        lines += [
            f"Model `{self.model}`, mode `{self.mode}`: scored **{self.n_scored}** of {self.n_total} items; "
            f"**{self.n_errors}** could not be scored (listed at the end). Levels by the cut points "
            "0.2 / 0.4 / 0.6 / 0.8; correlations are signed.",
            "",
            f"## Overall score (`{self.mode}`) vs ground truth",
            "",
        ]
        lines += _table(["n"] + [METRIC_LABELS[k] for k in MAIN_KEYS], [[m["n"]] + [m[k] for k in MAIN_KEYS]])
        lines += [
            "",
            "Official variants, only for comparison with the paper's numbers (absolute correlations; "
            'the official "MSE" is an RMSE and its "MAE" is the square root of the MAE):',
            "",
        ]
        lines += _table([METRIC_LABELS[k] for k in OFFICIAL_KEYS], [[m[k] for k in OFFICIAL_KEYS]])
        lines += ["", "Confusion matrix (rows: true level, columns: predicted level):", ""]
        lines += _table(["true \\ pred"] + list(LEVELS), [[lv] + row for lv, row in zip(LEVELS, m["confusion_matrix"])])
        if "scatter" in self.files and "confusion" in self.files:
            lines += [
                "",
                f"![predicted vs true]({Path(self.files['scatter']).name}) "
                f"![confusion matrix]({Path(self.files['confusion']).name})",
            ]
        if self.per_source:
            lines += ["", "## Per source", ""]
            lines += _table(
                ["source", "n"] + [METRIC_LABELS[k] for k in MAIN_KEYS],
                [[src, d["n"]] + [d[k] for k in MAIN_KEYS] for src, d in self.per_source.items()],
            )
        if self.heads:
            lines += [
                "",
                "## Each head alone vs the MetaVoter (ablation)",
                "",
                "Each head's own score against the true overall score, on the items where that head "
                "gave a value (n).",
                "",
            ]
            lines += _table(
                ["head", "n"] + [METRIC_LABELS[k] for k in MAIN_KEYS],
                [[REPORTED_HEADS[h], d["n"]] + [d[k] for k in MAIN_KEYS] for h, d in self.heads.items()],
            )
        if self.per_dimension:
            n_dim = next(iter(self.per_dimension.values()))["n"]
            lines += ["", f"## Per dimension (rows with 12-dimension labels, n = {n_dim})", ""]
            lines += _table(
                ["dimension"] + [METRIC_LABELS[k] for k in MAIN_KEYS],
                [[dim] + [d[k] for k in MAIN_KEYS] for dim, d in self.per_dimension.items()],
            )
        lines += ["", f"## Items not scored ({self.n_errors})", ""]
        if self.errors:
            limit = 200
            for e in self.errors[:limit]:
                # Scorer errors usually start with the item's name already; do not repeat it.
                message = e["error"].removeprefix(f"{e['image']}: ")
                lines.append(f"- `{e['image']}`: {message}")
            if self.n_errors > limit:
                lines.append(f"- ... and {self.n_errors - limit} more (all are in report.json)")
        else:
            lines.append("None.")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | os.PathLike) -> dict[str, str]:
        """Write report.json, report.md, predictions.jsonl and the two PNG plots into out_dir."""
        from humanaes.evaluation.plots import confusion_plot, scatter_plot

        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create output folder {out} ({exc.strerror or exc}); {hint(api='pass another out_dir', cli='pass another --out')}") from None
        scored = [p for p in self.predictions if p["error"] is None]
        m = self.overall
        subtitle = f"n = {m['n']}   PLCC {_fmt(m['plcc'])}   SRCC {_fmt(m['srcc'])}   Acc {_fmt(m['accuracy'])}"
        self.files = {
            "json": str(out / "report.json"),
            "markdown": str(out / "report.md"),
            "predictions": str(out / "predictions.jsonl"),
            "scatter": str(scatter_plot(
                [p["pred"] for p in scored], [p["true"] for p in scored], out / "scatter.png",
                title=f"{self.model} ({self.mode}): predicted vs true", subtitle=subtitle,
            )),
            "confusion": str(confusion_plot(
                m["confusion_matrix"], out / "confusion.png",
                title=f"{self.model} ({self.mode}): levels", subtitle=f"n = {m['n']}   accuracy {_fmt(m['accuracy'])}",
            )),
        }
        atomic_write(self.files["predictions"], "".join(json.dumps(_jsonable(p), ensure_ascii=False) + "\n" for p in self.predictions))
        atomic_write(self.files["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        atomic_write(self.files["markdown"], self.to_markdown())
        return self.files


def _metrics_of(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    return compute_metrics([p for p, _ in pairs], [t for _, t in pairs])


def evaluate(
    scorer: "BaseScorer",
    samples: Sequence[Sample],
    mode: str = "metavoter",
    batch_size: int = 8,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = False,
    title: str | None = None,
) -> EvalReport:
    """Score `samples` with `scorer` in `mode` and measure against their labels.

    Writes report.json, report.md, predictions.jsonl, scatter.png and confusion.png to `out_dir`
    when given. Scorer-level misuse (unknown mode, bad batch size) raises HumanAesError; per-item
    failures become entries of `report.errors`.
    """
    from tqdm import tqdm

    samples = list(samples)
    if not samples:
        raise DataError(f"no samples to evaluate; check the data set path and {hint(api='the split', cli='--split')}")
    model = getattr(scorer, "name", type(scorer).__name__)
    results = scorer.iter_score(
        [str(s.image) for s in samples], mode=mode, batch_size=batch_size, names=[s.image_name for s in samples]
    )

    predictions: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    bar = tqdm(total=len(samples), desc="evaluating", unit="img", disable=not progress)
    # zip_longest: a scorer returning too few results must show up as errors, not shrink the set.
    for sample, result in itertools.zip_longest(samples, results):
        if sample is None:
            break  # more results than inputs: a scorer bug; ignore the extras
        bar.update(1)
        error: str | None
        heads: dict[str, float | None] = dict.fromkeys(REPORTED_HEADS)
        pred: float | None = None
        if result is None:
            error = "the scorer returned no result for this item"
        else:
            error = result.error
            heads = _head_values(result)
            if error is None:
                if _finite(result.overall):
                    pred = float(result.overall)  # type: ignore[arg-type]
                else:
                    error = f"no overall score in mode {mode!r} (got {result.overall!r})"
        row: dict[str, Any] = {
            "image": sample.image_name,
            "source": sample.source,
            "true": sample.score,
            "pred": pred,
            "true_level": sample.level,
            "pred_level": score_to_level(min(max(pred, 0.0), 1.0)) if pred is not None else None,
            **heads,
            "error": error,
        }
        if result is not None and result.expert is not None:
            row["expert"] = dict(result.expert)
        if sample.scores is not None:
            row["true_expert"] = dict(zip(DIMENSIONS, sample.scores))
        predictions.append(row)
        if error is not None:
            errors.append({"image": sample.image_name, "source": sample.source, "error": error})
    bar.close()

    ok = [p for p in predictions if p["error"] is None]
    overall = _metrics_of([(p["pred"], p["true"]) for p in ok])

    by_source: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in ok:
        by_source[p["source"]].append((p["pred"], p["true"]))
    per_source = {src: _metrics_of(pairs) for src, pairs in sorted(by_source.items())}

    heads_report: dict[str, dict[str, Any]] = {}
    for head in REPORTED_HEADS:
        pairs = [(p[head], p["true"]) for p in ok if p[head] is not None]
        if pairs:
            heads_report[head] = _metrics_of(pairs)

    per_dimension: dict[str, dict[str, Any]] = {}
    expert_rows = [
        p for p in ok
        if "true_expert" in p and "expert" in p and all(_finite(p["expert"].get(d)) for d in DIMENSIONS)
    ]
    if expert_rows:
        for dim in DIMENSIONS:
            per_dimension[dim] = _metrics_of([(p["expert"][dim], p["true_expert"][dim]) for p in expert_rows])

    report = EvalReport(
        mode=mode,
        model=model,
        n_total=len(samples),
        n_scored=len(ok),
        overall=overall,
        per_source=per_source,
        heads=heads_report,
        per_dimension=per_dimension,
        errors=errors,
        predictions=predictions,
        title=title or f"Evaluation of {model} ({mode})",
    )
    if out_dir is not None:
        report.write(out_dir)
    return report
