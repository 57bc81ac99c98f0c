"""Reading a source's table (CSV/TSV/JSONL of image paths and raw scores) and normalising its scores.

Every check here runs before any image is opened, and any failure is one ConfigError/DataError
line naming the source, the file (and line) and the cause, so a bad spec never starts a build.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from humanaes.data.build.spec import SourceSpec, read_text_file
from humanaes.data.importer import parse_number
from humanaes.errors import DataError
from humanaes.fsutil import is_within
from humanaes.io.jsonl import json_lines

#: Score decimals in the label files (as the shared HumanBeauty copy).
DECIMALS = 6


@dataclass(frozen=True)
class SourceRow:
    """One row of a source table whose image path and score passed the checks."""

    source: str
    line: int
    rel: str  # image path relative to the source's image folder, '/'-separated
    path: Path  # absolute path of the image file
    raw_score: float


@dataclass(frozen=True)
class SourceTable:
    spec: SourceSpec
    rows: tuple[SourceRow, ...]
    scale: tuple[float, float]  # the declared range, or (min, max) of the rows

    def normalise(self, raw: float) -> float:
        """Min-max normalisation of a raw score onto [0, 1], rounded to DECIMALS."""
        lo, hi = self.scale
        return min(max(round((raw - lo) / (hi - lo), DECIMALS), 0.0), 1.0)


def _records(path: Path, where: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """(column names, iterator of (line, row)) of a CSV/TSV with a header row or a JSONL file."""
    suffix = path.suffix.lower()
    text = read_text_file(path, f"{where}: table", DataError, missing_hint="check `table` in the spec")
    if suffix in (".jsonl", ".ndjson"):
        rows: list[tuple[int, dict[str, Any]]] = []
        columns: dict[str, None] = {}
        for number, obj, problem in json_lines(text, objects=True):
            if problem:
                raise DataError(f"{where}: {path}:{number}: {problem}")
            columns.update(dict.fromkeys(obj))
            rows.append((number, obj))
        return list(columns), iter(rows)
    if suffix not in (".csv", ".tsv"):
        raise DataError(f"{where}: table {path} has an unsupported format {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    # newline="": quoted cells may hold line breaks
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{where}: {path}:1: malformed header ({exc})") from None
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{where}: table {path} is empty; expected a header row naming the image and score columns")
    header = [h.strip() for h in header]

    def body() -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{where}: {path}:{reader.line_num}: {len(cells)} cells, the header has {len(header)}")
                yield reader.line_num, dict(zip(header, cells))
        except csv.Error as exc:
            raise DataError(f"{where}: {path}:{reader.line_num}: malformed CSV ({exc})") from None

    return header, body()


def _column(wanted: str, columns: list[str], kind: str, where: str, path: Path) -> str:
    """The column named `wanted` (exact, else ignoring case and surrounding spaces)."""
    if wanted in columns:
        return wanted
    matches = [c for c in columns if c.strip().lower() == wanted.strip().lower()]
    if len(matches) == 1:
        return matches[0]
    found = ", ".join(repr(c) for c in columns) or "none"
    raise DataError(f"{where}: table {path} has no {kind} column {wanted!r} (columns found: {found}); set {kind}_column in the spec")


def read_source(spec: SourceSpec) -> SourceTable:
    """Read and check a source's table: columns, numbers, range, image paths (not the images)."""
    where = f"source {spec.name!r}"
    if not spec.images.is_dir():
        raise DataError(f"{where}: image folder {spec.images} does not exist or is not a folder; check `images` in the spec")
    columns, records = _records(spec.table, where)
    image_key = _column(spec.image_column, columns, "image", where, spec.table)
    score_key = _column(spec.score_column, columns, "score", where, spec.table)
    root_real = os.path.realpath(spec.images)
    rows: list[SourceRow] = []
    for number, record in records:
        at = f"{where}: {spec.table}:{number}"
        image = record.get(image_key)
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{at}: image path must be a non-empty string, got {image!r}")
        try:
            score = parse_number(record.get(score_key), "score")
        except ValueError as exc:
            raise DataError(f"{at}: {exc}") from None
        if spec.raw_range is not None and not (spec.raw_range[0] <= score <= spec.raw_range[1]):
            lo, hi = spec.raw_range
            raise DataError(f"{at}: score {score:g} is outside the declared range [{lo:g}, {hi:g}]; fix the row or the spec's `range`")
        candidate = Path(image.strip())
        if not candidate.is_absolute():
            candidate = spec.images / candidate
        if not is_within(os.path.realpath(candidate), root_real):
            raise DataError(f"{at}: image path {image.strip()!r} escapes the source's image folder {spec.images}")
        rel = Path(os.path.relpath(os.path.abspath(candidate), os.path.abspath(spec.images))).as_posix()
        if rel.startswith("../"):  # inside by realpath but outside by name (a symlinked root)
            rel = Path(os.path.relpath(os.path.realpath(candidate), root_real)).as_posix()
        rows.append(SourceRow(spec.name, number, rel, Path(os.path.abspath(candidate)), score))
    if not rows:
        raise DataError(f"{where}: table {spec.table} has no data rows")
    if spec.raw_range is not None:
        scale = spec.raw_range
    else:
        scores = sorted({r.raw_score for r in rows})
        if len(scores) < 2:
            raise DataError(
                f"{where}: every one of its {len(rows)} rows has the score {scores[0]:g}; min-max normalisation needs "
                "at least 2 distinct scores (declare the raw `range` instead)"
            )
        scale = (scores[0], scores[-1])
    return SourceTable(spec, tuple(rows), scale)
