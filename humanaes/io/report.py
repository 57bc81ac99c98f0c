"""A self-contained HTML report of scored images (`humanaes score --report out.html`).

One file with inline CSS, JS and SVG and base64 JPEG thumbnails, so it can be mailed or archived
and opened offline; a Content-Security-Policy forbids any network load. It shows a summary, a
histogram of the overall scores, and a table sortable by any column with a thumbnail, the
scores, the twelve dimensions with a radar chart per image (as in the HumanAesExpert paper's
figures) and the error of rows that failed. All text from the data (file names, annotations,
errors) is HTML-escaped.

The title and header name the model that produced the rows (their `model` column), what its
score means and whose licence its weights carry (humanaes.modelinfo), so a report of the bundled
proxy is never mistaken for HumanAesExpert's. Rows whose `person_found` is false are flagged:
their score says nothing about a person. Score columns that repeat `overall` for every row (the
regression score in fast mode, say) are not shown twice.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from humanaes.fsutil import atomic_write, open_regular
from humanaes.io import DIMENSION_COLUMNS, SCORE_COLUMNS
from humanaes.io.images import to_rgb
from humanaes.modelinfo import model_facts
from humanaes.schema import DIMENSIONS, LEVEL_CUT_POINTS, LEVELS, score_to_level

THUMBNAIL_SIZE = 160
# Diverging red -> green palette, one colour per level (bad ... excellent).
LEVEL_COLOURS: dict[str, str] = {
    "bad": "#d73027",
    "poor": "#fc8d59",
    "fair": "#e6c229",
    "good": "#7fbf4d",
    "excellent": "#1a9850",
}
# WCAG 2.x: normal-size text needs a contrast ratio of at least 4.5 (level AA).
WCAG_AA_TEXT = 4.5


def relative_luminance(colour: str) -> float:
    """WCAG relative luminance of a #rrggbb colour."""
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours (1 to 21)."""
    high, low = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def chip_text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background`."""
    return max(("#000000", "#ffffff"), key=lambda text: contrast_ratio(text, background))


def chip_style(level: str) -> str:
    background = LEVEL_COLOURS[level]
    return f"background:{background};color:{chip_text_colour(background)}"


# Short labels of the twelve dimensions for headers and radar axes (full names in tooltips).
DIMENSION_LABELS: tuple[str, ...] = (
    "Brightness",
    "Clarity",
    "Skin tone",
    "Structure",
    "Contour",
    "Facial",
    "Outfit",
    "Body shape",
    "Looks",
    "Environment",
    "Appearance",
    "Comprehensive",
)
SCORE_TITLES: dict[str, str] = {
    "overall": "overall",
    "lm_score": "LM head",
    "regression_score": "regression",
    "metavoter_score": "MetaVoter",
}

Row = Mapping[str, Any]


