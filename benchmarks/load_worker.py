"""Load a model once (ours or official-style) and report time and memory as one JSON line.

Run as a subprocess by the CPU suite so that every load starts from a fresh process:
    python -m benchmarks.load_worker --kind humanaes --folder DIR [--dtype auto] [--score IMG]

kinds:
  humanaes           humanaes.load(folder) (our format or the original layout, auto-detected):
                     meta-device model, tensors streamed from safetensors and assigned in place
  official-fp32      what the release's remote code does through from_pretrained on CPU: build the
                     full model in float32 with random init, read the fp16 state dict, then
                     load_state_dict (upcast copy into the fp32 parameters)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.timing import MIB, peak_rss_bytes, reset_peak_rss, rss_bytes


def _rss_parts() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                for key in ("RssAnon", "RssFile"):
                    if line.startswith(key + ":"):
                        out[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def load_official_fp32(folder: Path) -> tuple[Any, Any, dict[str, float]]:
    """Official-style load: fp32 model with random init, then load_state_dict from the file."""
    import torch
    from safetensors.torch import load_file

    from humanaes.models.expert.checkpoint import checkpoint_keys, weight_files
    from humanaes.models.expert.convert import config_from_internvl_chat, convert_state_dict
    from humanaes.models.expert.modeling import HumanAesExpertModel
    from humanaes.models.expert.tokenization import load_tokenizer

    times = {}
    t0 = time.perf_counter()
    config = config_from_internvl_chat(json.loads((folder / "config.json").read_text(encoding="utf-8")), name=folder.name)
    files = weight_files(folder)
    keys = checkpoint_keys(files)
    config.heads.regression = any(k.startswith("language_model.lm_regression_head.") for k in keys)
    config.heads.expert = any(k.startswith("language_model.expert_head.") for k in keys)
    for key in keys:  # the expert head's hidden width, as the remote code's config would carry it
        if key.startswith("language_model.expert_head.expert_head2.") and key.endswith(".0.weight"):
            from safetensors import safe_open

            with safe_open(str(files[0]), framework="pt") as f:
                config.heads.expert_hidden = int(f.get_slice(key).get_shape()[0])
    config.tokenizer = str(folder)
    torch.manual_seed(0)
    model = HumanAesExpertModel(config)  # float32, every module randomly initialised
    model.float()
    times["construct_init_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    state: dict[str, Any] = {}
    for file in files:
        state.update(load_file(str(file)))  # fp16 tensors, as stored
    times["read_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = convert_state_dict(lambda: iter(list(state.items())), config, expected)  # key names only
    missing, unexpected = model.load_state_dict(state, strict=False)
    state = {}  # drop the tensors (assigned, not `del`: the lambda above names `state`)
    times["load_state_dict_s"] = time.perf_counter() - t2
    if unexpected or [k for k in missing if not k.startswith("metavoter.")]:
        raise RuntimeError(f"official-style load: missing {missing[:5]} unexpected {unexpected[:5]}")
    tokenizer = load_tokenizer(folder)
    return model.eval(), tokenizer, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=["humanaes", "official-fp32"], required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--score", type=Path, default=None, help="also score this image once (fast mode) after loading")
    parser.add_argument("--max-tiles", type=int, default=12)
    args = parser.parse_args(argv)
    print(json.dumps(run_once(args.kind, args.folder, args.dtype, args.threads, args.score, args.max_tiles)))
    return 0


def run_once(kind: str, folder: Path, dtype: str = "auto", threads: int = 1, score: Path | None = None, max_tiles: int = 12) -> dict[str, Any]:
    import torch

    import humanaes  # noqa: F401  (imports are not part of the load time)
    import humanaes.models.expert.checkpoint  # noqa: F401
    import humanaes.models.expert.modeling  # noqa: F401
    import humanaes.models.expert.scorer  # noqa: F401
    from benchmarks import reference

    torch.set_num_threads(threads)
    result: dict[str, Any] = {"kind": kind, "folder": str(folder), "dtype_requested": dtype, "threads": threads}
    checkpoint_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    result["checkpoint_bytes"] = checkpoint_bytes
    base = rss_bytes()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    if kind.startswith("humanaes"):
        scorer = humanaes.load(folder, device="cpu", dtype=dtype)
        model = scorer.model
        stages: dict[str, float] = {}
    else:
        model, tokenizer, stages = load_official_fp32(folder)
    result["load_s"] = time.perf_counter() - t0
    result["stages"] = stages
    result["model_dtype"] = str(model.dtype).replace("torch.", "")
    result["rss_before_bytes"] = base
    result["peak_rss_load_bytes"] = peak_rss_bytes()
    result["peak_rss_delta_load_bytes"] = result["peak_rss_load_bytes"] - base
    result["peak_rss_delta_over_checkpoint"] = result["peak_rss_delta_load_bytes"] / checkpoint_bytes if checkpoint_bytes else None
    result["rss_after_load_bytes"] = rss_bytes()
    result["rss_after_load_parts"] = _rss_parts()
    result["peak_reset_ok"] = reset
    if score is not None:
        t1 = time.perf_counter()
        if kind.startswith("humanaes"):
            r = scorer.score([score], mode="fast", max_tiles=max_tiles, batch_size=1)[0]
            if r.error:
                raise RuntimeError(r.error)
        else:
            from humanaes.models.expert.scorer import HumanAesScorer

            questions = HumanAesScorer(model, tokenizer)
            flow = reference.OfficialFlow(model, tokenizer, questions.general_question, questions.expert_question)
            flow.score(reference.load_image(score, max_num=max_tiles))
        result["score_s"] = time.perf_counter() - t1
        result["score_image"] = str(score)
        result["score_max_tiles"] = max_tiles
        result["peak_rss_load_and_score_bytes"] = peak_rss_bytes()
    result["peak_rss_mib"] = round(peak_rss_bytes() / MIB, 1)
    return result


if __name__ == "__main__":
    sys.exit(main())
