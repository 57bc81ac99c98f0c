"""CPU suite: humanaes vs the official inference flow, same process, same weights, same photos.

Model: a random-init preset (1B by default; humanaes-tiny with --quick), saved once in fp16 in
our format and in the original layout. Both sides run on the same HumanAesExpertModel modules;
the reference flow (benchmarks/reference.py) runs fp32, batch size 1, as the release does on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import reference as R
from benchmarks.checkpoints import ensure_checkpoints
from benchmarks.common import (
    DEFAULT_IMAGES,
    StageTimer,
    keeps_torch_threads,
    max_abs_diff,
    repo_env,
    scores_as_dict,
    select_images,
)
from benchmarks.timing import (
    GIB,
    MIB,
    Stats,
    compare,
    interleaved,
    machine_info,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
)

PARITY_ATOL = 2e-4  # fp32 vs fp32, same weights: only summation order differs


@dataclass
class Settings:
    preset: str = "humanaes-1b"
    threads: int = 1
    n_preprocess: int = 64
    n_multi: int = 24
    warmup: int = 1
    repeats: int = 4
    sweep_repeats: int = 2
    batch_images: int = 8
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    batch_repeats: int = 2
    load_repeats: int = 3
    load_repeats_reference: int = 2
    load_in_process: bool = False
    threads_probe: bool = True
    reference_sweep: bool = False

    @classmethod
    def for_args(cls, args: Any) -> "Settings":
        s = cls()
        if args.quick:
            s = cls(preset="humanaes-tiny", n_preprocess=6, n_multi=3, warmup=1, repeats=2, sweep_repeats=1, batch_images=4,
                    batch_sizes=(1, 2, 4), batch_repeats=1, load_repeats=1, load_repeats_reference=1,
                    load_in_process=True, threads_probe=False, reference_sweep=True)
        if args.preset:
            s.preset = args.preset
        if args.threads:
            s.threads = args.threads
        if args.repeats:
            s.repeats = args.repeats
        if getattr(args, "reference_sweep", False):
            s.reference_sweep = True
        return s


def _score_ok(results: list[Any]) -> list[Any]:
    for r in results:
        if r.error:
            raise RuntimeError(f"scoring failed: {r.error}")
    return results


# ---------------------------------------------------------------------------------------------
# load benchmarks
# ---------------------------------------------------------------------------------------------


def _load_run(kind: str, folder: Path, dtype: str, threads: int, score: Path | None, in_process: bool) -> dict[str, Any]:
    if in_process:
        from benchmarks.load_worker import run_once

        return run_once(kind, folder, dtype, threads, score, 12)
    cmd = [sys.executable, "-m", "benchmarks.load_worker", "--kind", kind, "--folder", str(folder), "--dtype", dtype, "--threads", str(threads)]
    if score is not None:
        cmd += ["--score", str(score), "--max-tiles", "12"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=repo_env(), check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def bench_loads(ckpt: dict[str, Path], image: Path, s: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Each load in a fresh process (page cache warm: the files were just written or read)."""
    variants = [
        ("humanaes", "humanaes", ckpt["humanaes"], "auto", s.load_repeats),
        ("humanaes_original_layout", "humanaes", ckpt["original"], "auto", max(1, s.load_repeats - 1)),
        ("humanaes_fp32", "humanaes", ckpt["humanaes"], "float32", 1),
        ("reference", "official-fp32", ckpt["original"], "auto", s.load_repeats_reference),
    ]
    out: dict[str, Any] = {}
    # warm the page cache for both files once (not timed)
    for folder in (ckpt["humanaes"], ckpt["original"]):
        for f in folder.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(64 * MIB):
                    pass
    rounds = max(v[4] for v in variants)
    runs: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
    for i in range(rounds):  # round-robin, so drifts of the shared machine hit all variants
        for name, kind, folder, dtype, n in variants:
            if i >= n:
                continue
            score = image if i == 0 else None  # first run also scores one photo (peak RSS of load + score)
            r = _load_run(kind, folder, dtype, s.threads, score, s.load_in_process)
            runs[name].append(r)
            log(f"  load {name:<26} {r['load_s']:6.2f} s  peak RSS delta {r['peak_rss_delta_load_bytes'] / GIB:5.2f} GiB"
                + (f"  (+ score {r['score_s']:.1f} s, peak {r['peak_rss_load_and_score_bytes'] / GIB:.2f} GiB)" if "score_s" in r else ""))
    for name, rs in runs.items():
        st = Stats([r["load_s"] for r in rs])
        first = rs[0]
        out[name] = {
            "load_s": st.to_dict(),
            "model_dtype": first["model_dtype"],
            "checkpoint_bytes": first["checkpoint_bytes"],
            "peak_rss_delta_load_bytes": max(r["peak_rss_delta_load_bytes"] for r in rs),
            "peak_rss_delta_over_checkpoint": max(r["peak_rss_delta_over_checkpoint"] for r in rs),
            "rss_after_load_bytes": first["rss_after_load_bytes"],
            "rss_after_load_parts": first.get("rss_after_load_parts"),
            "stages_first_run": first.get("stages"),
            "score_s_first_call": first.get("score_s"),
            "peak_rss_load_and_score_bytes": first.get("peak_rss_load_and_score_bytes"),
            "in_process": s.load_in_process,
        }
    return out


