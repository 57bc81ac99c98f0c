#!/usr/bin/env python
"""End-to-end speed of the bundled model (humanaes-mini) on ~1 MP JPEGs.

Makes N JPEGs of 1200x900 (about 1.08 MP, quality 90) in a temp folder by upscaling MEBeauty val
images (or the shared fixtures, or synthetic gradients when neither exists), loads the packaged
model (timed), warms up, then scores the whole folder `--repeats` times through the public API
(`BundledScorer.score`: decode + preprocess + batched forward) and prints the median images/s.
Also prints the decode+preprocess-only and the model-only rates to show where time goes.

    .venv/bin/python benchmarks/bundled_speed.py                 # 2 threads, batch 16
    .venv/bin/python benchmarks/bundled_speed.py --threads 1 --no-tta
    .venv/bin/python benchmarks/bundled_speed.py --compare-dtype float32   # bfloat16 vs float32, side by side
    .venv/bin/python benchmarks/bundled_speed.py --compare-model-dir OLD   # this model vs another, side by side

This is a benchmark, not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    import numpy as np
    from PIL import Image

    sources = sorted((SHARED / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images").glob("*.jpg"))[:count]
    if not sources:
        sources = sorted((SHARED / "fixtures" / "internvl2" / "preprocess").glob("*.[pj][np]g"))
    paths = []
    w, h = size
    for i in range(count):
        if sources:
            img = Image.open(sources[i % len(sources)]).convert("RGB")
            # crop to the target aspect ratio, then upscale
            sw, sh = img.size
            if sw / sh > w / h:
                cw = round(sh * w / h)
                img = img.crop(((sw - cw) // 2, 0, (sw - cw) // 2 + cw, sh))
            else:
                ch = round(sw * h / w)
                img = img.crop((0, (sh - ch) // 2, sw, (sh - ch) // 2 + ch))
            img = img.resize((w, h), Image.Resampling.BICUBIC)
        else:
            rng = np.random.default_rng(i)
            arr = (rng.random((h, w, 3)) * 255).astype("uint8")
            img = Image.fromarray(arr)
        path = folder / f"bench_{i:03d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", default="1200x900", help="WxH of the generated JPEGs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-fast-decode", action="store_true", help="decode JPEGs at full size")
    ap.add_argument("--no-tta", action="store_true", help="skip the mirror-image average")
    ap.add_argument("--folder", type=Path, help="use/keep the JPEGs here instead of a temp folder")
    ap.add_argument("--model-dir", type=Path, help="a folder written by save_bundled (default: the packaged model)")
    ap.add_argument("--dtype", default="auto", help="compute dtype: auto (bfloat16 on CPUs with bfloat16 units), float32, bfloat16")
    ap.add_argument("--compare-model-dir", type=Path,
                    help="also time this model, alternating with the first one repeat by repeat (a ratio that "
                         "holds on a busy machine)")
    ap.add_argument("--compare-dtype", help="compute dtype of the compared model (default: --dtype); alone, compares "
                                            "the same model in two dtypes")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from humanaes.io.images import load_image
    from humanaes.models.mini import load_bundled

    import_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = sorted(folder.glob("bench_*.jpg"))[: args.images]
        if len(paths) < args.images:
            paths = make_jpegs(folder, args.images, (w, h))
        mp = w * h / 1e6

        t = time.perf_counter()
        scorer = load_bundled(args.device, path=args.model_dir, fast_decode=not args.no_fast_decode, dtype=args.dtype)
        load_s = time.perf_counter() - t
        options = {"tta_flip": False} if args.no_tta else {}
        names = [str(p) for p in paths]

        compare = args.compare_model_dir is not None or args.compare_dtype is not None
        other = load_bundled(
            args.device, path=args.compare_model_dir or args.model_dir, fast_decode=not args.no_fast_decode,
            dtype=args.compare_dtype or args.dtype,
        ) if compare else None
        scorer.score(names[: args.batch_size], batch_size=args.batch_size, **options)  # warm-up
        if other is not None:
            other.score(names[: args.batch_size], batch_size=args.batch_size, **options)
        rates, other_rates = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            results = scorer.score(names, batch_size=args.batch_size, **options)
            rates.append(len(names) / (time.perf_counter() - t))
            if other is not None:
                t = time.perf_counter()
                other.score(names, batch_size=args.batch_size, **options)
                other_rates.append(len(names) / (time.perf_counter() - t))
        failed = [r for r in results if not r.ok]
        if failed:
            print(f"{len(failed)} images failed: {failed[0].error}", file=sys.stderr)
            return 1

        # where the time goes: decode + preprocess only, then model only
        from humanaes.models.mini.scorer import open_for_size

        t = time.perf_counter()
        prepared = []
        for p in names:
            src = p if args.no_fast_decode else open_for_size(p, scorer.input_size, scorer.config.crop_fraction)
            prepared.append(scorer.prepare(load_image(src, name=p)))
        prep_rate = len(names) / (time.perf_counter() - t)
        model_rates = []
        for _ in range(max(1, args.repeats // 2)):
            t = time.perf_counter()
            for i in range(0, len(prepared), args.batch_size):
                scorer.score_prepared(prepared[i : i + args.batch_size], names[i : i + args.batch_size], "fast", **options)
            model_rates.append(len(prepared) / (time.perf_counter() - t))

    report = {
        "images": len(names),
        "jpeg_size": f"{w}x{h} ({mp:.2f} MP)",
        "batch_size": args.batch_size,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "fast_decode": not args.no_fast_decode,
        "tta_flip": scorer.config.tta_flip and not args.no_tta,
        "compute_dtype": str(scorer.compute_dtype).removeprefix("torch."),
        "input_size": scorer.input_size,
        "crop_fraction": scorer.config.crop_fraction,
        "backbones": getattr(scorer.model, "backbones", [scorer.config.backbone]),
        "import_s": round(import_s, 3),
        "load_s": round(load_s, 3),
        "end_to_end_img_per_s_median": round(statistics.median(rates), 1),
        "end_to_end_img_per_s_all": [round(r, 1) for r in rates],
        "end_to_end_img_per_s_best": round(max(rates), 1),
        "decode_preprocess_img_per_s": round(prep_rate, 1),
        "model_only_img_per_s_median": round(statistics.median(model_rates), 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(f"humanaes-mini ({report['compute_dtype']}): {report['end_to_end_img_per_s_median']} img/s end to end (median of {args.repeats}), "
          f"model load {report['load_s']} s, on {report['jpeg_size']} JPEGs")
    if other is not None:
        report["compared_model"] = {
            "model_dir": str(args.compare_model_dir or args.model_dir or "packaged"),
            "compute_dtype": str(other.compute_dtype).removeprefix("torch."),
            "end_to_end_img_per_s_median": round(statistics.median(other_rates), 1),
            "end_to_end_img_per_s_all": [round(r, 1) for r in other_rates],
            "end_to_end_img_per_s_best": round(max(other_rates), 1),
            "speed_ratio_median": round(statistics.median(r / o for r, o in zip(rates, other_rates)), 3),
        }
        print(f"compared with {report['compared_model']['model_dir']} ({report['compared_model']['compute_dtype']}): "
              f"{report['compared_model']['end_to_end_img_per_s_median']} img/s; "
              f"ratio {report['compared_model']['speed_ratio_median']} (median of per-repeat ratios)")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
