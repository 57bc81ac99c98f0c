#!/usr/bin/env python
"""Perceptual-hash distances behind `dedup: {max_distance: 6}` of `humanaes data build`.

Hashes (64-bit DCT phash, as the build) a seeded sample of the shared MEBeauty photos, then
prints the distance of each photo to resized, re-encoded copies of itself (60% and 40% size,
JPEG quality 80) and the distances between different photos of the sample.

    .venv/bin/python benchmarks/dedup_distances.py              # 120 photos, 40 with copies
"""

from __future__ import annotations

import argparse
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=120)
    parser.add_argument("--copied", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import imagehash

    files = sorted((SHARED / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images").glob("*.jpg"))
    if not files:
        print("needs the shared MEBeauty copy", file=sys.stderr)
        return 2
    random.Random(args.seed).shuffle(files)
    pictures = [Image.open(p).convert("RGB") for p in files[: args.photos]]
    hashes = [imagehash.phash(p) for p in pictures]
    copies = []
    for picture, original in zip(pictures[: args.copied], hashes):
        for factor in (0.6, 0.4):
            small = picture.resize((int(picture.width * factor), int(picture.height * factor)), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            small.save(buffer, "JPEG", quality=80)
            buffer.seek(0)
            copies.append(imagehash.phash(Image.open(buffer).convert("RGB")) - original)
    pairs = np.array([hashes[i] - hashes[j] for i in range(len(hashes)) for j in range(i + 1, len(hashes))])
    print(f"resized copies ({len(copies)}): distance max {max(copies)}, counts by distance {np.bincount(copies).tolist()}")
    print(f"different photos ({len(pairs)} pairs): min {pairs.min()}, median {np.median(pairs):g}, "
          f"pairs within 6 bits {(pairs <= 6).sum()}, within 10 bits {(pairs <= 10).sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