# ---------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------


@keeps_torch_threads
def run(args: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    from humanaes import scorer as humanaes_api
    from humanaes.models.expert.checkpoint import load_humanaes
    from humanaes.models.expert.scorer import HumanAesScorer
    from humanaes.models.expert.tokenization import load_tokenizer

    s = Settings.for_args(args)
    torch.set_num_threads(s.threads)
    t_start = time.perf_counter()
    info = machine_info()
    info["torch_threads"] = torch.get_num_threads()
    res: dict[str, Any] = {"suite": "cpu", "quick": bool(args.quick), "machine": info, "settings": s.__dict__.copy()}
    res["settings"]["batch_sizes"] = list(s.batch_sizes)
    cache_dir = Path(args.cache_dir)
    imgs = select_images(Path(args.images) if args.images else DEFAULT_IMAGES, cache_dir, s.n_preprocess, log)
    res["images"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in imgs.items() if k not in ("typical", "multi_set")}
    res["images"]["n_typical"] = len(imgs["typical"])
    res["images"]["n_multi_set"] = len(imgs["multi_set"])
    log(f"machine: {info['cpu_model']}, nproc {info['nproc']}, torch {info['torch']}, threads {s.threads}, load avg {info['loadavg_start']}")

    # -- checkpoints and loads ------------------------------------------------------------------
    t0 = time.perf_counter()
    ckpt = ensure_checkpoints(s.preset, cache_dir, log=log)
    res["checkpoint"] = {"folder": str(ckpt["root"]), "built_now": ckpt["built"], "seconds": time.perf_counter() - t0}
    if not args.skip_load:
        log("load time and memory (fresh process per load):")
        res["loads"] = bench_loads(ckpt, imgs["one_tile"], s, log)

    # -- models for the compute benchmarks ------------------------------------------------------
    model32, _ = load_humanaes(ckpt["humanaes"], dtype=torch.float32)
    modelbf, _ = load_humanaes(ckpt["humanaes"], dtype=torch.bfloat16)
    tokenizer = load_tokenizer(model32.config.tokenizer)
    ours32 = HumanAesScorer(model32, tokenizer)
    oursbf = HumanAesScorer(modelbf, tokenizer)
    flow = R.OfficialFlow(model32, tokenizer, ours32.general_question, ours32.expert_question)

    # -- preprocessing ------------------------------------------------------------------------------
    log("preprocessing (decode + tiles + normalised tensor), max_tiles 12:")
    pre: dict[str, Any] = {}
    for label, paths in (("typical", imgs["typical"]), ("multi_tile", imgs["multi_set"][: s.n_multi])):
        if not paths:
            continue
        worst = 0.0
        for p in paths:  # same pixels on both sides (the dataset photos carry no EXIF rotation)
            a = ours32.prepare(humanaes_api.load_image(p, apply_exif=ours32.apply_exif), max_tiles=12)
            b = R.load_image(p, max_num=12)
            worst = max(worst, float((a - b).abs().max()) if a.shape == b.shape else float("inf"))
        if worst > 1e-6:
            raise AssertionError(f"preprocessing differs from the reference flow (max abs diff {worst})")

        def ours_pre(paths=paths) -> None:
            for p in paths:
                ours32.prepare(humanaes_api.load_image(p, apply_exif=ours32.apply_exif), max_tiles=12)

        def ref_pre(paths=paths) -> None:
            for p in paths:
                R.load_image(p, max_num=12)

        st = interleaved({"humanaes": ours_pre, "reference": ref_pre}, warmup=s.warmup, repeats=max(2, s.repeats))
        pre[label] = compare(st["humanaes"], st["reference"], per=len(paths), invert=True, unit="images/s", images=len(paths),
                             max_abs_diff=worst)
        log(f"  {label:<10} humanaes {pre[label]['humanaes']:7.1f} img/s   reference {pre[label]['reference']:7.1f} img/s   x{pre[label]['speedup']:.2f}")
    res["preprocess"] = pre

    # -- parity and latency on one photo, fast vs metavoter --------------------------------------
    photo = imgs["one_tile"]
    timer = StageTimer()
    ours_results: dict[str, Any] = {}
    ref_results: dict[str, Any] = {}

    def ours_call(scorer: HumanAesScorer, side: str, mode: str, path: Path, max_tiles: int) -> Callable[[], None]:
        def fn() -> None:
            timer.side = f"{side}_{mode}"
            ours_results[(side, mode, str(path), max_tiles)] = _score_ok(scorer.score([path], mode=mode, max_tiles=max_tiles, batch_size=1))[0]
        return fn

    def ref_call(mode: str, path: Path, max_tiles: int) -> Callable[[], None]:
        def fn() -> None:
            timer.side = f"reference_{mode}"
            t = time.perf_counter()
            pv = R.load_image(path, max_num=max_tiles)
            timer.add("preprocess", time.perf_counter() - t)
            ref_results[(mode, str(path), max_tiles)] = flow.run_metavoter(pv) if mode == "metavoter" else flow.score(pv)
        return fn

    # stage timers: the shared fp32 modules serve both humanaes_fp32 and the reference
    for model in (model32, modelbf):
        timer.wrap(model.vision_model, "forward", "vision encoder")
        timer.wrap(model.language_model.model, "forward", "LLM body")
        timer.wrap(model.language_model.lm_head, "forward", "vocabulary head")
    timer.wrap(humanaes_api, "load_image", "decode")
    for scorer in (ours32, oursbf):
        timer.wrap(scorer, "prepare", "tiles + normalise")

    fns = {
        "reference_fast": ref_call("fast", photo, 12),
        "reference_metavoter": ref_call("metavoter", photo, 12),
        "humanaes_fp32_fast": ours_call(ours32, "humanaes_fp32", "fast", photo, 12),
        "humanaes_fp32_metavoter": ours_call(ours32, "humanaes_fp32", "metavoter", photo, 12),
        "humanaes_bf16_fast": ours_call(oursbf, "humanaes_bf16", "fast", photo, 12),
        "humanaes_bf16_metavoter": ours_call(oursbf, "humanaes_bf16", "metavoter", photo, 12),
    }
    log(f"parity check + warm-up on {photo.name} ({imgs['sizes'][str(photo)][0]}x{imgs['sizes'][str(photo)][1]}, 1 tile) ...")
    for fn in fns.values():  # warm-up round == parity round
        fn()
    timer.reset()
    parity = _parity(ours_results, ref_results, photo, 12)
    if s.reference_sweep or args.quick:
        # multi-tile parity too (costly on the 1B in fp32: only with --reference-sweep)
        for m in (6,):
            ours_call(ours32, "humanaes_fp32", "fast", imgs["multi"], m)()
            ours_call(ours32, "humanaes_fp32", "metavoter", imgs["multi"], m)()
            ref_call("fast", imgs["multi"], m)()
            ref_call("metavoter", imgs["multi"], m)()
            parity.update(_parity(ours_results, ref_results, imgs["multi"], m))
        timer.reset()
    res["parity"] = parity
    bad = {k: v for k, v in parity.items() if k.endswith("fp32") and v > PARITY_ATOL}
    if bad:
        raise AssertionError(f"humanaes (fp32) and the reference flow disagree beyond {PARITY_ATOL}: {bad}")
    log("  " + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()))

    log(f"latency, batch 1, {s.repeats} repeats (interleaved):")
    st = interleaved(fns, warmup=0, repeats=s.repeats)
    for name, v in st.items():
        log(f"  {name:<26} median {v.median:7.2f} s  spread {v.spread * 100:4.0f}%")
    stages = {name: {**timer.per_run(name, s.repeats), "total": st[name].median} for name in fns}
    res["stages_seconds_per_call"] = stages
    res["latency_one_tile"] = {k: v.to_dict() for k, v in st.items()}
    res["peak_rss_process_bytes"] = peak_rss_bytes()  # both models resident (fp32 + bf16) + reference runs

    res["fast_seconds_per_image"] = compare(
        st["humanaes_bf16_fast"], st["reference_fast"], unit="s/image",
        humanaes_dtype="bfloat16 (library default on CPU for an fp16 checkpoint)", reference_dtype="float32",
        humanaes_fp32=st["humanaes_fp32_fast"].median, speedup_same_dtype=st["reference_fast"].median / st["humanaes_fp32_fast"].median,
        humanaes_fp32_best=st["humanaes_fp32_fast"].min, speedup_same_dtype_best=st["reference_fast"].min / st["humanaes_fp32_fast"].min,
        setting=f"one {imgs['sizes'][str(photo)][0]}x{imgs['sizes'][str(photo)][1]} photo (1 tile), batch 1, end to end from the file",
    )
    res["metavoter_seconds_per_image"] = compare(
        st["humanaes_bf16_metavoter"], st["reference_metavoter"], unit="s/image",
        humanaes_fp32=st["humanaes_fp32_metavoter"].median,
        speedup_same_dtype=st["reference_metavoter"].median / st["humanaes_fp32_metavoter"].median,
        humanaes_fp32_best=st["humanaes_fp32_metavoter"].min,
        speedup_same_dtype_best=st["reference_metavoter"].min / st["humanaes_fp32_metavoter"].min,
    )
    mof = {
        "humanaes": st["humanaes_fp32_metavoter"].median / st["humanaes_fp32_fast"].median,
        "reference": st["reference_metavoter"].median / st["reference_fast"].median,
        "humanaes_bf16": st["humanaes_bf16_metavoter"].median / st["humanaes_bf16_fast"].median,
        "humanaes_best": st["humanaes_fp32_metavoter"].min / st["humanaes_fp32_fast"].min,
        "reference_best": st["reference_metavoter"].min / st["reference_fast"].min,
        "humanaes_bf16_best": st["humanaes_bf16_metavoter"].min / st["humanaes_bf16_fast"].min,
        "humanaes_cpu_time": _cpu(st["humanaes_fp32_metavoter"]) / _cpu(st["humanaes_fp32_fast"]),
        "humanaes_bf16_cpu_time": _cpu(st["humanaes_bf16_metavoter"]) / _cpu(st["humanaes_bf16_fast"]),
        "reference_cpu_time": _cpu(st["reference_metavoter"]) / _cpu(st["reference_fast"]),
        "target_humanaes_max": 1.3,
        "note": "metavoter latency / fast latency, each side against itself; humanaes = fp32 like the reference",
    }
    mof["target_met"] = bool(mof["humanaes"] <= 1.3 and mof["humanaes_bf16"] <= 1.3)
    mof["target_met_best"] = bool(mof["humanaes_best"] <= 1.3 and mof["humanaes_bf16_best"] <= 1.3)
    res["metavoter_over_fast"] = mof

    # -- max_tiles sweep ----------------------------------------------------------------------------
    multi = imgs["multi"]
    log(f"fast mode vs max_tiles on {multi.name} ({imgs['multi_tiles']} tiles), humanaes bf16:")
    sweep: dict[str, Any] = {}
    big = ours_call(oursbf, "humanaes_bf16", "fast", multi, 12)
    big()  # warm-up at the largest shape
    for m in (1, 6, 12):
        fn = _with_peak(ours_call(oursbf, "humanaes_bf16", "fast", multi, m), peaks := [])
        fns_m = {"auto": fn}
        if m == 12:
            # A/B of the library's vision-encoder chunking: the same call with all tiles in one chunk
            fns_m["one_chunk"] = _with_peak(_one_chunk(modelbf, ours_call(oursbf, "humanaes_bf16", "fast", multi, m)), peaks_one := [])
        st_m = interleaved(fns_m, warmup=0, repeats=s.sweep_repeats)
        a = st_m["auto"]
        sweep[str(m)] = {"tiles": imgs["multi_tiles"][m], **a.to_dict(), "peak_rss_delta_bytes": max(peaks),
                         "vision_chunk_tiles": modelbf.vision_chunk_size(imgs["multi_tiles"][m])}
        log(f"  max_tiles {m:>2} ({imgs['multi_tiles'][m]:>2} tiles)  median {a.median:7.2f} s (CPU {a.to_dict()['cpu_median']:.2f} s)"
            f"   peak RSS +{max(peaks) / MIB:.0f} MiB")
        if m == 12:
            b = st_m["one_chunk"]
            res["vision_chunking_ab"] = {
                "image": str(multi), "tiles": imgs["multi_tiles"][m], "dtype": "bfloat16", "mode": "fast",
                "after_auto_chunks": {**a.to_dict(), "chunk_tiles": modelbf.vision_chunk_size(imgs["multi_tiles"][m]), "peak_rss_delta_bytes": max(peaks)},
                "before_one_chunk": {**b.to_dict(), "chunk_tiles": imgs["multi_tiles"][m], "peak_rss_delta_bytes": max(peaks_one)},
            }
            log(f"    before (one chunk of {imgs['multi_tiles'][m]}): median {b.median:7.2f} s (CPU {b.to_dict()['cpu_median']:.2f} s, "
                f"{b.to_dict()['minor_faults_median']:.0f} page faults, peak RSS +{max(peaks_one) / MIB:.0f} MiB) vs after: "
                f"{a.to_dict()['minor_faults_median']:.0f} page faults")
    if s.reference_sweep:
        for m in (6, 12):
            fn = ref_call("fast", multi, m)
            st_r = interleaved({"x": fn}, warmup=0, repeats=1)["x"]
            sweep[f"reference_fp32_{m}"] = {"tiles": imgs["multi_tiles"][m], **st_r.to_dict()}
            log(f"  reference fp32 max_tiles {m}: {st_r.median:.2f} s")
    res["fast_latency_by_max_tiles"] = {"image": str(multi), "dtype": "bfloat16", "batch": 1, "points": sweep}
    timer.reset()

    # -- batched throughput --------------------------------------------------------------------
    batch_paths = imgs["typical"][: s.batch_images]
    log(f"batched throughput, fast mode, {len(batch_paths)} photos, humanaes bf16:")
    batch: dict[str, Any] = {}
    for bs in s.batch_sizes:
        def fn(bs: int = bs) -> None:
            _score_ok(oursbf.score(batch_paths, mode="fast", batch_size=bs))
        fns_b = {"auto": _with_peak(fn, peaks := [])}
        if bs == max(s.batch_sizes):  # A/B of the vision-encoder chunking on a batch of 1-tile photos
            fns_b["one_chunk"] = _with_peak(_one_chunk(modelbf, fn), peaks_one := [])
        sts = interleaved(fns_b, warmup=0, repeats=s.batch_repeats)
        st_b = sts["auto"]
        batch[str(bs)] = {"images_per_s": len(batch_paths) / st_b.median, "seconds_per_image": st_b.median / len(batch_paths),
                          **st_b.to_dict(), "peak_rss_delta_bytes": max(peaks), "vision_chunk_tiles": modelbf.vision_chunk_size(bs)}
        if "one_chunk" in sts:
            b = sts["one_chunk"]
            res["vision_chunking_ab_batch"] = {
                "batch": bs, "tiles": bs, "dtype": "bfloat16", "mode": "fast",
                "after_auto_chunks": {**st_b.to_dict(), "chunk_tiles": modelbf.vision_chunk_size(bs), "peak_rss_delta_bytes": max(peaks)},
                "before_one_chunk": {**b.to_dict(), "chunk_tiles": bs, "peak_rss_delta_bytes": max(peaks_one)},
            }
            log(f"    before (one chunk of {bs} tiles): {len(batch_paths) / b.median:.3f} images/s (CPU {b.to_dict()['cpu_median']:.1f} s per pass, "
                f"peak RSS +{max(peaks_one) / MIB:.0f} MiB)")
        log(f"  batch {bs:>2}: {batch[str(bs)]['images_per_s']:.3f} images/s  ({st_b.median / len(batch_paths):.2f} s/image, spread {st_b.spread * 100:.0f}%)")
    res["batched_throughput"] = {"mode": "fast", "dtype": "bfloat16", "images": len(batch_paths), "by_batch_size": batch}
    timer.restore()

    # -- threads probe -------------------------------------------------------------------------
    if s.threads_probe and (os.cpu_count() or 1) > 1:
        alt = 2 if s.threads == 1 else 1
        fast_bf = ours_call(oursbf, "humanaes_bf16", "fast", photo, 12)

        def with_threads(n: int) -> Callable[[], None]:
            def fn() -> None:
                torch.set_num_threads(n)
                try:
                    fast_bf()
                finally:
                    torch.set_num_threads(s.threads)
            return fn

        st_t = interleaved({str(s.threads): with_threads(s.threads), str(alt): with_threads(alt)}, warmup=0, repeats=2)
        res["threads_probe"] = {k: v.to_dict() for k, v in st_t.items()}
        res["threads_probe"]["loadavg"] = os.getloadavg()
        log(f"  threads probe (bf16 fast, 1 tile): {s.threads} thread(s) {st_t[str(s.threads)].median:.2f} s, {alt} thread(s) {st_t[str(alt)].median:.2f} s, load avg {os.getloadavg()[0]:.1f}")

    # -- summary keys ----------------------------------------------------------------------------
    res["preprocess_images_per_s"] = pre.get("typical", {})
    if "loads" in res:
        L = res["loads"]
        res["load_seconds"] = {
            "humanaes": L["humanaes"]["load_s"]["median"],
            "reference": L["reference"]["load_s"]["median"],
            "speedup": L["reference"]["load_s"]["median"] / L["humanaes"]["load_s"]["median"],
            "humanaes_spread": L["humanaes"]["load_s"]["spread"],
            "reference_spread": L["reference"]["load_s"]["spread"],
            "humanaes_original_layout": L["humanaes_original_layout"]["load_s"]["median"],
            "humanaes_fp32": L["humanaes_fp32"]["load_s"]["median"],
            "humanaes_peak_rss_delta_over_checkpoint": L["humanaes"]["peak_rss_delta_over_checkpoint"],
            "reference_peak_rss_delta_over_checkpoint": L["reference"]["peak_rss_delta_over_checkpoint"],
            "target_rss_over_checkpoint": 1.2,
            "note": "humanaes: humanaes.load(folder) of our fp16 checkpoint -> bf16 on CPU; reference: fp32 model "
                    "construction with random init + load_state_dict of the original-layout fp16 file",
        }
    res["total_seconds"] = time.perf_counter() - t_start
    res["machine"]["loadavg_end"] = os.getloadavg()
    return res


