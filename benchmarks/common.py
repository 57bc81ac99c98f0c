"""Helpers shared by the CPU and GPU suites: image selection, stage timers, result checks."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images"
_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def select_images(images_dir: Path | None, cache_dir: Path, n_typical: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Real photos when available (else synthetic ones, said so in the result):

    typical    the first `n_typical` files in name order (mostly 400-600 px squares: 1 tile)
    one_tile   a 500x500 photo (1 tile at any max_tiles, like the reference's 512x512 anchor)
    multi      a photo that costs 1 / 7 / 13 tiles at max_tiles 1 / 6 / 12
    multi_set  every photo that costs more than one tile at max_tiles 12 (at most 24)
    """
    from humanaes.models.expert.processing import TilingConfig

    files: list[Path] = []
    if images_dir is not None and Path(images_dir).is_dir():
        files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in _EXTS)
    source = str(images_dir)
    if len(files) < max(8, n_typical):
        files = synthetic_images(cache_dir / "synthetic", max(8, n_typical))
        source = f"synthetic (no photos in {images_dir})"
        log(f"note: using synthetic images: {source}")
    sizes = {}
    for p in files:
        with Image.open(p) as im:
            sizes[p] = im.size

    def tiles(p: Path, m: int) -> int:
        return TilingConfig(max_tiles=m).num_tiles(*sizes[p])

    one_tile = next((p for p in files if sizes[p] == (500, 500)), None) or next(p for p in files if tiles(p, 12) == 1)
    multi = next((p for p in files if [tiles(p, m) for m in (1, 6, 12)] == [1, 7, 13]), None)
    if multi is None:
        multi = max(files, key=lambda p: tiles(p, 12))
    multi_set = [p for p in files if tiles(p, 12) > 1][:24]
    return {
        "source": source,
        "typical": files[:n_typical],
        "one_tile": one_tile,
        "multi": multi,
        "multi_set": multi_set,
        "sizes": {str(p): sizes[p] for p in {one_tile, multi}},
        "multi_tiles": {m: tiles(multi, m) for m in (1, 6, 12)},
        "typical_tiles": sum(tiles(p, 12) for p in files[:n_typical]),
        "multi_set_tiles": sum(tiles(p, 12) for p in multi_set),
    }


def synthetic_images(folder: Path, n: int) -> list[Path]:
    """Deterministic stand-ins (smooth colour fields + noise, JPEG): n-2 squares, 2 portraits."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = ((599, 768) if i >= n - 2 else (500, 500))
        path = folder / f"synthetic_{i:03d}_{w}x{h}.jpg"
        if not path.exists():
            y, x = np.mgrid[0:h, 0:w]
            base = np.stack([(x * (i + 1)) % 256, (y * 2 + i * 7) % 256, ((x + y) // 2) % 256], -1).astype(np.float32)
            img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(path, quality=90)
        out.append(path)
    return out


class StageTimer:
    """Accumulates wall time of wrapped callables per (side, stage). Wrappers are instance
    attributes (a module's `forward`, a scorer method) and are removed by `restore()`."""

    def __init__(self) -> None:
        self.side = "?"
        self.totals: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._undo: list[tuple[Any, str, bool, Any]] = []
        self.sync: Callable[[], None] | None = None

    def wrap(self, obj: Any, attr: str, stage: str) -> None:
        had_own = attr in getattr(obj, "__dict__", {})
        original = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.sync:
                self.sync()
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.sync:
                    self.sync()
                self.totals[(self.side, stage)] += time.perf_counter() - t0
                self.calls[(self.side, stage)] += 1

        self._undo.append((obj, attr, had_own, original))
        obj.__dict__[attr] = timed  # shadows the class attribute; nn.Module.__call__ finds it

    def add(self, stage: str, seconds: float) -> None:
        self.totals[(self.side, stage)] += seconds
        self.calls[(self.side, stage)] += 1

    def restore(self) -> None:
        for obj, attr, had_own, original in reversed(self._undo):
            if had_own:
                obj.__dict__[attr] = original
            else:
                obj.__dict__.pop(attr, None)
        self._undo.clear()

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()

    def per_run(self, side: str, runs: int) -> dict[str, float]:
        return {stage: t / runs for (s, stage), t in sorted(self.totals.items()) if s == side}


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Largest absolute difference over the score fields both results have."""
    worst = 0.0
    for key in ("lm_score", "regression_score", "metavoter_score"):
        x, y = a.get(key), b.get(key)
        if x is not None and y is not None:
            worst = max(worst, abs(x - y))
    for key in ("level_probs",):
        x, y = a.get(key), b.get(key)
        if x and y:
            worst = max(worst, max(abs(x[k] - y[k]) for k in x))
    x, y = a.get("expert"), b.get("expert")
    if x and y:
        worst = max(worst, max(abs(p - q) for p, q in zip(x, y)))
    return worst


def scores_as_dict(r: Any) -> dict[str, Any]:
    """The comparable scores of a result, ours (expert as a name -> score dict) or the reference
    flow's (expert as a list in DIMENSIONS order)."""
    expert = list(r.expert.values()) if isinstance(r.expert, dict) else r.expert
    return {
        "lm_score": r.lm_score,
        "regression_score": r.regression_score,
        "metavoter_score": r.metavoter_score,
        "level_probs": r.level_probs,
        "expert": expert or None,
    }


def repo_env() -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH: a fresh interpreter
    started with it imports this checkout's humanaes and benchmarks."""
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_json_probe(code: str, args: list[str], what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `code` in a fresh interpreter (in the repository, `repo_env()` unless `env` is given)
    and return the JSON object on its last line of output; exits naming `what` when it fails."""
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env or repo_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def env_threads() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def keeps_torch_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Restore torch's CPU thread count after `fn`: the suites change it for their measurements."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        threads = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper
