"""`humanaes data import`: a plain CSV/TSV/JSONL of image scores into the HumanBeauty layout."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from humanaes.data.labels import (
    EXPERT_SUBSET,
    OVERALL_SUBSET,
    SUBSET_LABEL,
    _iter_json_lines,
    _read_subset_rows,
    _write_jsonl,
    subset_label_files,
)
from humanaes.errors import DataError
from humanaes.schema import DIMENSIONS, NUM_DIMENSIONS, OVERALL, score_to_level

_IMAGE_COLUMNS = ("image", "image_name", "image_path", "file", "filename", "path")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "x"


def _norm_header(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _read_table(path: Path) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """Yield (line, row dict, error) from a CSV (header required) or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for number, obj, err in _iter_json_lines(path):
            if err:
                yield number, {}, err
            elif not isinstance(obj, dict):
                yield number, {}, f"row must be a JSON object, got {type(obj).__name__}"
            else:
                yield number, obj, None
        return
    if suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: unsupported table format {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(f"input file {path} does not exist; check the path") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ",")
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file; expected a header row like `image,score`")
            keys = [_norm_header(h) for h in header]
            for cells in reader:
                number = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(keys):
                    yield number, {}, f"{len(cells)} columns, header has {len(keys)}"
                    continue
                yield number, dict(zip(keys, cells)), None
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return out


def _parse_import_row(row: dict[str, Any]) -> tuple[str, float | None, list[float] | None]:
    """(image, raw overall or None, raw 12 scores or None) of one input row; ValueError if bad."""
    lowered = {_norm_header(str(k)): v for k, v in row.items()}
    image = next((lowered[c] for c in _IMAGE_COLUMNS if c in lowered), None)
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"no image name (column/key one of: {', '.join(_IMAGE_COLUMNS)})")

    score = lowered.get("score")
    dims: list[Any] | None = None
    if isinstance(score, list):  # JSONL: "score": [12 numbers], as in HumanBeauty
        dims, score = score, None
    if "scores" in lowered and lowered["scores"] not in (None, ""):
        dims = lowered["scores"]
    named = [_norm_header(d) for d in DIMENSIONS]
    present = [n for n in named if n in lowered and str(lowered[n]).strip() not in ("", "None")]
    if present:
        if len(present) != NUM_DIMENSIONS:
            missing = [DIMENSIONS[i] for i, n in enumerate(named) if n not in present]
            raise ValueError(f"has {len(present)} of the 12 dimension scores; missing: {', '.join(missing)}")
        dims = [lowered[n] for n in named]
    if dims is not None:
        if not isinstance(dims, list) or len(dims) != NUM_DIMENSIONS:
            raise ValueError(f"dimension scores must be {NUM_DIMENSIONS} numbers in the reference order")
        values = [_number(v, DIMENSIONS[i]) for i, v in enumerate(dims)]
        if score not in (None, ""):
            overall = _number(score, "score")
            if abs(overall - values[OVERALL]) > 1e-6 * max(1.0, abs(overall)):
                raise ValueError(
                    f"score {overall} disagrees with the Comprehensive Aesthetic Score {values[OVERALL]}; "
                    "give one or make them equal"
                )
        return image.strip(), values[OVERALL], values
    if score in (None, ""):
        raise ValueError("no score")
    return image.strip(), _number(score, "score"), None


