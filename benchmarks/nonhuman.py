"""Pictures with no person in them, drawn from a seed: plain scenes, textures, gradients, shapes.

Used as the negative class when measuring the human filter of `humanaes data build`
(`benchmarks/person_filter.py`) and by its proof test (`tests/test_databuild.py`). Each kind
was looked at by eye (`python benchmarks/nonhuman.py OUT_DIR` writes a sample) and holds
nothing that a person would call a human figure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("landscape", "noise", "stripes", "checker", "gradient", "shapes", "city", "clouds")


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    small = rng.random((cells, max(2, cells * h // w), 3)).astype(np.float32) * 255
    return np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


def nonhuman_image(kind: str, seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """One generated picture of `kind` (see KINDS); the same (kind, seed, size) gives the same pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    if kind == "landscape":  # sky gradient, sun, hills, ground
        sky = np.linspace(rng.uniform(120, 200), 250, h)[:, None, None] * np.array([0.55, 0.75, 1.0])
        pic = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(pic)
        sx, sy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.35) * h, rng.uniform(15, 40)
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 230, 120))
        xs = np.arange(0, w + 8, 8)
        ridge = h * (0.55 + 0.08 * np.sin(xs / w * rng.uniform(3, 9) + rng.uniform(0, 6)))
        draw.polygon([(0, h)] + list(zip(xs.tolist(), ridge.tolist())) + [(w, h)], fill=tuple(int(v) for v in rng.integers(30, 120, 3)))
        draw.rectangle((0, int(h * 0.8), w, h), fill=tuple(int(v) for v in rng.integers(60, 160, 3)))
        return pic
    if kind == "noise":
        return Image.fromarray(_smooth_noise(rng, w, h, int(rng.integers(4, 40))))
    if kind == "stripes":
        period, angle = rng.uniform(6, 40), rng.uniform(0, np.pi)
        yy, xx = np.mgrid[:h, :w]
        wave = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        colours = rng.integers(0, 256, (2, 3))
        return Image.fromarray((colours[0] * wave[..., None] + colours[1] * (1 - wave[..., None])).astype(np.uint8))
    if kind == "checker":
        cell = int(rng.integers(10, 60))
        yy, xx = np.mgrid[:h, :w]
        mask = ((xx // cell + yy // cell) % 2).astype(bool)
        out = np.empty((h, w, 3), np.uint8)
        out[mask], out[~mask] = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        return Image.fromarray(out)
    if kind == "gradient":
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
        return Image.fromarray(np.broadcast_to(a * (1 - t) + b * t, (h, w, 3)).astype(np.uint8))
    if kind == "shapes":
        pic = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(pic)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            x1, y1 = x0 + rng.uniform(20, w / 2), y0 + rng.uniform(20, h / 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        return pic
    if kind == "city":  # a skyline of lit blocks
        pic = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(10, 80, 3)))
        draw = ImageDraw.Draw(pic)
        x = 0.0
        while x < w:
            bw, bh = rng.uniform(30, 90), rng.uniform(0.3, 0.9) * h
            draw.rectangle((x, h - bh, x + bw, h), fill=tuple(int(v) for v in rng.integers(40, 140, 3)))
            for wy in np.arange(h - bh + 8, h - 8, 14):
                for wx in np.arange(x + 6, x + bw - 6, 12):
                    if rng.random() < 0.5:
                        draw.rectangle((wx, wy, wx + 5, wy + 7), fill=(250, 230, 150))
            x += bw + rng.uniform(2, 10)
        return pic
    if kind == "clouds":
        base = _smooth_noise(rng, w, h, 6).mean(axis=2, keepdims=True)
        sky = np.array([90, 140, 220]) + (base - 128) * 0.8
        return Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
    raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")


def nonhuman_images(count: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """`count` pictures cycling through KINDS, named `<kind>_<i>`."""
    return [(f"{KINDS[i % len(KINDS)]}_{i}", nonhuman_image(KINDS[i % len(KINDS)], seed * 100003 + i)) for i in range(count)]


if __name__ == "__main__":  # write a sample to look at
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "nonhuman-sample")
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in nonhuman_images(int(sys.argv[2]) if len(sys.argv) > 2 else 16):
        picture.save(out / f"{name}.png")
    print(f"wrote {out}")