def esc(value: Any) -> str:
    """HTML-escape any value for text and attribute positions."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _level_of(value: float | None) -> str | None:
    return None if value is None else score_to_level(min(max(value, 0.0), 1.0))


# -- thumbnails ---------------------------------------------------------------------------------


def thumbnail_data_uri(path: str | os.PathLike[str], *, size: int = THUMBNAIL_SIZE, apply_exif: bool = True) -> str | None:
    """A `data:image/jpeg;base64,...` thumbnail fitting size x size, or None if unreadable.

    `path` may be an output row's `image` key (non-UTF-8 names are encoded there). The file is
    opened with `fsutil.open_regular`, so anything but a regular file (a FIFO, a device, a loop)
    gets no thumbnail and is never read: a FIFO would block the report for good.
    """
    from humanaes.io import key_to_path

    path = key_to_path(path) if isinstance(path, str) else os.fspath(path)
    try:
        with os.fdopen(open_regular(path), "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: a thumbnail of a big image is fine
            with Image.open(fh) as im:
                # draft() lets the JPEG decoder downscale while decoding: big photos stay cheap.
                im.draft("RGB", (size * 2, size * 2))
                im.load()
                if apply_exif:
                    im = ImageOps.exif_transpose(im)
                im = to_rgb(im)
                im.thumbnail((size, size), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=80, optimize=True)
    except Exception:  # noqa: BLE001 - any unreadable image just gets no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- SVG charts ---------------------------------------------------------------------------------


def _polygon(points: Iterable[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def radar_svg(values: Sequence[float | None], *, size: int = 260, labels: Sequence[str] = DIMENSION_LABELS) -> str:
    """A radar chart of the twelve dimension scores (inline SVG, axes in reference order).

    Rings at the level cut points 0.2 ... 1.0; the polygon takes the colour of the
    Comprehensive (overall) dimension's level. Hovering a vertex shows the full name and value.
    """
    n = len(values)
    height = int(size * 0.68)
    cx, cy = size / 2, height / 2
    # Horizontal room for the longest labels at 3 and 9 o'clock; vertical room for one line.
    radius = min(height / 2 - 16, size / 2 - 70)
    angles = [-math.pi / 2 + 2 * math.pi * i / n for i in range(n)]

    def at(r: float, a: float) -> tuple[float, float]:
        return cx + r * math.cos(a), cy + r * math.sin(a)

    vals = [min(max(v, 0.0), 1.0) if v is not None else 0.0 for v in (_num(v) for v in values)]
    colour = LEVEL_COLOURS.get(_level_of(_num(values[-1])) or "fair", "#888")
    parts = [
        f'<svg class="radar" width="{size}" height="{height}" viewBox="0 0 {size} {height}" role="img" '
        f'aria-label="radar chart of the twelve dimensions">'
    ]
    for ring in (*LEVEL_CUT_POINTS, 1.0):
        parts.append(f'<polygon class="ring" points="{_polygon(at(radius * ring, a) for a in angles)}"/>')
    for a in angles:
        x, y = at(radius, a)
        parts.append(f'<line class="axis" x1="{cx:.1f}" y1="{cy:.1f}" x2="{x:.1f}" y2="{y:.1f}"/>')
    parts.append(
        f'<polygon class="area" points="{_polygon(at(radius * v, a) for v, a in zip(vals, angles))}" '
        f'style="fill:{colour};stroke:{colour}"/>'
    )
    for v, raw, a, name in zip(vals, values, angles, DIMENSIONS):
        x, y = at(radius * v, a)
        shown = "n/a" if _num(raw) is None else f"{v:.3f}"
        parts.append(
            f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="2.2" style="fill:{colour}">'
            f"<title>{esc(name)}: {shown}</title></circle>"
        )
    for label, a in zip(labels, angles):
        x, y = at(radius + 9, a)
        cos = math.cos(a)
        anchor = "middle" if abs(cos) < 0.2 else ("start" if cos > 0 else "end")
        dy = 3 if abs(math.sin(a)) < 0.9 else (-1 if math.sin(a) < 0 else 7)
        parts.append(f'<text x="{x:.1f}" y="{y + dy:.1f}" text-anchor="{anchor}">{esc(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(values: Sequence[float], *, bins: int = 20, width: int = 620, height: int = 230) -> str:
    """A histogram of overall scores over [0, 1], bars coloured by level, with the mean marked."""
    left, right, top, bottom = 40, 12, 14, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    counts = [0] * bins
    for v in values:
        counts[min(int(min(max(v, 0.0), 1.0) * bins), bins - 1)] += 1
    peak = max(counts) if counts and max(counts) > 0 else 1

    def x_of(score: float) -> float:
        return left + score * plot_w

    def y_of(count: float) -> float:
        return top + plot_h - count / peak * plot_h

    parts = [
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram of overall scores">'
    ]
    for tick in sorted({0, peak // 2, peak}):
        y = y_of(tick)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for i, count in enumerate(counts):
        lo, hi = i / bins, (i + 1) / bins
        colour = LEVEL_COLOURS[score_to_level((lo + hi) / 2)]
        y = y_of(count)
        parts.append(
            f'<rect x="{x_of(lo) + 1:.1f}" y="{y:.1f}" width="{x_of(hi) - x_of(lo) - 2:.1f}" '
            f'height="{top + plot_h - y:.1f}" style="fill:{colour}"><title>{lo:.2f}-{hi:.2f}: {count}</title></rect>'
        )
    base = top + plot_h
    parts.append(f'<line class="axisline" x1="{left}" y1="{base}" x2="{width - right}" y2="{base}"/>')
    edges = (0.0, *LEVEL_CUT_POINTS, 1.0)
    for edge in edges:
        parts.append(f'<text x="{x_of(edge):.1f}" y="{base + 14}" text-anchor="middle">{edge:.1f}</text>')
    for level, lo, hi in zip(LEVELS, edges, edges[1:]):
        parts.append(
            f'<text class="lvl" x="{x_of((lo + hi) / 2):.1f}" y="{base + 30}" text-anchor="middle">{esc(level)}</text>'
        )
    if values:
        mean = statistics.fmean(values)
        x = x_of(min(max(mean, 0.0), 1.0))
        parts.append(f'<line class="mean" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{base}"/>')
        parts.append(f'<text class="meanlbl" x="{x + 4:.1f}" y="{top + 10}">mean {mean:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- the page -----------------------------------------------------------------------------------


def latest_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per image, the last one written winning (a resumed run may retry failures)."""
    by_image: dict[str, Row] = {}
    for row in rows:
        by_image.pop(str(row.get("image")), None)  # re-insert: keep the order of the last write
        by_image[str(row.get("image"))] = row
    return list(by_image.values())