def import_table(
    table: str | os.PathLike,
    *,
    images: str | os.PathLike,
    out: str | os.PathLike,
    scale: tuple[float, float],
    source: str | None = None,
    copy: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Import a plain CSV/TSV/JSONL of (image, score[, 12 dimension scores]) into the HumanBeauty layout.

    Scores on the declared raw scale [MIN, MAX] are min-max normalised to [0, 1] (6 decimals);
    values outside the scale are errors. Rows with 12 scores go to `HumanBeauty-50K` (expert),
    the others to `HumanBeauty-58K`. Images are named `<source>_<relative path>` with unsafe
    characters replaced by `_`, and are **relative symlinks** to the originals by default (no
    copy of large data; the output stays valid if both folders move together); `copy=True`
    copies them instead. Rows of other sources already in OUT are kept; re-importing a source
    needs `force`, which replaces that source's rows. Nothing is written unless every row is valid.
    """
    table, images, out = Path(table), Path(images), Path(out)
    lo, hi = (float(scale[0]), float(scale[1]))
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise DataError(f"bad --scale {scale[0]} {scale[1]}: MIN must be a number below MAX (e.g. --scale 1 10)")
    if not table.is_file():
        raise DataError(f"input file {table} does not exist; check the path")
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder; pass the folder the image names are relative to")
    source = source or table.stem
    if not source.strip():
        raise DataError("--source must not be empty")

    def norm(v: float) -> float:
        return round((v - lo) / (hi - lo), 6)

    problems: list[str] = []
    planned: list[tuple[str, dict[str, Any], Path]] = []  # (subset, row, original image)
    taken: dict[str, int] = {}
    for number, raw, err in _read_table(table):
        where = f"{table}:{number}"
        if err:
            problems.append(f"{where}: {err}")
            continue
        try:
            image, overall, dims = _parse_import_row(raw)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        values = dims if dims is not None else [overall]
        outside = [v for v in values if not (lo - 1e-9 <= v <= hi + 1e-9)]  # type: ignore[operator]
        if outside:
            problems.append(f"{where}: score {outside[0]} is outside the declared scale [{lo:g}, {hi:g}]")
            continue
        original = images / image
        if not original.is_file():
            problems.append(f"{where}: image {image} not found under {images}")
            continue
        name = _slug(source.lower()) + "_" + _slug(image.replace("\\", "/").replace("/", "_"))
        if name in taken:
            problems.append(f"{where}: image {image} gives the same file name as line {taken[name]} ({name})")
            continue
        taken[name] = number
        subset = EXPERT_SUBSET if dims is not None else OVERALL_SUBSET
        score_out: float | list[float] = [norm(v) for v in dims] if dims is not None else norm(overall)  # type: ignore[arg-type]
        planned.append(
            (
                subset,
                {
                    "image_name": name,
                    "source": source,
                    "score": score_out,
                    "text_level": score_to_level(norm(overall)),  # type: ignore[arg-type]
                    "raw_score": dims if dims is not None else overall,
                    "raw_scale": [lo, hi],
                },
                original,
            )
        )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} problem(s) in {table}, nothing imported:\n  {shown}{more}")
    if not planned:
        raise DataError(f"{table} has no data rows; nothing imported")

    # Keep other sources' rows; refuse to mix in a second import of the same source.
    kept: dict[str, list[dict[str, Any]]] = {}
    for subset in {s for s, _, _ in planned} | set(subset_label_files(out) if out.is_dir() else {}):
        label_file = out / subset / SUBSET_LABEL
        old = [obj for obj, _ in _read_subset_rows(label_file)] if label_file.is_file() else []
        if any(r.get("source") == source for r in old) and not force:
            raise DataError(
                f"{label_file} already has rows of source {source!r}; pass --force to replace them "
                "or choose another --source"
            )
        kept[subset] = [r for r in old if r.get("source") != source]
        for r in old:  # --force: drop the replaced rows' image links/copies too
            stale = out / subset / "images" / str(r.get("image_name", ""))
            if r.get("source") == source and r.get("image_name") and (stale.is_symlink() or stale.is_file()):
                stale.unlink()

    for subset, row, original in planned:
        folder = out / subset / "images"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / row["image_name"]
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            if copy:
                shutil.copy2(original, target)
            else:
                target.symlink_to(os.path.relpath(original.resolve(), folder.resolve()))
        except OSError as exc:
            hint = "" if copy else "; pass --copy to copy the images instead"
            raise DataError(f"cannot create {target} ({exc.strerror or exc}){hint}") from None
    written: dict[str, int] = {}
    for subset, old_rows in kept.items():
        new_rows = [row for s, row, _ in planned if s == subset]
        if new_rows or old_rows:
            (out / subset).mkdir(parents=True, exist_ok=True)
            _write_jsonl(out / subset / SUBSET_LABEL, old_rows + new_rows)
            written[subset] = len(new_rows)
    return {
        "out": str(out),
        "source": source,
        "rows": len(planned),
        "per_subset": written,
        "images": "copied" if copy else "symlinked",
        "scale": [lo, hi],
    }
