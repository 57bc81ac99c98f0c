"""Evaluation plots as PNG, drawn with Pillow only (no matplotlib dependency).

- `scatter_plot`: predicted vs true score on [0, 1] x [0, 1], the level cut points as grid lines,
  the cells where predicted and true level agree shaded, and the y = x diagonal.
- `confusion_plot`: the 5x5 level confusion matrix, rows = true, columns = predicted, each cell
  coloured by its share of the row and labelled with count and row percentage.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from humanaes.fsutil import atomic_write
from humanaes.io.drawing import draw_text, load_font
from humanaes.schema import LEVEL_CUT_POINTS, LEVELS

_WHITE = (255, 255, 255)
_BLACK = (20, 20, 20)
_GRID = (200, 200, 200)
_AGREE = (226, 240, 226)
_POINT = (31, 92, 168)
_BLUE = (33, 82, 150)


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _centered(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill=_BLACK) -> None:
    draw_text(draw, xy, text, font, fill, "mm")


def _vertical_label(canvas: Image.Image, text: str, font, center: tuple[int, int]) -> None:
    """Paste `text` rotated 90 degrees counter-clockwise, centred at `center`."""
    probe = ImageDraw.Draw(canvas)
    w, h = _text_size(probe, text, font)
    tile = Image.new("RGBA", (w + 8, h + 8), (255, 255, 255, 0))
    draw_text(ImageDraw.Draw(tile), (4, 4), text, font, _BLACK + (255,), "lt")
    tile = tile.rotate(90, expand=True)
    canvas.paste(tile, (center[0] - tile.width // 2, center[1] - tile.height // 2), tile)


def _finish(img: Image.Image, draw: ImageDraw.ImageDraw, path: str | os.PathLike, title: str, title_font,
            subtitle: str, subtitle_font, *, subtitle_y: int) -> Path:
    """Title (and subtitle, when given) centred at the top, then the PNG written atomically."""
    _centered(draw, (img.width / 2, 18), title, title_font)
    if subtitle:
        _centered(draw, (img.width / 2, subtitle_y), subtitle, subtitle_font, fill=(70, 70, 70))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def scatter_plot(
    pred: Sequence[float],
    true: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "predicted vs true score",
    subtitle: str = "",
    size: int = 640,
) -> Path:
    """Write a scatter plot of (true, pred) pairs; non-finite pairs are skipped. Returns the path."""
    margin_l, margin_r, margin_t, margin_b = 76, 24, 72, 64
    side = size - margin_l - margin_r
    height = margin_t + side + margin_b
    img = Image.new("RGB", (size, height), _WHITE)
    draw = ImageDraw.Draw(img)
    f_title, f_small, f_label = load_font(18), load_font(12), load_font(14)

    def px(x: float, y: float) -> tuple[float, float]:
        return margin_l + x * side, margin_t + (1.0 - y) * side

    # Shade the cells where the predicted level equals the true level: the points inside count
    # as correct for the 5-class accuracy.
    edges = (0.0,) + LEVEL_CUT_POINTS + (1.0,)
    for lo, hi in zip(edges[:-1], edges[1:]):
        draw.rectangle([px(lo, hi), px(hi, lo)], fill=_AGREE)
    for cut in LEVEL_CUT_POINTS:
        draw.line([px(cut, 0), px(cut, 1)], fill=_GRID)
        draw.line([px(0, cut), px(1, cut)], fill=_GRID)
    # y = x, dashed
    steps = 40
    for i in range(0, steps, 2):
        draw.line([px(i / steps, i / steps), px((i + 1) / steps, (i + 1) / steps)], fill=(150, 150, 150), width=1)
    draw.rectangle([px(0, 1), px(1, 0)], outline=_BLACK)

    pairs = [
        (min(max(float(t), 0.0), 1.0), min(max(float(p), 0.0), 1.0))
        for p, t in zip(pred, true)
        if p is not None and t is not None and math.isfinite(float(p)) and math.isfinite(float(t))
    ]
    # Translucent points so dense regions read darker; fewer points -> more opaque.
    alpha = int(max(50, min(220, 6000 / math.sqrt(max(len(pairs), 1)))))
    radius = 3 if len(pairs) < 2000 else 2
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    odraw = ImageDraw.Draw(overlay)
    for t, p in pairs:
        x, y = px(t, p)
        odraw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_POINT + (alpha,))
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(img)

    for i in range(6):
        v = i / 5
        x, y = px(v, 0)
        draw.line([(x, y), (x, y + 5)], fill=_BLACK)
        _centered(draw, (x, y + 14), f"{v:.1f}", f_small)
        x, y = px(0, v)
        draw.line([(x - 5, y), (x, y)], fill=_BLACK)
        draw_text(draw, (x - 8, y), f"{v:.1f}", f_small, _BLACK, "rm")
    # Level names between the cut points, along both axes.
    for level, lo, hi in zip(LEVELS, edges[:-1], edges[1:]):
        x, y = px((lo + hi) / 2, 1)
        _centered(draw, (x, y - 9), level, f_small, fill=(110, 110, 110))
    _centered(draw, (margin_l + side / 2, margin_t + side + 42), "true score", f_label)
    _vertical_label(img, "predicted score", f_label, (18, int(margin_t + side / 2)))
    return _finish(img, draw, path, title, f_title, subtitle, f_small, subtitle_y=38)


def confusion_plot(
    matrix: Sequence[Sequence[int]],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] = LEVELS,
    title: str = "level confusion matrix",
    subtitle: str = "",
    cell: int = 96,
) -> Path:
    """Write a confusion matrix (rows = true, columns = predicted) as PNG. Returns the path."""
    k = len(labels)
    margin_l, margin_t, margin_r, margin_b = 120, 112, 24, 24
    width = margin_l + k * cell + margin_r
    height = margin_t + k * cell + margin_b
    img = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(img)
    f_title, f_label, f_count, f_small = load_font(18), load_font(14), load_font(18), load_font(12)

    for i in range(k):
        row = [int(v) for v in matrix[i]]
        total = sum(row)
        for j in range(k):
            share = row[j] / total if total else 0.0
            # Blend white -> blue by the share of the true level's row.
            colour = tuple(int(round(255 + (c - 255) * share)) for c in _BLUE)
            x0, y0 = margin_l + j * cell, margin_t + i * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=colour, outline=_GRID)
            ink = _WHITE if share > 0.5 else _BLACK
            _centered(draw, (x0 + cell / 2, y0 + cell / 2 - 9), str(row[j]), f_count, fill=ink)
            _centered(draw, (x0 + cell / 2, y0 + cell / 2 + 13), f"{100 * share:.0f}%" if total else "-", f_small, fill=ink)
        draw_text(draw, (margin_l - 10, margin_t + i * cell + cell / 2), labels[i], f_label, _BLACK, "rm")
    for j in range(k):
        _centered(draw, (margin_l + j * cell + cell / 2, margin_t - 14), labels[j], f_label)
    draw.rectangle([margin_l, margin_t, margin_l + k * cell, margin_t + k * cell], outline=_BLACK)
    _centered(draw, (margin_l + k * cell / 2, margin_t - 38), "predicted level", f_label)
    draw_text(draw, (8, margin_t - 14), "true level", f_label, _BLACK, "lm")
    return _finish(img, draw, path, title, f_title, subtitle, f_small, subtitle_y=40)