def person_flag(row: Row) -> bool | None:
    """A row's `person_found` as True/False, or None when unknown (no detector, or a row
    written before the field existed). CSV and Parquet outputs carry it as text."""
    value = row.get("person_found")
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return None


def repeated_columns(rows: Sequence[Row], columns: Sequence[str]) -> list[str]:
    """The score columns equal to `overall` in every row that has either (e.g. the regression
    score in fast mode, the MetaVoter score in metavoter mode): showing them adds nothing."""
    repeated = []
    for column in columns:
        pairs = [(_num(r.get("overall")), _num(r.get(column))) for r in rows]
        pairs = [(a, b) for a, b in pairs if a is not None or b is not None]
        if pairs and all(a is not None and b is not None and abs(a - b) <= 1e-9 for a, b in pairs):
            repeated.append(column)
    return repeated


def wrap_points(name: str) -> str:
    """`name` escaped, with a line-break opportunity after each / _ - . so long file names wrap
    between their parts rather than mid-word."""
    pieces = re.split(r"(?<=[/_.\-])", name.replace(os.sep, "/"))
    return "<wbr>".join(esc(piece) for piece in pieces if piece)


def _display_names(images: Sequence[str]) -> list[str]:
    """Paths relative to the images' common folder: short, yet unique."""
    if not images:
        return []
    try:
        common = os.path.commonpath([os.path.dirname(i) for i in images])
    except ValueError:  # mixed absolute/relative or drives
        return list(images)
    return [os.path.relpath(i, common) if common else i for i in images]


def _score_cell(value: Any) -> str:
    number = _num(value)
    if number is None:
        return '<td class="num" data-v=""></td>'
    level = _level_of(number) or "fair"
    return (
        f'<td class="num" data-v="{number:.6f}"><span class="sc" style="border-color:{LEVEL_COLOURS[level]}">'
        f"{number:.3f}</span></td>"
    )


def _dim_cell(value: Any, name: str) -> str:
    number = _num(value)
    if number is None:
        return '<td class="num dim" data-v=""></td>'
    level = _level_of(number) or "fair"
    return (
        f'<td class="num dim" data-v="{number:.6f}" title="{esc(name)}: {number:.3f} ({level})" '
        f'style="background:{LEVEL_COLOURS[level]}33">{number:.2f}</td>'
    )


