"""The build report: `build_report.json` (the figures), `build_report.md` (the same, to read) and a
contact sheet PNG per drop reason (a seeded random sample of the dropped images, captioned), so a
person can check at a glance that each filter drops what it should.

Nothing in the report depends on the clock or the machine: the same spec and inputs give the same
report files.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from humanaes.schema import LEVELS

HISTOGRAM_BINS = 10
SHEET_SAMPLE = 24  # dropped images shown per reason
TILE = 160  # thumbnail box, pixels
CAPTION = 30  # caption strip under each thumbnail, pixels
SHEET_COLUMNS = 6


def histogram(values: Sequence[float], lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    counts = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(lo, hi))[0] if len(values) else np.zeros(bins)
    edges = np.linspace(lo, hi, bins + 1)
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def level_counts(levels: Sequence[str]) -> dict[str, int]:
    return {level: sum(1 for v in levels if v == level) for level in LEVELS}


def reason_slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")


def contact_sheet(
    reason: str, drops: Sequence[dict[str, Any]], target: Path, *, seed: int, title_total: int
) -> int:
    """Write one PNG of up to SHEET_SAMPLE dropped images (seeded sample); returns how many are shown.

    Each tile is the picture's thumbnail (or a grey tile saying why it cannot be shown) with its
    source, file name and the drop detail under it; a duplicate is shown on the left half and the
    copy kept instead on the right half, so the pair can be compared.
    """
    from humanaes.errors import ImageLoadError
    from humanaes.io.drawing import draw_text as _text
    from humanaes.io.drawing import load_font as _font
    from humanaes.io.images import load_image

    chosen = sorted(random.Random(f"{seed}:{reason}").sample(range(len(drops)), min(SHEET_SAMPLE, len(drops))))
    shown = [drops[i] for i in chosen]
    rows = max(1, -(-len(shown) // SHEET_COLUMNS))
    header = 34
    sheet = Image.new("RGB", (SHEET_COLUMNS * TILE, header + rows * (TILE + CAPTION)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    big, small = _font(16), _font(10)
    _text(draw, (8, header / 2), f"dropped: {reason} ({len(shown)} of {title_total} shown)", big, anchor="lm")
    for k, drop in enumerate(shown):
        x, y = (k % SHEET_COLUMNS) * TILE, header + (k // SHEET_COLUMNS) * (TILE + CAPTION)
        halves = [drop["path"], drop["kept_path"]] if drop.get("kept_path") else [drop["path"]]
        width = TILE // len(halves)
        for h, path in enumerate(halves):
            left = x + h * width
            try:
                picture = load_image(path, draft=(TILE, TILE))
                picture.thumbnail((width - 4, TILE - 4))
                sheet.paste(picture, (left + (width - picture.width) // 2, y + (TILE - picture.height) // 2))
            except ImageLoadError:
                draw.rectangle((left + 2, y + 2, left + width - 3, y + TILE - 3), fill=(215, 215, 215))
                _text(draw, (left + width / 2, y + TILE / 2), "cannot be shown", small)
        if len(halves) == 2:
            _text(draw, (x + 3, y + 3), "dropped", small, fill=(200, 0, 0), anchor="lt")
            _text(draw, (x + width + 3, y + 3), "kept", small, fill=(0, 130, 0), anchor="lt")
        name = f"{drop['source']}/{drop['image']}"
        _text(draw, (x + 3, y + TILE + 2), name if len(name) <= 30 else "..." + name[-27:], small, anchor="lt")
        detail = str(drop.get("detail") or "")
        _text(draw, (x + 3, y + TILE + 15), detail if len(detail) <= 30 else detail[:27] + "...", small, fill=(110, 110, 110), anchor="lt")
    sheet.save(target, format="PNG", optimize=False)
    return len(shown)


def _hist_line(h: dict[str, Any]) -> str:
    edges, counts = h["edges"], h["counts"]
    return " ".join(f"[{edges[i]:g},{edges[i + 1]:g}{']' if i == len(counts) - 1 else ')'}:{c}" for i, c in enumerate(counts))


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown (tables per source, histograms as bin:count lists)."""
    t = report["totals"]
    lines = [
        "# Build report",
        "",
        f"Spec `{report['spec']}`, fingerprint `{report['fingerprint'][:16]}`, seed {report['seed']}, "
        f"test ratio {report['test_ratio']}, images {report['images']}.",
        "",
        f"**{t['rows_in']} rows in, {t['kept']} kept** ({t['train']} train, {t['test']} test), {t['dropped']} dropped.",
        "",
        "## Per source",
        "",
        "| source | rows in | kept | train | test | dropped | raw scale | licence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["sources"].items():
        scale = f"[{s['scale'][0]:g}, {s['scale'][1]:g}] ({s['scale_from']})"
        lines.append(
            f"| {name} | {s['rows_in']} | {s['kept']} | {s['train']} | {s['test']} | {sum(s['dropped'].values())} | {scale} | {s['licence'] or '-'} |"
        )
    reasons = report["drop_reasons"]
    lines += ["", "## Drops by reason", "", "| source | " + " | ".join(reasons) + " |", "|---" * (len(reasons) + 1) + "|"]
    for name, s in report["sources"].items():
        lines.append(f"| {name} | " + " | ".join(str(s["dropped"].get(r, 0)) for r in reasons) + " |")
    lines += ["", "## Level balance of the kept images", "", "| source | " + " | ".join(LEVELS) + " |", "|---" * (len(LEVELS) + 1) + "|"]
    for name, s in report["sources"].items():
        total = max(s["kept"], 1)
        lines.append(f"| {name} | " + " | ".join(f"{s['levels'][lv]} ({100 * s['levels'][lv] / total:.1f}%)" for lv in LEVELS) + " |")
    lines += ["", "## Score histograms (bin: count)", ""]
    for name, s in report["sources"].items():
        lines += [
            f"### {name}",
            "",
            f"- raw, rows in: {_hist_line(s['histograms']['raw_in'])}",
            f"- raw, kept: {_hist_line(s['histograms']['raw_kept'])}",
            f"- normalised, kept: {_hist_line(s['histograms']['normalised_kept'])}",
            "",
        ]
    lines += ["## Filters", "", "```json", json.dumps(report["filters"], indent=2), "```", ""]
    if report["contact_sheets"]:
        lines += ["## Contact sheets of dropped images", ""]
        for reason, sheet in report["contact_sheets"].items():
            lines.append(f"- {reason}: [{sheet['file']}]({sheet['file']}) ({sheet['shown']} of {sheet['dropped']})")
        lines.append("")
    lines.append("Every dropped image with its reason is listed in `dropped.jsonl`.")
    return "\n".join(lines) + "\n"
