"""A synthetic human-image-like labelled set whose labels are a known function of the pixels.

Used to prove, end to end and on CPU, that training learns: a figure with a face (an ellipse),
a body (a rectangle) in front of a background. Four latent factors draw the picture and define
the twelve labels exactly:

  face brightness  -> grey level of the face       outfit  -> colour of the body (blue -> red)
  body width       -> width of the body            environment -> brightness of the background

Leaves are fixed mixtures of the factors, parents are the means of their children (as the
expert head's tree), the overall score is dimension 11. Factors share one latent "quality", so
overall scores spread over all five levels. Written in the HumanBeauty layout.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from humanaes.fsutil import atomic_write
from humanaes.schema import LEVELS, NUM_DIMENSIONS, score_to_level

# leaf index -> weights over (face, outfit, body, environment)
LEAF_MIX: dict[int, tuple[float, float, float, float]] = {
    0: (1.0, 0.0, 0.0, 0.0),  # Facial Brightness
    1: (0.7, 0.0, 0.0, 0.3),  # Facial Feature Clarity
    2: (0.5, 0.5, 0.0, 0.0),  # Facial Skin Tone
    3: (0.5, 0.0, 0.5, 0.0),  # Facial Structure
    4: (0.8, 0.0, 0.2, 0.0),  # Facial Contour Clarity
    6: (0.0, 1.0, 0.0, 0.0),  # Outfit
    7: (0.0, 0.0, 1.0, 0.0),  # Body Shape
    8: (0.0, 0.5, 0.5, 0.0),  # Looks
    9: (0.0, 0.0, 0.0, 1.0),  # Environment
}


def labels_from_factors(factors: tuple[float, float, float, float]) -> list[float]:
    scores = [0.0] * NUM_DIMENSIONS
    for index, mix in LEAF_MIX.items():
        scores[index] = float(np.dot(mix, factors))
    scores[5] = float(np.mean(scores[0:5]))
    scores[10] = float(np.mean(scores[6:9]))
    scores[11] = float(np.mean([scores[5], scores[9], scores[10]]))
    return scores


def draw(factors: tuple[float, float, float, float], size: int, rng: random.Random) -> Image.Image:
    face, outfit, body, environment = factors
    bg = int(30 + 200 * environment)
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    d = ImageDraw.Draw(img)
    width = int(size * (0.2 + 0.5 * body))
    cx = size // 2 + rng.randint(-size // 16, size // 16)
    d.rectangle([cx - width // 2, int(size * 0.5), cx + width // 2, size - 1],
                fill=(int(40 + 200 * outfit), 60, int(240 - 200 * outfit)))
    g = int(40 + 200 * face)
    r = size // 5
    d.ellipse([cx - r, int(size * 0.12), cx + r, int(size * 0.12) + 2 * r], fill=(g, g, g))
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_dataset(root: str | Path, *, train: int = 600, val: int = 100, test: int = 150, size: int = 56,
                 expert_fraction: float = 0.5, seed: int = 0) -> Path:
    """Write the set; half of the rows (by default) carry the twelve labels, the rest only the overall."""
    root = Path(root)
    rng = random.Random(seed)
    subsets = {"HumanBeauty-50K": [], "HumanBeauty-58K": []}
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for split, count in (("train", train), ("val", val), ("test", test)):
        for i in range(count):
            quality = rng.random()
            factors = tuple(min(1.0, max(0.0, quality + rng.gauss(0, 0.18))) for _ in range(4))
            scores = labels_from_factors(factors)  # type: ignore[arg-type]
            expert = rng.random() < expert_fraction
            subset = "HumanBeauty-50K" if expert else "HumanBeauty-58K"
            name = f"{split}_{i:05d}.png"
            folder = root / subset / "images"
            folder.mkdir(parents=True, exist_ok=True)
            draw(factors, size, rng).save(folder / name)  # type: ignore[arg-type]
            label = [round(s, 6) for s in scores] if expert else round(scores[11], 6)
            row = {"image_name": name, "source": "synthetic", "score": label}
            if not expert:
                row["text_level"] = score_to_level(scores[11])
            subsets[subset].append(row)
            splits[split].append({**row, "image_name": f"{subset}/images/{name}", "is_expert": expert})
    for subset, rows in subsets.items():
        _write(root / subset / "label.jsonl", rows)
    for split, rows in splits.items():
        _write(root / f"{split}_label.jsonl", rows)
    return root


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


__all__ = ["LEAF_MIX", "LEVELS", "labels_from_factors", "draw", "make_dataset"]