def _cpu(st: Stats) -> float:
    return st.to_dict()["cpu_median"] or float("nan")


def _with_peak(fn: Callable[[], None], peaks: list[int]) -> Callable[[], None]:
    """fn, recording the peak RSS above the RSS at its start (VmHWM reset before each call)."""
    def wrapped() -> None:
        before = rss_bytes()
        reset_peak_rss()
        fn()
        peaks.append(peak_rss_bytes() - before)
    return wrapped


def _one_chunk(model: Any, fn: Callable[[], None]) -> Callable[[], None]:
    """fn with the vision encoder taking all tiles in one call (the behaviour before chunking)."""
    def wrapped() -> None:
        model.vision_chunk_tiles = 1 << 20
        try:
            fn()
        finally:
            model.vision_chunk_tiles = None
    return wrapped


def _parity(ours: dict, ref: dict, path: Path, m: int) -> dict[str, float]:
    out = {}
    tag = f"{path.name[:24]}@{m}"
    for mode in ("fast", "metavoter"):
        r = ref[(mode, str(path), m)]
        for side in ("humanaes_fp32", "humanaes_bf16"):
            key = (side, mode, str(path), m)
            if key in ours:
                out[f"{tag} {mode} {side.split('_')[1]}"] = max_abs_diff(scores_as_dict(ours[key]), scores_as_dict(r))
    return out
