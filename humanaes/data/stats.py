"""`humanaes data stats`: counts per source and split, score histograms, level balance."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from humanaes.data.labels import Sample, load_jsonl, split_files, subset_label_files
from humanaes.errors import DataError
from humanaes.schema import LEVELS

HISTOGRAM_BINS = 10


def _describe(samples: list[Sample]) -> dict[str, Any]:
    scores = np.array([s.score for s in samples], dtype=np.float64)
    hist = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0] if scores.size else np.zeros(HISTOGRAM_BINS)
    levels = Counter(s.level for s in samples)
    return {
        "rows": len(samples),
        "expert_rows": sum(1 for s in samples if s.scores is not None),
        "mean": float(scores.mean()) if scores.size else None,
        "std": float(scores.std()) if scores.size else None,  # population std, as the README
        "min": float(scores.min()) if scores.size else None,
        "max": float(scores.max()) if scores.size else None,
        "levels": {level: int(levels.get(level, 0)) for level in LEVELS},
        "histogram": {
            "edges": [round(i / HISTOGRAM_BINS, 10) for i in range(HISTOGRAM_BINS + 1)],
            "counts": [int(c) for c in hist],
        },
    }


def dataset_stats(root: str | os.PathLike) -> dict[str, Any]:
    """Counts per source and split, score summary, histogram and level balance of a dataset.

    Uses the split files; a root without them is described through its subset label files
    (as split "unsplit"). A single label file is described as split "<file name>".
    """
    root = Path(root)
    parts: dict[str, list[Sample]] = {}
    if root.is_file():
        parts[root.name] = load_jsonl(root)
    elif root.is_dir():
        for name, path in split_files(root).items():
            parts[name] = load_jsonl(path, image_root=root)
        if not parts:
            unsplit = [s for p in subset_label_files(root).values() for s in load_jsonl(p)]
            if unsplit:
                parts["unsplit"] = unsplit
        if not parts:
            raise DataError(f"{root} holds no label files; is it a HumanBeauty root?")
    else:
        raise DataError(f"{root} does not exist; pass a HumanBeauty root folder or a label .jsonl file")

    per_source: dict[str, dict[str, int]] = defaultdict(lambda: {name: 0 for name in parts})
    for name, samples in parts.items():
        for s in samples:
            per_source[s.source][name] += 1
    everything = [s for samples in parts.values() for s in samples]
    return {
        "root": str(root),
        "splits": {name: _describe(samples) for name, samples in parts.items()},
        "all": _describe(everything),
        "per_source": {src: dict(c) for src, c in sorted(per_source.items())},
    }


def format_stats(stats: dict[str, Any], width: int = 40) -> str:
    """Plain-text rendering of dataset_stats() with text bars."""
    lines = [f"data set: {stats['root']}", ""]
    splits = list(stats["splits"])
    rows = [(name, stats["splits"][name]) for name in splits]
    if len(splits) > 1:
        rows.append(("all", stats["all"]))

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines.append(f"{'split':<12}{'rows':>8}{'expert':>8}{'mean':>9}{'std':>9}{'min':>9}{'max':>9}")
    for name, d in rows:
        lines.append(
            f"{name:<12}{d['rows']:>8}{d['expert_rows']:>8}{num(d['mean']):>9}{num(d['std']):>9}"
            f"{num(d['min']):>9}{num(d['max']):>9}"
        )

    lines += ["", "rows per source"]
    src_w = max([len("source")] + [len(s) for s in stats["per_source"]]) + 2
    lines.append(f"{'source':<{src_w}}" + "".join(f"{n:>10}" for n in splits) + f"{'total':>10}")
    for src, counts in stats["per_source"].items():
        lines.append(
            f"{src:<{src_w}}" + "".join(f"{counts.get(n, 0):>10}" for n in splits) + f"{sum(counts.values()):>10}"
        )

    lines += ["", "level balance"]
    lines.append(f"{'split':<12}" + "".join(f"{lv:>16}" for lv in LEVELS))
    for name, d in rows:
        total = max(d["rows"], 1)
        cells = "".join(f"{d['levels'][lv]:>7} ({100 * d['levels'][lv] / total:4.1f}%)" for lv in LEVELS)
        lines.append(f"{name:<12}{cells}")

    for name, d in rows:
        counts = d["histogram"]["counts"]
        edges = d["histogram"]["edges"]
        peak = max(max(counts), 1)
        lines += ["", f"score histogram ({name})"]
        for i, c in enumerate(counts):
            close = "]" if i == len(counts) - 1 else ")"
            bar = "#" * max(int(round(width * c / peak)), 1 if c else 0)  # a non-empty bin always shows
            lines.append(f"[{edges[i]:.1f}, {edges[i + 1]:.1f}{close} {c:>7} {bar}")
    return "\n".join(lines)

