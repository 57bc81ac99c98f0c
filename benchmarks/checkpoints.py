"""Random-init checkpoints on disk for the load benchmarks (cached between runs)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

CACHE_VERSION = 1
DEFAULT_CACHE = Path("/tmp/humanaes-bench-cache")


def ensure_checkpoints(preset: str, cache_dir: Path = DEFAULT_CACHE, seed: int = 0, log=print) -> dict[str, Path]:
    """A random-init `preset` model saved in fp16 (like the release) twice: our format and the
    original InternVL2 layout. Built once, reused while the cache folder exists."""
    from benchmarks.original_layout import save_original
    from humanaes.models.expert.checkpoint import save_humanaes
    from humanaes.models.registry import create_model

    root = Path(cache_dir) / f"{preset}-seed{seed}-v{CACHE_VERSION}"
    ours, original = root / "humanaes", root / "original"
    marker = root / "complete.json"
    if marker.exists() and (ours / "config.json").exists() and (original / "config.json").exists():
        return {"humanaes": ours, "original": original, "root": root, "built": False}
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    log(f"building a random-init {preset} checkpoint in {root} (once) ...")
    model = create_model(preset, seed=seed)
    model.half()  # fp16 on disk, heads included, like the release
    save_humanaes(model, ours)
    save_original(model, original, dtype=torch.float16)
    del model
    marker.write_text(json.dumps({"preset": preset, "seed": seed, "seconds": time.perf_counter() - t0}) + "\n")
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return {"humanaes": ours, "original": original, "root": root, "built": True}
