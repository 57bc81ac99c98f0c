#!/usr/bin/env python
"""Peak memory of `humanaes score` (bundled model) by --batch-size, side by side in one run.

Each batch size runs as its own process (`python -m humanaes.cli score ... --out X.jsonl`) on the
same images, and its peak resident memory (ru_maxrss from wait4) is recorded, so the figures are
comparable: the difference between two batch sizes is what a batch holds at once. The largest
size defaults to the CLI's maximum (humanaes.cli.score.MAX_BATCH_SIZE).

    .venv/bin/python benchmarks/batch_memory.py                          # 256 MEBeauty photos, sizes 8, 64, max
    .venv/bin/python benchmarks/batch_memory.py --images 512 --sizes 8 32 256 --threads 1

This is a benchmark, not a test: numbers depend on the machine, the images and the allocator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DEFAULT_IMAGES, repo_env  # noqa: E402


def pick_images(count: int, folder: Path) -> list[Path]:
    """The first `count` MEBeauty photos (repeated under new names via symlinks if fewer exist)."""
    photos = sorted(DEFAULT_IMAGES.glob("*.jpg"))
    if not photos:
        from PIL import Image

        photos = []
        for i in range(8):
            p = folder / f"synthetic_{i}.jpg"
            Image.new("RGB", (500, 500), (30 * i, 90, 160)).save(p, quality=90)
            photos.append(p)
    chosen = []
    for i in range(count):
        link = folder / f"img_{i:05d}.jpg"
        link.symlink_to(photos[i % len(photos)])  # own name, own key: every one is scored
        chosen.append(link)
    return chosen


def run_once(images_dir: Path, batch_size: int, threads: int, workdir: Path) -> dict[str, float]:
    out = workdir / f"bs{batch_size}.jsonl"
    cmd = [sys.executable, "-m", "humanaes.cli", "score", str(images_dir), "--out", str(out), "-q",
           "--batch-size", str(batch_size), "--threads", str(threads)]
    env = repo_env()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"batch size {batch_size}: exit {code}\n{stderr}")
    rows = sum(1 for _ in out.open())
    # ru_maxrss is KiB on Linux, bytes on macOS
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"batch_size": batch_size, "peak_rss_mib": peak / 2**20, "seconds": elapsed, "rows": rows}


def main() -> None:
    from humanaes.cli.score import MAX_BATCH_SIZE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=MAX_BATCH_SIZE, help="how many photos to score per run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, MAX_BATCH_SIZE])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="humanaes-batchmem-") as tmp:
        work = Path(tmp)
        images_dir = work / "images"
        images_dir.mkdir()
        pick_images(args.images, images_dir)
        results = [run_once(images_dir, size, args.threads, work) for size in args.sizes]
    base = results[0]
    print(f"{args.images} photos, bundled model, --threads {args.threads}; peak RSS per process")
    print(f"{'batch':>6}  {'peak RSS MiB':>12}  {'vs first':>8}  {'MiB/image over first':>20}  {'seconds':>7}  rows")
    for r in results:
        extra = r["batch_size"] - base["batch_size"]
        per_image = (r["peak_rss_mib"] - base["peak_rss_mib"]) / extra if extra else 0.0
        print(f"{r['batch_size']:>6}  {r['peak_rss_mib']:>12.0f}  {r['peak_rss_mib'] / base['peak_rss_mib']:>7.2f}x"
              f"  {per_image:>20.2f}  {r['seconds']:>7.1f}  {r['rows']}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
