"""GPU suite: 1B- and 8B-size models with random weights in bf16 on one CUDA GPU.

    python -m benchmarks.run --suite gpu --json gpu.json

Sized for under 8 minutes on one H100 (a time budget skips what does not fit, and says so).
For each model: a parity check of humanaes against the reference flow (strict, fp32, for the 1B;
bf16 and reported for the 8B), then fast and MetaVoter modes at max_tiles 6 and 12 (7 and 13
tiles per image) over batch sizes 1-64, and the reference flow (one image per call) at batch 1.
Images/s, seconds per batch and peak GPU memory per row. Attention: SDPA, or flash-attention 2
when the `flash_attn` package is importable. Inputs are preprocessed once on the CPU (model time
only); the host-to-device copy of the tiles is inside the timing on both sides.

Without CUDA the suite stops with a clear message; `--device cpu` runs the same code path on the
CPU as a dry run (humanaes-tiny by default), which is what the test suite does.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import reference as R
from benchmarks.common import DEFAULT_IMAGES, keeps_torch_threads, max_abs_diff, scores_as_dict, select_images
from benchmarks.timing import Stats, machine_info


class NoCuda(RuntimeError):
    pass


BATCH_SIZES = (1, 4, 16, 64)
MAX_TILES = (6, 12)
TIME_BUDGET_S = 420.0  # leave room for start-up and model init inside 8 minutes
PARITY_ATOL_FP32 = 2e-3  # GPU fp32 (no TF32), different kernels and summation order
PARITY_ATOL_HALF = 5e-2  # bf16 on both sides, random weights


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def build_random(preset: str, device: torch.device, dtype: torch.dtype, attn: str, seed: int = 0) -> Any:
    """Random-init model built directly on the device in `dtype` (an 8B never touches host RAM)."""
    from humanaes.models.expert.modeling import HumanAesExpertModel
    from humanaes.models.registry import preset_config

    config = preset_config(preset)
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = HumanAesExpertModel(config, attn_implementation=attn)
    finally:
        torch.set_default_dtype(previous)
    model.to_inference_dtype(dtype)
    return model.to(device).eval()


@keeps_torch_threads
def run(args: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    from humanaes.io.images import load_image
    from humanaes.models.expert.modeling import choose_attn_implementation
    from humanaes.models.expert.scorer import HumanAesScorer
    from humanaes.models.expert.tokenization import load_tokenizer

    device = torch.device(args.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NoCuda(
            "the gpu suite needs a CUDA GPU, but torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); run `python -m benchmarks.run --suite cpu`, "
            "or add `--device cpu` for a dry run of the GPU suite's code path"
        )
    dry = device.type != "cuda"
    quick = bool(args.quick) or dry
    t_start = time.perf_counter()
    presets = [args.preset] if args.preset else (["humanaes-tiny"] if quick else ["humanaes-1b", "humanaes-8b"])
    batch_sizes = (1, 2) if quick else BATCH_SIZES
    budget = float(os.environ.get("HUMANAES_BENCH_GPU_BUDGET_S", TIME_BUDGET_S))
    dtype = torch.bfloat16
    attn = choose_attn_implementation("auto", device, dtype)
    if dry:
        torch.set_num_threads(args.threads or 1)

    def sync() -> None:
        if not dry:
            torch.cuda.synchronize(device)

    info = machine_info()
    res: dict[str, Any] = {"suite": "gpu", "quick": quick, "dry_run_on_cpu": dry, "machine": info, "device": str(device),
                           "dtype": "bfloat16", "attn_implementation": attn, "batch_sizes": list(batch_sizes),
                           "max_tiles": list(MAX_TILES), "time_budget_s": budget, "models": {}}
    log(f"device {device} ({info.get('gpu', 'cpu dry run')}), attention {attn}, torch {info['torch']}")

    imgs = select_images(Path(args.images) if args.images else DEFAULT_IMAGES, Path(args.cache_dir), 8, log)
    photo = imgs["multi"]
    res["image"] = {"path": str(photo), "tiles": {str(m): imgs["multi_tiles"][m] for m in MAX_TILES},
                    "note": "every image of a batch is this photo (same tile count); model time only"}
    decoded = load_image(photo)

    for preset in presets:
        block: dict[str, Any] = {"rows": []}
        res["models"][preset] = block
        if time.perf_counter() - t_start > budget:
            block["skipped"] = "time budget"
            continue
        t0 = time.perf_counter()
        tokenizer = None
        # -- parity: strict in fp32 for small models, bf16 (reported) for the 8B ----------------
        strict = "8b" not in preset
        if strict:
            model = build_random(preset, device, torch.float32, "sdpa")
            tokenizer = load_tokenizer(model.config.tokenizer)
            block["parity"] = _parity(model, tokenizer, decoded, strict=True, log=log)
            del model
            _free(device)
        model = build_random(preset, device, dtype, attn)
        tokenizer = tokenizer or load_tokenizer(model.config.tokenizer)
        scorer = HumanAesScorer(model, tokenizer)
        flow = R.OfficialFlow(model, tokenizer, scorer.general_question, scorer.expert_question)
        block["params"] = sum(p.numel() for p in model.parameters())
        block["init_s"] = time.perf_counter() - t0
        if not strict:
            block["parity"] = _parity(model, tokenizer, decoded, strict=False, log=log)
        log(f"{preset}: {block['params'] / 1e9:.2f} B parameters, built in {block['init_s']:.1f} s")

        for m in MAX_TILES:
            pv = scorer.prepare(decoded, max_tiles=m)
            for mode in ("fast", "metavoter"):
                for bs in batch_sizes:
                    row = {"side": "humanaes", "mode": mode, "max_tiles": m, "tiles": int(pv.shape[0]), "batch": bs}
                    if time.perf_counter() - t_start > budget:
                        row["note"] = "skipped (time budget)"
                        block["rows"].append(row)
                        continue
                    prepared, names = [pv] * bs, [f"img{i}" for i in range(bs)]
                    row.update(_time(lambda: scorer.score_prepared(prepared, names, mode), device, sync, bs, quick))
                    block["rows"].append(row)
                    log(f"  {preset} humanaes {mode:<9} max_tiles {m:>2} batch {bs:>2}: " + _describe(row))
                    if row.get("note") == "OOM":
                        break  # larger batches will not fit either
            # reference flow: one image per call, as the release
            for mode in ("fast", "metavoter"):
                row = {"side": "reference", "mode": mode, "max_tiles": m, "tiles": int(pv.shape[0]), "batch": 1}
                if time.perf_counter() - t_start > budget:
                    row["note"] = "skipped (time budget)"
                else:
                    fn = (lambda: flow.score(pv)) if mode == "fast" else (lambda: flow.run_metavoter(pv))
                    row.update(_time(fn, device, sync, 1, quick))
                    log(f"  {preset} reference {mode:<9} max_tiles {m:>2} batch  1: " + _describe(row))
                block["rows"].append(row)
        scorer = flow = model = None  # drop the references before freeing device memory
        _free(device)

    # -- summary keys (same names as the cpu suite) ------------------------------------------------
    res["summary"] = _summary(res)
    for key in ("fast_seconds_per_image", "metavoter_over_fast"):
        if key in res["summary"]:
            res[key] = res["summary"][key]
    res["total_seconds"] = time.perf_counter() - t_start
    return res


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time(fn: Callable[[], Any], device: torch.device, sync: Callable[[], None], bs: int, quick: bool = False) -> dict[str, Any]:
    cuda = device.type == "cuda"
    repeats = 1 if quick else (3 if bs < 16 else 2)
    st = Stats()
    oom = False
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        fn()  # warm-up (kernel selection, allocator)
        sync()
        for _ in range(repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            st.values.append(time.perf_counter() - t)
    except Exception as exc:  # noqa: BLE001
        if not _is_oom(exc):
            raise
        oom = True  # freed below, once the exception (and the tensors its frames hold) is gone
    if oom:
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
        _free(device)
        return {"note": "OOM", "peak_gpu_bytes": peak}
    out = {"median_s": st.median, "images_per_s": bs / st.median, "s_per_image": st.median / bs, "runs": st.to_dict()}
    if cuda:
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def _describe(row: dict[str, Any]) -> str:
    if "median_s" not in row:
        return row.get("note", "")
    text = f"{row['images_per_s']:8.2f} images/s  {row['median_s']:.3f} s/batch"
    if row.get("peak_gpu_bytes"):
        text += f"  peak {row['peak_gpu_bytes'] / 1024**3:.1f} GiB"
    return text


def _parity(model: Any, tokenizer: Any, decoded: Any, *, strict: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from humanaes.models.expert.scorer import HumanAesScorer

    scorer = HumanAesScorer(model, tokenizer)
    flow = R.OfficialFlow(model, tokenizer, scorer.general_question, scorer.expert_question)
    pv = scorer.prepare(decoded, max_tiles=6)
    ours = {mode: scorer.score_prepared([pv], ["p"], mode)[0] for mode in ("fast", "metavoter")}
    ref = {"fast": flow.score(pv), "metavoter": flow.run_metavoter(pv)}
    diffs = {mode: max_abs_diff(scores_as_dict(ours[mode]), scores_as_dict(ref[mode])) for mode in ours}
    tol = PARITY_ATOL_FP32 if strict else PARITY_ATOL_HALF
    out = {"dtype": str(model.dtype).replace("torch.", ""), "max_abs_diff": diffs, "atol": tol, "ok": all(d <= tol for d in diffs.values())}
    log(f"  parity ({out['dtype']}): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + f" (atol {tol})")
    if strict and not out["ok"]:
        raise AssertionError(f"humanaes and the reference flow disagree beyond {tol}: {diffs}")
    if not out["ok"]:
        log(f"  WARNING: {out['dtype']} parity beyond {tol}; timings are still reported")
    return out


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for preset, block in res["models"].items():
        rows = block.get("rows", [])

        def find(side: str, mode: str, m: int, bs: int) -> dict[str, Any] | None:
            for r in rows:
                if (r["side"], r["mode"], r["max_tiles"], r["batch"]) == (side, mode, m, bs) and "median_s" in r:
                    return r
            return None

        s: dict[str, Any] = {}
        for m in MAX_TILES:
            of, om = find("humanaes", "fast", m, 1), find("humanaes", "metavoter", m, 1)
            rf, rm = find("reference", "fast", m, 1), find("reference", "metavoter", m, 1)
            best = max((r for r in rows if r["side"] == "humanaes" and r["mode"] == "fast" and r["max_tiles"] == m and "median_s" in r),
                       key=lambda r: r["images_per_s"], default=None)
            if of and rf:
                s[f"fast_seconds_per_image_max{m}"] = {"humanaes": of["s_per_image"], "reference": rf["s_per_image"],
                                                        "speedup": rf["s_per_image"] / of["s_per_image"], "batch": 1}
            if of and om and rf and rm:
                s[f"metavoter_over_fast_max{m}"] = {"humanaes": om["median_s"] / of["median_s"], "reference": rm["median_s"] / rf["median_s"]}
            if best and rf:
                s[f"best_fast_images_per_s_max{m}"] = {"humanaes": best["images_per_s"], "reference": 1 / rf["s_per_image"],
                                                        "humanaes_batch": best["batch"], "speedup": best["images_per_s"] * rf["s_per_image"]}
        out[preset] = s
    first = next(iter(out.values()), {})
    if "fast_seconds_per_image_max12" in first:
        out["fast_seconds_per_image"] = {**first["fast_seconds_per_image_max12"], "model": next(iter(out)), "max_tiles": 12}
    if "metavoter_over_fast_max12" in first:
        out["metavoter_over_fast"] = {**first["metavoter_over_fast_max12"], "model": next(iter(out)), "max_tiles": 12}
    return out
