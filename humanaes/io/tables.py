"""Plain-text tables for the terminal: `humanaes score`'s result table and a generic aligner."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from humanaes.io.rows import DIMENSION_COLUMNS, SCORE_COLUMNS

# Short headers so that all twelve dimensions fit a wide terminal.
DIMENSION_SHORT: tuple[str, ...] = (
    "f_bright",
    "f_clarity",
    "f_skin",
    "f_struct",
    "f_contour",
    "facial",
    "outfit",
    "body",
    "looks",
    "environ",
    "appear",
    "compreh",
)


def format_text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """An aligned plain-text table; columns in `right` are right-aligned (numbers)."""
    right = set(right)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out) + "\n"


def display_path(image: str) -> str:
    """Path relative to the working directory when it is below it (shorter tables)."""
    try:
        rel = os.path.relpath(image)
    except ValueError:  # another drive on Windows
        return image
    return image if rel.startswith("..") else rel


def row_display(row: Mapping[str, Any]) -> str:
    """The name a row is shown by: its `display` (the path as given), else its key."""
    return str(row.get("display") or row.get("image"))


def _one_line(text: str) -> str:
    # control characters (a newline in a file name) would break the table's alignment
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _fmt_score(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):.3f}"


def render_results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The terminal table of `humanaes score`: columns that have values, then annotations.

    Images are shown by the path as the user gave it. A `person` column appears when some image
    had no detectable person ("NO": its scores are not meaningful).
    """
    score_cols = [c for c in SCORE_COLUMNS[1:] if any(r.get(c) is not None for r in rows)]
    dim_cols = list(DIMENSION_COLUMNS) if any(r.get(DIMENSION_COLUMNS[0]) is not None for r in rows) else []
    has_error = any(r.get("error") for r in rows)
    flag_person = any(r.get("person_found") is False for r in rows)
    headers = ["image", "overall", "level"]
    if flag_person:
        headers.append("person")
    first_score = len(headers)
    headers += [*score_cols, *(DIMENSION_SHORT[DIMENSION_COLUMNS.index(c)] for c in dim_cols)]
    numeric = {1} | set(range(first_score, len(headers)))
    if has_error:
        headers.append("error")
    table_rows = []
    for r in rows:
        cells = [_one_line(row_display(r)), _fmt_score(r.get("overall")), r.get("level") or ""]
        if flag_person:
            cells.append({True: "yes", False: "NO"}.get(r.get("person_found"), ""))  # type: ignore[arg-type]
        cells += [_fmt_score(r.get(c)) for c in score_cols + dim_cols]
        if has_error:
            cells.append(_one_line(str(r.get("error") or "")))
        table_rows.append(cells)
    text = format_text_table(headers, table_rows, right=numeric)
    for r in rows:
        if r.get("annotation"):
            text += f"\n{_one_line(row_display(r))}:\n{r['annotation'].rstrip()}\n"
    return text

