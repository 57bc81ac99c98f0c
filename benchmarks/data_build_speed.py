#!/usr/bin/env python
"""Speed of `humanaes data build` with one worker and with several, side by side in one run.

Builds the same spec (a seeded sample of the shared MEBeauty photos plus generated pictures
without people, default filters) into fresh folders, alternating 1 worker and `--workers N`
`--repeats` times, and prints images per second of each and their ratio. Also checks that both
give byte-identical label files.

    .venv/bin/python benchmarks/data_build_speed.py                  # 40 + 20 pictures, 1 vs all cores
    .venv/bin/python benchmarks/data_build_speed.py --photos 200 --workers 8 --repeats 2

The time includes starting the worker processes (each imports torch and loads the detectors),
which a small build does not amortise. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))


def make_spec(root: Path, photos: int, generated: int, seed: int) -> Path:
    from benchmarks.nonhuman import nonhuman_images

    images = SHARED / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images"
    rows = [json.loads(line) for line in (images.parent / "label.jsonl").read_text().splitlines()]
    random.Random(seed).shuffle(rows)
    (root / "me.csv").write_text("image,score\n" + "".join(f"{r['image_name']},{r['raw_score']}\n" for r in rows[:photos]))
    (root / "scenes").mkdir()
    lines = []
    for k, (name, picture) in enumerate(nonhuman_images(generated, seed=seed)):
        picture.save(root / "scenes" / f"{name}.jpg", quality=90)
        lines.append(json.dumps({"image": f"{name}.jpg", "score": k % 5}))
    (root / "scenes" / "t.jsonl").write_text("\n".join(lines) + "\n")
    spec = root / "spec.yaml"
    spec.write_text(
        f"sources:\n  - {{name: MEBeauty, table: me.csv, images: {images}, range: [1, 10]}}\n"
        "  - {name: Scenes, table: scenes/t.jsonl, range: min-max}\n"
    )
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--generated", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="default: all usable cores")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from humanaes.data.build import build_dataset
    from humanaes.data.build.build import usable_cores

    args.workers = args.workers or usable_cores()

    root = Path(tempfile.mkdtemp(prefix="build-speed-"))
    try:
        spec = make_spec(root, args.photos, args.generated, args.seed)
        total = args.photos + args.generated
        rates: dict[int, list[float]] = {1: [], args.workers: []}
        outputs: dict[int, Path] = {}
        for r in range(args.repeats):
            for workers in (1, args.workers):
                out = root / f"out-{workers}-{r}"
                start = time.perf_counter()
                build_dataset(spec, out, workers=workers)
                rates[workers].append(total / (time.perf_counter() - start))
                outputs[workers] = out
        same = all(
            (outputs[1] / name).read_bytes() == (outputs[args.workers] / name).read_bytes()
            for name in ("train_label.jsonl", "test_label.jsonl", "dropped.jsonl")
        )
        one, many = statistics.median(rates[1]), statistics.median(rates[args.workers])
        print(f"{total} pictures ({args.photos} MEBeauty + {args.generated} generated), {args.repeats} repeat(s), {usable_cores()} usable cores")
        print(f"  1 worker:   {one:6.2f} pictures/s")
        print(f"  {args.workers} workers: {many:6.2f} pictures/s   ({many / one:.2f}x)")
        print(f"  label files identical: {'yes' if same else 'NO'}")
        return 0 if same else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