def default_title(models: Sequence[str]) -> str:
    """"Scores by <model>": the report never claims a model that did not produce its rows."""
    if not models:
        return "humanaes scores"
    if len(models) == 1:
        return f"Scores by {model_facts(models[0]).title}"
    return f"Scores by {len(models)} models: {', '.join(models)}"


def build_report(
    rows: Sequence[Row],
    *,
    thumbnails: Mapping[str, str | None] | None = None,
    title: str | None = None,
    generated: datetime | None = None,
) -> str:
    """The report page for flat result rows (humanaes.io.COLUMNS) as one HTML string. The title
    defaults to the model(s) named by the rows."""
    from humanaes import __version__

    rows = latest_rows(rows)
    thumbnails = thumbnails or {}
    generated = generated or datetime.now(timezone.utc)
    images = [str(r.get("image")) for r in rows]
    names = _display_names(images)
    overall = [v for v in (_num(r.get("overall")) for r in rows) if v is not None]
    failed = sum(1 for r in rows if r.get("error"))
    present = [c for c in SCORE_COLUMNS[1:] if any(_num(r.get(c)) is not None for r in rows)]
    repeated = repeated_columns(rows, present)
    extra_scores = [c for c in present if c not in repeated]
    has_dims = any(any(_num(r.get(c)) is not None for c in DIMENSION_COLUMNS) for r in rows)
    models = sorted({str(r["model"]) for r in rows if r.get("model")})
    modes = sorted({str(r["mode"]) for r in rows if r.get("mode")})
    no_person = [name for r, name in zip(rows, names) if person_flag(r) is False and not r.get("error")]
    title = title if title is not None else default_title(models)
    level_counts = {lv: 0 for lv in LEVELS}
    for v in overall:
        level_counts[score_to_level(min(max(v, 0.0), 1.0))] += 1

    out: list[str] = []
    w = out.append
    w("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
    # No network at all: the report must render offline and must not leak anything when opened.
    w(
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
    )
    w('<meta name="viewport" content="width=device-width, initial-scale=1">\n')
    w(f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n")
    w(f"<header><h1>{esc(title)}</h1>\n<p class=\"meta\">")
    w(f"{len(rows)} image{'s' if len(rows) != 1 else ''}, {len(rows) - failed} scored, {failed} failed")
    if models:
        w(f" &middot; model {esc(', '.join(models))}")
    if modes:
        w(f" &middot; mode {esc(', '.join(modes))}")
    w(f" &middot; humanaes {esc(__version__)} &middot; {esc(generated.strftime('%Y-%m-%d %H:%M UTC'))}</p>\n")
    for model in models:
        facts = model_facts(model)
        w(f'<div class="model{" proxy" if facts.not_humanaesexpert else ""}"><b>{esc(facts.title)}</b><br>')
        w(f"What the score means: {esc(facts.score_meaning)}.<br>Weights' licence: {esc(facts.licence)}.</div>\n")
    if no_person:
        shown = ", ".join(no_person[:5]) + (f" and {len(no_person) - 5} more" if len(no_person) > 5 else "")
        count = len(no_person)
        w(f'<p class="noperson-note">{count} image{"s" if count != 1 else ""} had no detectable person: '
          f"{'their scores are' if count != 1 else 'its score is'} not meaningful ({esc(shown)}). "
          f"{'They are' if count != 1 else 'It is'} marked <span class=\"flag\">no person found</span> below.</p>\n")
    for column in repeated:
        w(f'<p class="meta">{esc(SCORE_TITLES[column])} equals overall for every image: its column is not repeated.</p>\n')
    if overall:
        w('<p class="stats">')
        w(
            f"overall: mean <b>{statistics.fmean(overall):.3f}</b>, median <b>{statistics.median(overall):.3f}</b>, "
            f"min {min(overall):.3f}, max {max(overall):.3f}"
        )
        w("</p>\n<p class=\"levels\">")
        for level in LEVELS:
            w(f'<span class="chip" style="{chip_style(level)}">{esc(level)} {level_counts[level]}</span>')
        w("</p>\n")
    w("</header>\n")

    if overall:
        w('<section><h2>Overall scores</h2>\n')
        w(histogram_svg(overall))
        w("\n</section>\n")

    w('<section><h2>Images</h2>\n<p class="hint">Click a column header to sort; click again to reverse.</p>\n')
    w('<div class="wrap"><table id="results" class="sortable">\n<thead><tr>')
    w('<th data-type="num" aria-sort="ascending" class="sorted-asc">#</th><th class="nosort">preview</th>')
    w('<th data-type="text">image</th><th data-type="num">overall</th><th data-type="num">level</th>')
    for column in extra_scores:
        if has_dims:  # vertical headers keep the wide dimension table within a laptop screen
            w(f'<th data-type="num" class="vert"><span>{esc(SCORE_TITLES[column])}</span></th>')
        else:
            w(f'<th data-type="num">{esc(SCORE_TITLES[column])}</th>')
    if has_dims:
        for label, name in zip(DIMENSION_LABELS, DIMENSIONS):
            w(f'<th data-type="num" class="vert" title="{esc(name)}"><span>{esc(label)}</span></th>')
        w('<th class="nosort">dimensions</th>')
    w("</tr></thead>\n<tbody>\n")
    for index, (row, image, name) in enumerate(zip(rows, images, names), start=1):
        error = row.get("error")
        flagged = person_flag(row) is False and not error
        w(f'<tr class="{"err" if error else "ok"}{" noperson" if flagged else ""}">')
        w(f'<td class="num" data-v="{index}">{index}</td>')
        thumb = thumbnails.get(image)
        if thumb and thumb.startswith("data:image/"):
            w(f'<td class="thumb"><img src="{esc(thumb)}" alt="{esc(name)}"></td>')
        else:
            w('<td class="thumb"><div class="nothumb">no preview</div></td>')
        w(f'<td class="name" data-v="{esc(name)}"><span title="{esc(image)}">{wrap_points(name)}</span>')
        if flagged:
            w('<div class="flag" title="the model found no person: this score is not meaningful">no person found</div>')
        if error:
            w(f'<div class="errmsg">error: {esc(error)}</div>')
        if row.get("annotation"):
            w(f'<details><summary>annotation</summary><pre>{esc(row["annotation"])}</pre></details>')
        w("</td>")
        w(_score_cell(row.get("overall")))
        level = row.get("level") or _level_of(_num(row.get("overall")))
        if level in LEVEL_COLOURS:
            w(
                f'<td data-v="{LEVELS.index(level)}"><span class="chip" '
                f'style="{chip_style(level)}">{esc(level)}</span></td>'
            )
        else:
            w(f'<td data-v="">{esc(level or "")}</td>')
        for column in extra_scores:
            w(_score_cell(row.get(column)))
        if has_dims:
            dims = [row.get(c) for c in DIMENSION_COLUMNS]
            for value, dim in zip(dims, DIMENSIONS):
                w(_dim_cell(value, dim))
            if any(_num(v) is not None for v in dims):
                w(f'<td class="radarcell">{radar_svg(dims)}</td>')
            else:
                w("<td></td>")
        w("</tr>\n")
    w("</tbody></table></div>\n</section>\n")
    w(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(out)


def write_report(
    rows: Sequence[Row],
    path: str | os.PathLike[str],
    *,
    apply_exif: bool = True,
    title: str | None = None,
    on_thumbnail: Callable[[], None] | None = None,
) -> Path:
    """Make thumbnails for `rows` and write the report atomically to `path`."""
    path = Path(path)
    rows = latest_rows(rows)
    thumbnails: dict[str, str | None] = {}
    for row in rows:
        image = str(row.get("image"))
        thumbnails[image] = thumbnail_data_uri(image, apply_exif=apply_exif)
        if on_thumbnail is not None:
            on_thumbnail()
    text = build_report(rows, thumbnails=thumbnails, title=title)
    return atomic_write(path, text)


_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde1e8;--bg:#f6f7f9}
*{box-sizing:border-box}
body{margin:0;padding:14px 16px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
.meta,.hint{color:var(--muted);margin:2px 0}.stats{margin:6px 0}
.chip{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;margin-right:4px}
.model{margin:6px 0;padding:6px 10px;border-left:4px solid #5b6475;background:#fff;max-width:70em}
.model.proxy{border-left-color:#b35900;background:#fff7ec}
.noperson-note{margin:6px 0;padding:6px 10px;border-left:4px solid #a61b1b;background:#fdecea;max-width:70em}
.flag{display:inline-block;margin:3px 0 0 6px;padding:0 6px;border-radius:4px;background:#5b6475;color:#fff;font-size:12px}
tr.noperson td{background:#f1f2f5}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:8px 10px;margin-top:12px}
.wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 5px;vertical-align:middle;text-align:left}
thead th{position:sticky;top:0;background:#eef1f5;cursor:pointer;user-select:none;white-space:nowrap;font-weight:600}
thead th.nosort{cursor:default}
thead th.vert{vertical-align:bottom;padding:4px 2px}
thead th.vert span{writing-mode:vertical-rl;transform:rotate(180deg);display:inline-block}
thead th.sorted-asc::after{content:" \\25B2";font-size:10px}
thead th.sorted-desc::after{content:" \\25BC";font-size:10px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.dim{font-size:11.5px;padding:4px 2px}
td.thumb img{display:block;max-width:160px;max-height:160px;border-radius:4px}
.nothumb{width:110px;height:80px;display:flex;align-items:center;justify-content:center;color:var(--muted);background:#eceef2;border-radius:4px;font-size:12px}
td.name{min-width:10em;overflow-wrap:break-word;word-break:normal}
td.name pre{white-space:pre-wrap;font-size:12px;margin:4px 0;word-break:normal}
.sc{border-left:4px solid;padding-left:5px}
tr.err{background:#fdecea}
.errmsg{color:#a61b1b;font-size:12px;margin-top:3px}
svg text{font-size:8.5px;fill:#3a4150}
svg.hist text{font-size:11px}svg.hist text.lvl{fill:#5b6475;font-style:italic}
.ring{fill:none;stroke:#d3d8e0;stroke-width:.7}.axis{stroke:#e1e5eb;stroke-width:.7}
.area{fill-opacity:.35;stroke-width:1.4}
.grid{stroke:#eceef2}.axisline{stroke:#8a93a3}
.mean{stroke:#1d2330;stroke-dasharray:4 3;stroke-width:1.2}.meanlbl{font-size:11px}
"""

# Sorts the table by a clicked header; numbers compare numerically; empty cells stay last.
_JS = """
(function(){
  var table=document.getElementById('results');
  if(!table){return;}
  var heads=table.tHead.rows[0].cells;
  function key(row,i){var c=row.cells[i];if(!c){return '';}var v=c.getAttribute('data-v');return v===null?c.textContent.trim():v;}
  function sortBy(i){
    var th=heads[i];
    if(th.classList.contains('nosort')){return;}
    var asc=!th.classList.contains('sorted-asc');
    var num=th.getAttribute('data-type')==='num';
    var body=table.tBodies[0];
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=key(a,i),y=key(b,i);
      if(x===''&&y===''){return 0;} if(x===''){return 1;} if(y===''){return -1;}
      var r=num?(parseFloat(x)-parseFloat(y)):x.localeCompare(y,undefined,{numeric:true});
      return asc?r:-r;
    });
    rows.forEach(function(r){body.appendChild(r);});
    for(var j=0;j<heads.length;j++){heads[j].classList.remove('sorted-asc','sorted-desc');heads[j].removeAttribute('aria-sort');}
    th.classList.add(asc?'sorted-asc':'sorted-desc');
    th.setAttribute('aria-sort',asc?'ascending':'descending');
  }
  for(var i=0;i<heads.length;i++){(function(i){heads[i].addEventListener('click',function(){sortBy(i);});})(i);}
})();
"""
