#!/usr/bin/env python
"""The CPU thread default (`humanaes.runtime.default_threads`) against fixed 1 and 2 threads, on
the machine as it is ("quiet") and with CPU-burning neighbours started by this script ("busy").

Each run is a fresh process that loads the bundled model with the setting under test (the
default decides from how busy the machine is while the model loads, as `humanaes score` does),
warms up on one image, then times scoring `--images` photos. Settings and conditions are
interleaved round-robin, `--repeats` times, so drifts in the machine's load hit every setting
alike; the table shows medians and each setting's ratio to the best setting of that condition.
The goal: the default within 20% of the best on a quiet machine and within 30% on a busy one.

    .venv/bin/python benchmarks/threads.py                 # 16 images, 3 repeats, 1 burner
    .venv/bin/python benchmarks/threads.py --passive       # also OMP_WAIT_POLICY=PASSIVE variants
    .venv/bin/python benchmarks/threads.py --burners 2 --json threads.json

The burners are plain Python busy loops that end on their own after `--burn-limit` seconds
(and are killed when their condition is done). A benchmark, not a test: "quiet" is only as
quiet as the machine is (its load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DEFAULT_IMAGES, repo_env, run_json_probe  # noqa: E402

WORKER = """
import json, sys, time
import torch
import humanaes
setting, images = sys.argv[1], sys.argv[2:]
threads = setting if setting == "auto" else int(setting)
scorer = humanaes.load(device="cpu", threads=threads)
chosen = torch.get_num_threads()
scorer.score(images[:1])  # warm-up: first-call allocations are not what threads change
start = time.perf_counter()
results = scorer.score(images, batch_size=8)
elapsed = time.perf_counter() - start
assert all(r.error is None for r in results), [r.error for r in results if r.error]
print(json.dumps({"seconds": elapsed, "threads": chosen}))
"""

BURNER = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n"


def pick_images(count: int) -> list[str]:
    photos = sorted(DEFAULT_IMAGES.glob("*.jpg"))[:count]
    if len(photos) < count:  # no shared data: the examples, repeated
        examples = [REPO / "examples" / "astronaut.png", REPO / "examples" / "grace_hopper.jpg"]
        photos = [examples[i % 2] for i in range(count)]
    return [str(p) for p in photos]


def run_worker(setting: str, images: list[str], passive: bool) -> dict:
    env = repo_env()
    env.pop("OMP_NUM_THREADS", None)  # the default must see the machine, not a cap from the caller
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return run_json_probe(WORKER, [setting, *images], f"worker {setting}", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--burners", type=int, default=1, help="CPU-burning processes in the busy condition")
    parser.add_argument("--burn-limit", type=float, default=300.0, help="seconds after which a burner stops by itself")
    parser.add_argument("--passive", action="store_true", help="also run auto and 2 threads with OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    images = pick_images(args.images)
    settings = [("default", "auto", False), ("1 thread", "1", False), ("2 threads", "2", False)]
    if args.passive:
        settings += [("default, passive", "auto", True), ("2 threads, passive", "2", True)]
    results: dict[str, dict[str, list[dict]]] = {c: {name: [] for name, _, _ in settings} for c in ("quiet", "busy")}
    load = {"start": os.getloadavg()[0]}
    for repeat in range(args.repeats):
        for condition in ("quiet", "busy"):
            burners = []
            if condition == "busy":
                burners = [subprocess.Popen([sys.executable, "-c", BURNER, str(args.burn_limit)]) for _ in range(args.burners)]
                time.sleep(1.0)  # running before the workers start, as a neighbour would be
            try:
                order = settings if repeat % 2 == 0 else settings[::-1]
                for name, setting, passive in order:
                    results[condition][name].append(run_worker(setting, images, passive))
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
    load["end"] = os.getloadavg()[0]

    print(f"{len(images)} images, bundled model, {args.repeats} repeats, {os.cpu_count()} CPUs, "
          f"busy = {args.burners} CPU burner(s); load average {load['start']:.2f} at start, {load['end']:.2f} at end")
    print(f"{'setting':22s} {'quiet s':>8s} {'x best':>7s} {'threads':>8s}   {'busy s':>8s} {'x best':>7s} {'threads':>8s}")
    summary: dict[str, dict] = {}
    best = {c: min(statistics.median(r["seconds"] for r in runs) for runs in results[c].values()) for c in results}
    for name, _, _ in settings:
        cells = []
        for condition in ("quiet", "busy"):
            runs = results[condition][name]
            median = statistics.median(r["seconds"] for r in runs)
            chosen = sorted({r["threads"] for r in runs})
            summary.setdefault(name, {})[condition] = {"median_s": median, "ratio_to_best": median / best[condition],
                                                       "threads": chosen, "all_s": [r["seconds"] for r in runs]}
            cells.append(f"{median:8.3f} {median / best[condition]:7.2f} {','.join(map(str, chosen)):>8s}")
        print(f"{name:22s} {cells[0]}   {cells[1]}")
    default = summary["default"]
    verdict_quiet = "met" if default["quiet"]["ratio_to_best"] <= 1.2 else "NOT met"
    verdict_busy = "met" if default["busy"]["ratio_to_best"] <= 1.3 else "NOT met"
    print(f"default within 20% of the best when quiet: {verdict_quiet}; within 30% when busy: {verdict_busy}")
    for condition in ("quiet", "busy"):
        fastest = min((n for n, _, _ in settings if n != "default"), key=lambda n: summary[n][condition]["median_s"])
        print(f"{condition}: the default chose {','.join(map(str, default[condition]['threads']))} thread(s); "
              f"the fastest fixed setting was {fastest} (when both ran the same count, their gap is the machine's noise)")
    if args.json:
        args.json.write_text(json.dumps({"images": len(images), "repeats": args.repeats, "burners": args.burners,
                                         "load_average": load, "results": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
