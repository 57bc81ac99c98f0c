"""Benchmark entry point.

    python -m benchmarks.run --suite cpu --json out.json            # ~15 min on 2 cores (1B, random weights)
    python -m benchmarks.run --suite cpu --quick --json quick.json  # seconds (humanaes-tiny), a smoke run
    python -m benchmarks.run --suite gpu --json gpu.json            # one CUDA GPU, < 8 min (1B and 8B)

Prints a markdown table and writes every number (medians, spreads, raw repeats, machine) as JSON.
The JSON has the top-level keys metavoter_over_fast, preprocess_images_per_s, load_seconds and
fast_seconds_per_image, each {"humanaes": x, "reference": y, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.checkpoints import DEFAULT_CACHE


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write all results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--quick", action="store_true", help="smoke run on humanaes-tiny (seconds)")
    parser.add_argument("--preset", default=None, help="model preset (cpu default humanaes-1b; gpu: humanaes-1b and humanaes-8b)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (cpu suite default 1: the machine is shared)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of the main comparisons")
    parser.add_argument("--images", default=None, help="folder of photos (default: shared HumanBeauty-58K images)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where random-init checkpoints are cached")
    parser.add_argument("--skip-load", action="store_true", help="cpu: skip the load-time benchmark")
    parser.add_argument("--reference-sweep", action="store_true", help="cpu: also time the reference flow at max_tiles 6 and 12 (slow)")
    parser.add_argument("--device", default=None, help="gpu suite: device (default cuda); 'cpu' runs its code path as a dry run")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.suite == "cpu":
        from benchmarks import cpu_suite
        from benchmarks.report import cpu_table

        res = cpu_suite.run(args, log)
        table = cpu_table(res)
    else:
        from benchmarks import gpu_suite
        from benchmarks.report import gpu_table

        try:
            res = gpu_suite.run(args, log)
        except gpu_suite.NoCuda as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        table = gpu_table(res)
    res["table_markdown"] = table
    print()
    print(table)
    print(f"\ntotal {res.get('total_seconds', 0):.0f} s")
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(_jsonable(res), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_path}")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
