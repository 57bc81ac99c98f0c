"""Result rows: the flat layout (CSV, Parquet, the terminal table) and the nested one (JSONL)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from humanaes.io.keys import clean_text, row_key
from humanaes.schema import DIMENSIONS, LEVELS, ScoreResult


def dimension_column(name: str) -> str:
    """Column name of a dimension: "Facial Skin Tone" -> "facial_skin_tone"."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


DIMENSION_COLUMNS: tuple[str, ...] = tuple(dimension_column(d) for d in DIMENSIONS)
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{level}" for level in LEVELS)
SCORE_COLUMNS: tuple[str, ...] = ("overall", "lm_score", "regression_score", "metavoter_score")
FLOAT_COLUMNS: frozenset[str] = frozenset(SCORE_COLUMNS + PROB_COLUMNS + DIMENSION_COLUMNS)
BOOL_COLUMNS: frozenset[str] = frozenset({"person_found"})
COLUMNS: tuple[str, ...] = (
    "image",  # the stable key (humanaes.io.keys): absolute, not symlink-resolved; what resume matches
    "overall",
    "level",
    "lm_score",
    "regression_score",
    "metavoter_score",
    *PROB_COLUMNS,
    *DIMENSION_COLUMNS,
    "annotation",
    "error",
    "model",
    "mode",
    "extra",  # model-specific facts as JSON text, e.g. the bundled model's {"face_found": true, ...}
    "person_found",  # true/false from the model's person (face) detector; empty when it has none
    "display",  # the path as the user gave it (relative stays relative), for people
)
#: The columns of files written before `extra` existed.
LEGACY_COLUMNS: tuple[str, ...] = COLUMNS[:-3]
#: Layouts of older outputs, still resumed: the file is rewritten in COLUMNS when a run opens it.
OLDER_LAYOUTS: tuple[tuple[str, ...], ...] = (COLUMNS[:-2], LEGACY_COLUMNS)
KNOWN_LAYOUTS: tuple[tuple[str, ...], ...] = (COLUMNS, *OLDER_LAYOUTS)

#: The keys of every JSONL row, error rows included, in this order.
JSONL_KEYS: tuple[str, ...] = (
    "image",
    "display",
    "overall",
    "level",
    "lm_score",
    "level_probs",
    "regression_score",
    "expert",
    "expert_levels",
    "metavoter_score",
    "annotation",
    "error",
    "person_found",
    "extra",
    "model",
    "mode",
)

Row = dict[str, Any]


def _text(value: str | None) -> str | None:
    return None if value is None else clean_text(value)


def flat_row(result: ScoreResult, *, model: str | None, mode: str | None, display: str | None = None) -> Row:
    """One result as a flat row with exactly COLUMNS (missing values are None).

    `display` defaults to the result's image (its key) when the caller has no user-given name.
    """
    image = row_key(result.image)
    row: Row = dict.fromkeys(COLUMNS)
    row.update(
        image=image,
        overall=result.overall,
        level=result.level,
        lm_score=result.lm_score,
        regression_score=result.regression_score,
        metavoter_score=result.metavoter_score,
        annotation=_text(result.annotation),
        error=_text(result.error),
        model=model,
        mode=mode,
        extra=json.dumps(result.extra, sort_keys=True, separators=(",", ":")) if result.extra else None,
        person_found=result.person_found,
        display=_text(display) if display is not None else image,
    )
    if result.level_probs:
        for level, column in zip(LEVELS, PROB_COLUMNS):
            row[column] = result.level_probs.get(level)
    if result.expert:
        for name, column in zip(DIMENSIONS, DIMENSION_COLUMNS):
            row[column] = result.expert.get(name)
    return row


def nested_row(result: ScoreResult, *, model: str | None, mode: str | None, display: str | None = None) -> Row:
    """One result as a JSONL row: exactly JSONL_KEYS, nested dicts kept (`extra` is {} when empty)."""
    data = result.to_dict()
    image = row_key(result.image)
    data.update(
        image=image,
        display=_text(display) if display is not None else image,
        annotation=_text(result.annotation),
        error=_text(result.error),
        extra=dict(result.extra or {}),
        model=model,
        mode=mode,
    )
    return {k: data.get(k) for k in JSONL_KEYS}


def normalize_nested(row: Mapping[str, Any]) -> Row:
    """A JSONL row of any humanaes version with exactly JSONL_KEYS (older rows lack some)."""
    out = {k: row.get(k) for k in JSONL_KEYS}
    if not isinstance(out["extra"], dict):
        out["extra"] = {}
    if out["display"] is None:
        out["display"] = out["image"]
    return out


def flat_from_nested(row: Mapping[str, Any]) -> Row:
    """A JSONL row (nested) back to a flat row."""
    result = ScoreResult.from_dict({k: v for k, v in row.items() if k not in ("extra",)})
    result.extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
    return flat_row(result, model=row.get("model"), mode=row.get("mode"), display=row.get("display"))


def flat_row_checked(row: Mapping[str, Any]) -> Row:
    """A flat row (journal, or a file from an older layout) with exactly COLUMNS; missing ones are
    None, except `display`, which defaults to the key."""
    out = {c: row.get(c) for c in COLUMNS}
    if out["display"] is None:
        out["display"] = out["image"]
    return out


def latest_by_key(rows: Iterable[Row], key: str = "image") -> list[Row]:
    """One row per key: the last one written wins, at the place of the first (resume order)."""
    by_key: dict[str, Row] = {}
    for row in rows:
        by_key[row[key]] = row  # re-assigning keeps the first insertion's position
    return list(by_key.values())
