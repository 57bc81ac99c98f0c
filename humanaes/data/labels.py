"""Label files in the HumanBeauty layout: rows checked, read and written (reference section 6).

Layout::

    ROOT/
      <subset>/images/<file>          e.g. HumanBeauty-58K (overall only), HumanBeauty-50K (expert)
      <subset>/label.jsonl            {"image_name": "<file>", "source", "score", "text_level"?, ...}
      train_label.jsonl, test_label.jsonl, val_label.jsonl
                                      same rows + "is_expert", image_name "<subset>/images/<file>"

``score`` is a float in [0, 1] (overall only) or twelve floats in DIMENSIONS order (expert rows).
The official training script pads overall-only rows to twelve scores ``[0]*11 + [overall]``; such
rows are read as overall-only. Extra keys (``raw_score``, ``raw_scale`` ...) are kept on rewrite.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humanaes.errors import DataError
from humanaes.io.jsonl import json_lines
from humanaes.schema import DIMENSIONS, LEVELS, NUM_DIMENSIONS, OVERALL, score_to_level

SPLIT_SUFFIX = "_label.jsonl"
SUBSET_LABEL = "label.jsonl"
#: Subset folder names used by `import` (the HumanBeauty names: 58K overall-only, 50K expert).
OVERALL_SUBSET = "HumanBeauty-58K"
EXPERT_SUBSET = "HumanBeauty-50K"
# Scores are normalised and rounded to 6 decimals, so a tiny slack only absorbs float noise.
_EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    image       path of the image file (label-file folder joined with image_name)
    image_name  the name as written in the label file
    score       overall score in [0, 1] (the Comprehensive Aesthetic Score on expert rows)
    scores      the twelve dimension scores in DIMENSIONS order, or None on overall-only rows
    """

    image: Path
    image_name: str
    source: str
    score: float
    scores: tuple[float, ...] | None = None
    is_expert: bool = False
    text_level: str | None = None
    label_file: str | None = None
    line: int | None = None

    @property
    def level(self) -> str:
        return score_to_level(self.score)

    @property
    def dimension_scores(self) -> dict[str, float] | None:
        return None if self.scores is None else dict(zip(DIMENSIONS, self.scores))

    @property
    def where(self) -> str:
        """`file:line` of the row, for messages."""
        return f"{self.label_file}:{self.line}" if self.label_file else self.image_name


@dataclass
class _Row:
    """Result of checking one JSON row: the parsed fields, or the problems that block it."""

    fields: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_unit(value: Any, what: str, problems: list[str]) -> float | None:
    if not _is_number(value) or not math.isfinite(float(value)):
        problems.append(f"{what} must be a finite number, got {value!r}")
        return None
    if not (-_EPS <= float(value) <= 1 + _EPS):
        problems.append(f"{what} {value} is outside [0, 1]")
        return None
    return float(value)


