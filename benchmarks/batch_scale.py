#!/usr/bin/env python
"""`humanaes batch` speed: `--engine local` vs `--engine ray` on this machine, side by side.

Both engines score the same real photos (the first N MEBeauty images of the shared data, else
generated 1200x900 JPEGs) with the bundled model, the same batch size and the same CPU threads
per model, through the engines' own entry points (`run_local`, `run_ray` with a local Ray
instance started for each run). Runs alternate (local, ray, local, ray, ...) so that load from
other processes hits both alike. Each result batch is time-stamped on arrival, which separates

    fixed cost  = time to the first result batch (model load; for Ray also the instance start,
                  the actors' model load and the first pass through the pipeline)
    steady rate = rows after the first batch / time from the first to the last batch

and the Ray overhead per image is the difference of the steady per-image costs. Also measured:
the rate at which the driver commits rows (dedup + Parquet shards), the ceiling of a cluster.

    .venv/bin/python benchmarks/batch_scale.py                     # 160 photos, batch 16, 2 repeats
    .venv/bin/python benchmarks/batch_scale.py --images 512 --ray-concurrency 2 --threads 1

A benchmark, not a test: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def time_engine(engine: str, table: object, args: argparse.Namespace) -> dict[str, float]:
    """One run of an engine over `table`; figures from the arrival times of result batches."""
    from humanaes.distributed.runner import BatchConfig, preprocess_kwargs, run_local
    from humanaes.distributed.stages import BatchScorer  # noqa: F401 - imported before the clock starts

    config = BatchConfig(inputs=[], out=Path("unused"), engine=engine, batch_size=args.batch_size,
                         concurrency=args.ray_concurrency, cpus_per_actor=args.threads, local_cpus=args.local_cpus,
                         object_store_mb=200, dtype=args.dtype, threads=args.threads, quiet=True)
    kwargs = {"model": None, "mode": "fast", "options": {}, "device": "cpu", "dtype": args.dtype,
              "threads": args.threads, "fault": None}
    arrivals: list[tuple[float, int]] = []

    def on_result(result: object) -> None:
        arrivals.append((time.perf_counter(), result.num_rows))  # type: ignore[attr-defined]

    start = time.perf_counter()
    if engine == "local":
        run_local(table, kwargs, batch_size=args.batch_size, on_result=on_result)
    else:
        from humanaes.distributed.ray_engine import run_ray

        run_ray(table, kwargs, preprocess_kwargs(config, kwargs), config=config, on_result=on_result)
    rows = sum(n for _, n in arrivals)
    first_time, first_rows = arrivals[0]
    steady_s = arrivals[-1][0] - first_time
    return {"rows": rows, "total_s": arrivals[-1][0] - start, "fixed_s": first_time - start,
            "steady_ms_per_image": 1000 * steady_s / max(1, rows - first_rows)}


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
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per model (local process or Ray actor)")
    parser.add_argument("--ray-concurrency", type=int, default=1, help="model actors in the Ray run")
    parser.add_argument("--local-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from humanaes.distributed.inputs import gather_inputs
    from humanaes.distributed.stages import items_table

    work = Path(tempfile.mkdtemp(prefix="batch-scale-"))
    try:
        input_images(work / "images", args.images)
        table = items_table(gather_inputs([str(work / "images")]))
        runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
        for repeat in range(args.repeats):
            for engine in ("local", "ray"):
                figures = time_engine(engine, table, args)
                runs[engine].append(figures)
                print(f"  {engine:5s} run {repeat + 1}: {figures['total_s']:6.1f} s total, {figures['fixed_s']:5.1f} s "
                      f"to the first batch, {figures['steady_ms_per_image']:6.1f} ms per image after it", flush=True)
        summary = {}
        for engine, rows in runs.items():
            steady = statistics.median(r["steady_ms_per_image"] for r in rows)
            summary[engine] = {
                "steady_ms_per_image": round(steady, 1),
                "steady_images_per_s": round(1000 / steady, 2),
                "fixed_s": round(statistics.median(r["fixed_s"] for r in rows), 1),
                "end_to_end_images_per_s": round(statistics.median(r["rows"] / r["total_s"] for r in rows), 2),
            }
        local, ray = summary["local"], summary["ray"]
        print(f"\n{args.images} {'MEBeauty photos' if IMAGES.is_dir() else 'generated JPEGs'}, batch size "
              f"{args.batch_size}, {args.threads} thread(s) per model, Ray actors {args.ray_concurrency}, dtype "
              f"{args.dtype}; medians of {args.repeats} alternating runs")
        print(f"{'engine':8s}{'ms/img':>9s}{'img/s':>8s}{'fixed s':>9s}{'end-to-end img/s':>18s}")
        for engine, f in summary.items():
            print(f"{engine:8s}{f['steady_ms_per_image']:9.1f}{f['steady_images_per_s']:8.2f}{f['fixed_s']:9.1f}"
                  f"{f['end_to_end_images_per_s']:18.2f}")
        ratio = ray["steady_images_per_s"] / local["steady_images_per_s"]
        overhead = ray["steady_ms_per_image"] - local["steady_ms_per_image"]
        print(f"ray / local steady rate: {ratio:.2f}; Ray overhead per image: {overhead:+.1f} ms; "
              f"extra fixed cost of Ray: {ray['fixed_s'] - local['fixed_s']:+.1f} s")
        commits = commit_rate()
        print(f"driver commit rate (dedup + Parquet shards of 4096 rows, atomic rename): {commits:,.0f} rows/s")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                             "summary": summary, "ray_over_local": round(ratio, 3),
                                             "overhead_ms": round(overhead, 1), "commit_rows_per_s": round(commits)},
                                            indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
