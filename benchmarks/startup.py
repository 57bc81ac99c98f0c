#!/usr/bin/env python
"""Start-up times a newcomer sees: `humanaes --help`, `import humanaes`, loading the bundled
model, the first result, and `humanaes score examples/` end to end.

Every measure runs in a fresh interpreter (what a user's shell gets), `--repeats` times,
interleaved round-robin so that a burst of load from other processes hits every measure alike;
the table shows the median and the best wall time and, for the CLI runs, the median CPU time
(user + system of the process: what the wall time would be on a quiet machine with one thread). It also lists which heavy modules `import humanaes` and
scoring with the bundled model pulled in (transformers/PEFT must not be among them).

    .venv/bin/python benchmarks/startup.py                # 5 repeats
    .venv/bin/python benchmarks/startup.py --repeats 3 --json startup.json

This is a benchmark, not a test: the figures depend on the machine and on what else runs on it
(the 1-minute load average is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import repo_env, run_json_probe  # noqa: E402

EXAMPLES = [str(REPO / "examples" / "astronaut.png"), str(REPO / "examples" / "grace_hopper.jpg")]

# Runs inside a fresh interpreter: times import, load and the first result of the Python API.
API_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import humanaes
t_import = time.perf_counter() - t0
after_import = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
scorer = humanaes.load()
t_load = time.perf_counter() - t0
first = scorer.score([sys.argv[1]])[0]
t_first = time.perf_counter() - t0
assert first.error is None, first.error
print(json.dumps({"import": t_import, "load": t_load - t_import, "first_result": t_first, "after_import": after_import,
                  "after_scoring": sorted(m for m in ("transformers", "peft", "accelerate") if m in sys.modules)}))
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wall(command: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run. On a busy machine the wall time waits for other
    processes; the CPU time is close to what a quiet machine's wall time would be (1 thread)."""
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=repo_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, _children_cpu() - cpu


def _api() -> dict:
    return run_json_probe(API_PROBE, [EXAMPLES[0]], "API probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "humanaes.cli"]
    measures: dict[str, list[float]] = {k: [] for k in ("--help", "import humanaes", "load bundled model",
                                                         "first result (from start)", "score 2 examples (CLI, -q)")}
    modules: dict[str, list[str]] = {}
    load_before = os.getloadavg()[0]
    cpu: dict[str, list[float]] = {"--help": [], "score 2 examples (CLI, -q)": []}
    for _ in range(args.repeats):
        wall, used = _wall(cli + ["--help"])
        measures["--help"].append(wall)
        cpu["--help"].append(used)
        api = _api()
        measures["import humanaes"].append(api["import"])
        measures["load bundled model"].append(api["load"])
        measures["first result (from start)"].append(api["first_result"])
        modules = {"after import humanaes": api["after_import"], "after scoring (bundled)": api["after_scoring"]}
        wall, used = _wall(cli + ["score", "-q", *EXAMPLES])
        measures["score 2 examples (CLI, -q)"].append(wall)
        cpu["score 2 examples (CLI, -q)"].append(used)
    load_after = os.getloadavg()[0]

    print(f"humanaes start-up, {args.repeats} repeats (fresh interpreters), {os.cpu_count()} CPUs, "
          f"load average {load_before:.2f} before, {load_after:.2f} after")
    print(f"{'measure':32s} {'median s':>9s} {'best s':>8s} {'CPU s':>7s}  goal (wall time on a quiet machine)")
    goals = {"--help": 0.5, "score 2 examples (CLI, -q)": 3.0}
    summary = {}
    for name, values in measures.items():
        median, best = statistics.median(values), min(values)
        used = statistics.median(cpu[name]) if name in cpu else None
        goal = goals.get(name)
        verdict = "" if goal is None else f"< {goal:g} s: best {'met' if best < goal else 'NOT met'}"
        print(f"{name:32s} {median:9.3f} {best:8.3f} {'' if used is None else f'{used:7.3f}':>7s}  {verdict}")
        summary[name] = {"median_s": median, "best_s": best, "all_s": values, "cpu_s": cpu.get(name)}
    for when, names in modules.items():
        print(f"heavy modules {when}: {', '.join(names) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"measures": summary, "modules": modules, "load_average": [load_before, load_after],
                                         "cpus": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