def _check_row(obj: Any) -> _Row:
    """Check one label row; returns its fields or the list of problems (never raises)."""
    if not isinstance(obj, dict):
        return _Row(None, [f"row must be a JSON object, got {type(obj).__name__}"])
    problems: list[str] = []
    warnings: list[str] = []

    name = obj.get("image_name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"image_name must be a non-empty string, got {name!r}")

    source = obj.get("source")
    if source is None:
        warnings.append("no source; counted as 'unknown'")
        source = "unknown"
    elif not isinstance(source, str) or not source.strip():
        problems.append(f"source must be a non-empty string, got {source!r}")

    is_expert = obj.get("is_expert")
    if is_expert is not None and not isinstance(is_expert, bool):
        problems.append(f"is_expert must be true or false, got {is_expert!r}")
        is_expert = None

    raw = obj.get("score")
    overall: float | None = None
    scores: tuple[float, ...] | None = None
    if isinstance(raw, list):
        if len(raw) != NUM_DIMENSIONS:
            problems.append(f"score must be one number or {NUM_DIMENSIONS} numbers, got a list of {len(raw)}")
        else:
            values = [_check_unit(v, f"score[{i}] ({DIMENSIONS[i]})", problems) for i, v in enumerate(raw)]
            if all(v is not None for v in values):
                # The official script pads overall-only rows as [0]*11 + [overall].
                padded = all(v == 0 for v in values[:OVERALL])
                overall = values[OVERALL]
                if is_expert is None:
                    is_expert = not padded
                if is_expert:
                    scores = tuple(values)  # type: ignore[arg-type]
                elif not padded:
                    warnings.append(
                        "is_expert is false but the 12 scores are not the [0]*11+[overall] padding; "
                        "only the last (overall) is used"
                    )
    elif raw is None:
        problems.append("no score")
    else:
        overall = _check_unit(raw, "score", problems)
        if is_expert:
            problems.append(f"is_expert is true but score has 1 number, not {NUM_DIMENSIONS}")
        is_expert = False if is_expert is None else is_expert

    text_level = obj.get("text_level")
    if text_level is not None:
        if not isinstance(text_level, str) or text_level.strip().lower() not in LEVELS:
            problems.append(f"text_level {text_level!r} is not one of {', '.join(LEVELS)}")
            text_level = None
        else:
            text_level = text_level.strip().lower()
            if overall is not None and text_level != score_to_level(min(max(overall, 0.0), 1.0)):
                warnings.append(
                    f"text_level {text_level!r} disagrees with score {overall} "
                    f"(level {score_to_level(min(max(overall, 0.0), 1.0))!r})"
                )

    if problems:
        return _Row(None, problems, warnings)
    return _Row(
        {
            "image_name": name,
            "source": source,
            "score": min(max(overall, 0.0), 1.0),  # type: ignore[type-var]
            "scores": None if scores is None else tuple(min(max(s, 0.0), 1.0) for s in scores),
            "is_expert": bool(is_expert),
            "text_level": text_level,
        },
        [],
        warnings,
    )


def _iter_json_lines(path: Path, *, objects: bool = False) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value or None, problem or None) of each non-blank line of a label file
    (`humanaes.io.jsonl.json_lines`), its open and decoding errors as DataError."""
    try:
        # utf-8-sig: a byte order mark (as Windows editors write) is skipped, as in CSV imports.
        handle = path.open("r", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read label file {path} ({exc.strerror or exc})") from None
    with handle:
        try:
            yield from json_lines(handle, objects=objects)
        except UnicodeDecodeError:
            raise DataError(f"label file {path} is not UTF-8 text; re-save it as UTF-8") from None


def default_image_root(label_file: Path) -> Path:
    """Folder that a label file's image names are relative to.

    A subset's `label.jsonl` names files inside its `images/` folder; split files at the dataset
    root name `<subset>/images/<file>` relative to the root.
    """
    if label_file.name == SUBSET_LABEL and (label_file.parent / "images").is_dir():
        return label_file.parent / "images"
    return label_file.parent


def load_jsonl(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[Sample]:
    """Read a HumanBeauty label file; raises DataError naming file:line on the first bad row.

    Image files are not checked here (evaluation reports unreadable images per item); use
    `validate_dataset` / `humanaes data validate` for that.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else default_image_root(path)
    samples: list[Sample] = []
    for number, _, f in _checked_rows(path):
        samples.append(
            Sample(
                image=root / f["image_name"],
                image_name=f["image_name"],
                source=f["source"],
                score=f["score"],
                scores=f["scores"],
                is_expert=f["is_expert"],
                text_level=f["text_level"],
                label_file=str(path),
                line=number,
            )
        )
    return samples


def split_files(root: str | os.PathLike) -> dict[str, Path]:
    """The split label files of a dataset root, by split name (`train`, `test`, `val`, ...)."""
    root = Path(root)
    return {p.name[: -len(SPLIT_SUFFIX)]: p for p in sorted(root.glob(f"*{SPLIT_SUFFIX}")) if p.is_file()}


def subset_label_files(root: str | os.PathLike) -> dict[str, Path]:
    """The per-subset `label.jsonl` files of a dataset root, by subset folder name."""
    root = Path(root)
    return {p.parent.name: p for p in sorted(root.glob(f"*/{SUBSET_LABEL}")) if p.is_file()}


def load_split(root: str | os.PathLike, split: str) -> list[Sample]:
    """Samples of `ROOT/<split>_label.jsonl`, image paths resolved against ROOT."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder {root} does not exist; pass a HumanBeauty root folder")
    path = root / f"{split}{SPLIT_SUFFIX}"
    if not path.is_file():
        have = ", ".join(split_files(root)) or "none"
        raise DataError(
            f"{root} has no {split}{SPLIT_SUFFIX} (splits there: {have}); "
            f"pick another --split or run `humanaes data split {root}`"
        )
    return load_jsonl(path, image_root=root)


def load_samples(data: str | os.PathLike, split: str = "test") -> list[Sample]:
    """Samples of a dataset root's split, or of a label .jsonl file given directly."""
    data = Path(data)
    if data.is_file():
        return load_jsonl(data)
    return load_split(data, split)


def _checked_rows(label_file: Path) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(line number, raw row, checked fields) of a label file; DataError naming file:line on the
    first bad row."""
    for number, obj, json_error in _iter_json_lines(label_file):
        if json_error:
            raise DataError(f"{label_file}:{number}: {json_error}; fix or remove that line")
        row = _check_row(obj)
        if row.fields is None:
            raise DataError(f"{label_file}:{number}: {'; '.join(row.problems)}")
        yield number, obj, row.fields


def _read_subset_rows(label_file: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(raw row, checked fields) of a subset label file; DataError on the first bad row."""
    return [(obj, fields) for _, obj, fields in _checked_rows(label_file)]

