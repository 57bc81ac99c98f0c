#!/usr/bin/env python
"""Load test of `humanaes serve` with the bundled model, on loopback, bounded in time and requests.

1. Scores the test photos in-process (the reference answers, and the in-process rate at the
   service's batch size: `scorer.score(batch, batch_size=B)` in a loop).
2. Starts `humanaes serve` in a subprocess on 127.0.0.1 (one worker, same threads and batch size).
3. For each load level (default 1x, 2x, 4x the in-process rate) sends single-image requests at that
   arrival rate (open loop: arrivals do not wait for answers) for `--seconds`, from one asyncio
   client with pre-encoded multipart bodies. Each request carries a distinct photo; every 200's
   score is checked against that photo's in-process score (none lost, none swapped).
4. Prints per level: answered/s, p50/p95/p99 latency of the 200s, 429s and other failures, the
   server's peak RSS, the load generator's own CPU use (it shares the machine's cores with the
   server), and the served / in-process ratio (goal at saturation: >= 0.8). On a shared machine
   rates drift by 2x within a minute, so in-process windows are interleaved with the levels: each
   level's ratio uses the mean of the in-process windows just before and just after it. CPU time
   per answered image (the server process's, 429s and parsing included) against CPU time per image
   in-process is the steadier overhead figure on a busy machine.

    .venv/bin/python benchmarks/serve_load.py                       # 8 s per level, batch 8, 1 thread
    .venv/bin/python benchmarks/serve_load.py --seconds 4 --levels 1,4 --json out.json

A benchmark, not a test: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO.parent / "shared" / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images"
MAX_REQUESTS_PER_LEVEL = 5000  # hard bound whatever the rate
HOST = "127.0.0.1"  # loopback only


def photos(count: int) -> list[tuple[str, bytes]]:
    """`count` distinct real photos: MEBeauty images when the shared data is there, else crops of
    the shipped examples at distinct offsets."""
    import io

    from PIL import Image

    files = sorted(PHOTOS.glob("*.jpg"))[:count] if PHOTOS.is_dir() else []
    if len(files) == count:
        return [(f.name, f.read_bytes()) for f in files]
    base = Image.open(REPO / "examples" / "grace_hopper.jpg").convert("RGB")
    out = []
    for i in range(count):
        buf = io.BytesIO()
        left, top = (i * 7) % 130, (i * 13) % 110
        base.crop((left, top, left + 380, top + 400)).save(buf, format="JPEG", quality=90)
        out.append((f"crop-{i}.jpg", buf.getvalue()))
    return out


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "humanaesbench"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def cpu_seconds_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of another process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process_rate(scorer: Any, images: list[bytes], batch: int, seconds: float) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the scorer called directly with batches of `batch`
    images (decode included). CPU time per image hardly depends on what else runs on the machine."""
    scorer.score(images[:batch], batch_size=batch)  # warm-up
    done, start, cpu = 0, time.perf_counter(), cpu_seconds_self()
    i = 0
    while time.perf_counter() - start < seconds:
        chunk = [images[(i + k) % len(images)] for k in range(batch)]
        scorer.score(chunk, batch_size=batch)
        done += batch
        i += batch
    return done / (time.perf_counter() - start), (cpu_seconds_self() - cpu) / done


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_level(url: str, bodies: list[tuple[str, bytes, str]], expected: dict[str, float], rate: float,
                    seconds: float) -> dict[str, Any]:
    import httpx

    total = min(int(rate * seconds), MAX_REQUESTS_PER_LEVEL)
    latencies: list[float] = []
    counts = {"ok": 0, "429": 0, "other": 0, "mismatch": 0}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one(index: int) -> None:
            name, body, ctype = bodies[index % len(bodies)]
            start = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/score", content=body, headers={"content-type": ctype})
            except httpx.HTTPError:
                counts["other"] += 1
                return
            if r.status_code == 429:
                counts["429"] += 1
                return
            if r.status_code != 200:
                counts["other"] += 1
                return
            (result,) = r.json()["results"]
            if result["image"] != name or abs(result["overall"] - expected[name]) > 1e-5:
                counts["mismatch"] += 1
                return
            counts["ok"] += 1
            latencies.append(time.perf_counter() - start)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "offered_per_s": rate, "requests": total, "seconds": wall, "answered_per_s": counts["ok"] / wall,
        "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "p99_ms": q[98] * 1000, **counts,
        "generator_cpu_cores": cpu / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load level")
    parser.add_argument("--levels", default="1,2,4", help="offered load as multiples of the in-process rate")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (server and in-process alike)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    import humanaes

    torch.set_num_threads(args.threads)
    images = photos(args.photos)
    scorer = humanaes.load(device="cpu", dtype=args.dtype)
    expected = {name: r.overall for (name, _), r in zip(images, scorer.score([d for _, d in images], batch_size=1))}
    datas = [d for _, d in images]
    rate_before, cpu_before = in_process_rate(scorer, datas, args.max_batch, max(args.seconds / 2, 2))
    print(f"in-process: {rate_before:.2f} images/s at batch {args.max_batch}, {args.threads} thread(s)", flush=True)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "humanaes.cli", "serve", "--host", HOST, "--port", str(port), "--threads",
         str(args.threads), "--dtype", args.dtype, "--max-batch", str(args.max_batch), "--max-queue",
         str(args.max_queue), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://{HOST}:{port}"
    levels = []
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.2)
        bodies = [(name, *multipart(name, data)) for name, data in images]
        asyncio.run(run_level(url, bodies, expected, rate_before / 2, 2))  # warm-up
        window = max(args.seconds / 2, 2)
        rates = [rate_before]
        cpus = [cpu_before]
        for factor in [float(x) for x in args.levels.split(",")]:
            server_cpu = cpu_seconds_of(server.pid)
            level = asyncio.run(run_level(url, bodies, expected, factor * rate_before, args.seconds))
            level["server_cpu_ms_per_image"] = (cpu_seconds_of(server.pid) - server_cpu) / max(level["ok"], 1) * 1000
            level["factor"] = factor
            level["server_peak_rss_mb"] = peak_rss_mb(server.pid)
            rate, cpu = in_process_rate(scorer, datas, args.max_batch, window)
            rates.append(rate)
            cpus.append(cpu)
            level["in_process_cpu_ms_per_image"] = (cpus[-2] + cpus[-1]) / 2 * 1000
            level["in_process_per_s"] = (rates[-2] + rates[-1]) / 2
            level["ratio_vs_in_process"] = level["answered_per_s"] / level["in_process_per_s"]
            levels.append(level)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in level.items()}), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"in-process windows (images/s): {', '.join(f'{r:.2f}' for r in rates)}")
    print()
    print(f"{'load':>5} {'offered/s':>9} {'answered/s':>10} {'in-proc/s':>9} {'ratio':>6} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'p99 ms':>7} {'429':>5} {'other':>5} {'wrong':>5} {'RSS MB':>7} {'gen CPU':>7} {'CPU ms/img srv/in-proc':>22}")
    for lv in levels:
        print(f"{lv['factor']:>4g}x {lv['offered_per_s']:>9.1f} {lv['answered_per_s']:>10.2f} {lv['in_process_per_s']:>9.2f} "
              f"{lv['ratio_vs_in_process']:>6.2f} {lv['p50_ms']:>7.0f} {lv['p95_ms']:>7.0f} {lv['p99_ms']:>7.0f} "
              f"{lv['429']:>5} {lv['other']:>5} {lv['mismatch']:>5} {lv['server_peak_rss_mb']:>7.0f} "
              f"{lv['generator_cpu_cores']:>7.2f} {lv['server_cpu_ms_per_image']:>12.0f} / {lv['in_process_cpu_ms_per_image']:<7.0f}")
    lost = sum(lv["mismatch"] + lv["other"] for lv in levels)
    print(f"\nevery accepted answer checked against its own photo's in-process score: {lost} wrong or lost")
    if args.json:
        args.json.write_text(json.dumps({"in_process_per_s": rates, "levels": levels,
                                         "threads": args.threads, "max_batch": args.max_batch}, indent=2) + "\n")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
