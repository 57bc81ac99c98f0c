#!/usr/bin/env python
"""`humanaes batch` speed: `--engine local` vs `--engine ray` on this machine, side by side.

Both engines score the same real photos (the first N MEBeauty images of the shared data, else
generated 1200x900 JPEGs) with the bundled model, the same batch size and the same CPU threads
per model, as a user runs them: the CLI in a fresh process, the Ray run starting its own local
Ray instance. Each engine runs at two job sizes, interleaved (local small, ray small, local big,
ray big, ... per repeat) so that load from other processes hits both alike. From the two sizes:

    per-image cost = (T(big) - T(small)) / (big - small)     the steady-state rate
    fixed cost     = T(small) - small x per-image cost        start-up (model load, Ray start)

and the Ray overhead per image is the difference of the per-image costs.

    .venv/bin/python benchmarks/batch_scale.py                      # 48 and 192 images, batch 16
    .venv/bin/python benchmarks/batch_scale.py --sizes 64 512 --ray-concurrency 2 --threads 1

A benchmark, not a test: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images"


def input_images(folder: Path, count: int) -> list[Path]:
    """`count` real photos (symlinked from the shared data), else generated JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(IMAGES.glob("*.jpg"))[:count] if IMAGES.is_dir() else []
    paths = []
    for i in range(count):
        target = folder / f"img_{i:05d}.jpg"
        if sources:
            target.symlink_to(sources[i % len(sources)])
        else:
            import numpy as np
            from PIL import Image

            rng = np.random.default_rng(i)
            Image.fromarray((rng.random((900, 1200, 3)) * 255).astype("uint8")).save(target, quality=90)
        paths.append(target)
    return paths


def run_job(manifest: Path, out: Path, engine: str, args: argparse.Namespace) -> float:
    """Wall seconds of one `humanaes batch` command (a fresh process, as a user runs it)."""
    command = [sys.executable, "-m", "humanaes.cli", "batch", str(manifest), "--out", str(out), "--engine", engine,
               "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--threads", str(args.threads), "-q"]
    if engine == "ray":
        command += ["--concurrency", str(args.ray_concurrency), "--cpus-per-actor", str(args.threads),
                    "--local-cpus", str(args.local_cpus), "--object-store-mb", "200"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads), RAY_USAGE_STATS_ENABLED="0")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{engine} run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def commit_rate(rows: int = 100_000, shard_rows: int = 4096) -> float:
    """Rows/s the driver's ShardCommitter takes in (dedup + Parquet shards, atomic commits): the
    ceiling of a whole cluster's throughput, since the driver is the only writer."""
    import pyarrow as pa

    from humanaes.distributed.job import SHARD_DIR, ShardCommitter, shard_schema

    schema = shard_schema()
    batch = 64
    template = dict.fromkeys(schema.names)
    tables = []
    for start in range(0, rows, batch):
        ids = [f"/data/photos/{i:09d}.jpg" for i in range(start, min(rows, start + batch))]
        tables.append(pa.Table.from_pylist(
            [template | {"id": i, "path": i, "image": i, "overall": 0.5, "level": "fair", "regression_score": 0.5,
                         "model": "humanaes-mini", "mode": "fast"} for i in ids], schema=schema))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / SHARD_DIR).mkdir()
        committer = ShardCommitter(out, (), shard_rows=shard_rows)
        start_time = time.perf_counter()
        for table in tables:
            committer.add(table)
        committer.flush()
        return rows / (time.perf_counter() - start_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(48, 192), metavar=("SMALL", "BIG"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per model (local process or Ray actor)")
    parser.add_argument("--ray-concurrency", type=int, default=1, help="model actors in the Ray run")
    parser.add_argument("--local-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    small, big = sorted(args.sizes)
    work = Path(tempfile.mkdtemp(prefix="batch-scale-"))
    try:
        paths = input_images(work / "images", big)
        manifests = {}
        for size in (small, big):
            manifests[size] = work / f"first{size}.txt"
            manifests[size].write_text("\n".join(map(str, paths[:size])) + "\n", encoding="utf-8")
        times: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            for size in (small, big):
                for engine in ("local", "ray"):
                    out = work / f"out-{engine}-{size}-{repeat}"
                    seconds = run_job(manifests[size], out, engine, args)
                    times.setdefault((engine, size), []).append(seconds)
                    print(f"  {engine:5s} {size:5d} images: {seconds:7.1f} s", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
        figures = {}
        for engine in ("local", "ray"):
            t_small = statistics.median(times[(engine, small)])
            t_big = statistics.median(times[(engine, big)])
            per_image = (t_big - t_small) / (big - small)
            figures[engine] = {
                "seconds": {str(small): round(t_small, 2), str(big): round(t_big, 2)},
                "per_image_ms": round(per_image * 1000, 1),
                "steady_images_per_s": round(1 / per_image, 2) if per_image > 0 else None,
                "fixed_s": round(t_small - small * per_image, 1),
                "end_to_end_images_per_s": {str(big): round(big / t_big, 2)},
            }
        overhead_ms = figures["ray"]["per_image_ms"] - figures["local"]["per_image_ms"]
        print(f"\nbatch size {args.batch_size}, {args.threads} thread(s) per model, Ray actors {args.ray_concurrency}, "
              f"dtype {args.dtype}, images: {'MEBeauty photos' if IMAGES.is_dir() else 'generated JPEGs'}")
        print(f"{'engine':8s}{'T(' + str(small) + ')':>10s}{'T(' + str(big) + ')':>10s}{'ms/img':>9s}"
              f"{'img/s':>8s}{'fixed s':>9s}")
        for engine, f in figures.items():
            print(f"{engine:8s}{f['seconds'][str(small)]:10.1f}{f['seconds'][str(big)]:10.1f}{f['per_image_ms']:9.1f}"
                  f"{f['steady_images_per_s'] or float('nan'):8.2f}{f['fixed_s']:9.1f}")
        ratio = figures["ray"]["steady_images_per_s"] / figures["local"]["steady_images_per_s"] \
            if figures["ray"]["steady_images_per_s"] and figures["local"]["steady_images_per_s"] else float("nan")
        print(f"ray / local steady rate: {ratio:.2f}; Ray overhead per image: {overhead_ms:+.1f} ms; "
              f"extra fixed cost of Ray: {figures['ray']['fixed_s'] - figures['local']['fixed_s']:+.1f} s")
        commits = commit_rate()
        print(f"driver commit rate (dedup + Parquet shards of 4096 rows, atomic rename): {commits:,.0f} rows/s")
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "figures": figures,
                                             "ray_over_local": round(ratio, 3), "overhead_ms": round(overhead_ms, 1),
                                             "commit_rows_per_s": round(commits)},
                                            indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
