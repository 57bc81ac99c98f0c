"""BundledScorer: the small model that ships inside the package (humanaes-mini).

The family's other rooms: `config` (MiniConfig, FaceConfig), `modeling` (the networks),
`weights` (checkpoint load/save), `processing` (decoding and preparation).
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from PIL import Image

from humanaes.errors import CheckpointError, HumanAesError
from humanaes.io.images import ImageSource
from humanaes.models.mini.modeling import FaceBranch, HumanAesMini, MiniEnsemble
from humanaes.models.mini.options import MiniOptions
from humanaes.models.mini.processing import MiniPreprocessor, open_for_size, prepare_image, resize_center_crop
from humanaes.models.mini.weights import (
    BUNDLED_NAME,
    META_FILE,
    WEIGHTS_FILE,
    load_mini_model,
    load_model,
    save_bundled,
)
from humanaes.options import ScoreOptions
from humanaes.runtime import resolve_compute_dtype
from humanaes.schema import OVERALL, ScoreResult
from humanaes.scorer import BaseScorer

# Importable from here as before the family was split into config/modeling/weights/processing
# (humanaes.models.mini, the batch runner's data probe, benchmarks and tests use these paths).
__all__ = [
    "BUNDLED_NAME", "META_FILE", "WEIGHTS_FILE", "BundledScorer", "MiniOptions", "MiniPreprocessor", "load_bundled",
    "load_mini_model", "load_model", "open_for_size", "prepare_image", "resize_center_crop", "save_bundled",
]

DESCRIPTION = (
    "humanaes-mini: small CNNs (MobileNetV2 + EfficientNet-Lite0) on the whole picture plus a face branch "
    "(MTCNN-aligned face chip, dlib's face-recognition ResNet, trained MLP head), trained on MEBeauty face photos "
    "(train split) to predict their mean facial-attractiveness rating, mapped to [0, 1]. It is a fast proxy, NOT "
    "HumanAesExpert: it rates facial attractiveness as judged by MEBeauty's raters, not photo "
    "aesthetics, and has no expert (12-dimension) or LM scores. Weights: non-commercial research "
    "use only (MEBeauty licence). Not for decisions about people."
)


# -- scorer ----------------------------------------------------------------------------------


class BundledScorer(BaseScorer):
    """Scores images with humanaes-mini. Modes depend on the heads the checkpoint trained."""

    name = BUNDLED_NAME
    default_mode = "fast"
    options_class = MiniOptions

    def __init__(self, model: HumanAesMini | MiniEnsemble, meta: dict[str, Any] | None = None, *, fast_decode: bool = True):
        self.model = model.eval()
        self.meta = meta or {}
        self.config = model.config
        self.fast_decode = fast_decode
        heads = set(self.config.trained_heads)
        if "regression" not in heads:
            raise CheckpointError("humanaes-mini checkpoint has no trained regression head")
        modes = ["fast"]
        if "expert" in heads:
            modes.append("expert")
        if "metavoter" in heads:
            modes.append("metavoter")
        modes.append("all")
        self.supported_modes = tuple(modes)  # never "annotate": there is no language model
        self.device = next(model.parameters()).device

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def compute_dtype(self) -> torch.dtype:
        members = getattr(self.model, "members", [self.model])
        return members[0].compute_dtype

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            kind="bundled",
            description=DESCRIPTION,
            backbone="+".join(getattr(self.model, "backbones", [self.config.backbone])),
            input_size=self.config.input_size,
            trained_heads=list(self.config.trained_heads),
            tta_flip=self.config.tta_flip,
            crop_fraction=self.config.crop_fraction,
            compute_dtype=str(self.compute_dtype).removeprefix("torch."),
            face_branch=self.face.config.to_dict() if self.face is not None else None,
            training_data=self.meta.get("training", {}).get("data"),
            licence=self.meta.get("licence"),
            val_metrics=self.meta.get("val_metrics"),
        )
        return info

    def preprocessor(self) -> MiniPreprocessor | None:
        """Decode + prepare apart from the CNNs (None when a subclass brings its own hooks)."""
        if not self._hooks_are_from(BundledScorer):
            return None
        return self._preprocessor

    @property
    def _preprocessor(self) -> MiniPreprocessor:
        face = self.face
        detector = face.detector if face is not None else None
        cached = self.__dict__.get("_cached_preprocessor")
        if cached is None or cached.detector is not detector or cached.fast_decode != self.fast_decode:
            cached = MiniPreprocessor(
                input_size=self.config.input_size, crop_fraction=self.config.crop_fraction, fast_decode=self.fast_decode,
                detector=detector,
                chip_size=face.config.chip_size if face is not None else 150,
                zooms=tuple(face.config.zooms) if face is not None else (1.0,),
                min_decode_side=face.config.min_decode_side if face is not None else 0,
            )
            self.__dict__["_cached_preprocessor"] = cached
        return cached

    def decode(self, source: ImageSource, name: str, options: ScoreOptions) -> Image.Image:
        return self._preprocessor.decode(source, name, options)

    @property
    def face(self) -> FaceBranch | None:
        return getattr(self.model, "face", None)

    def prepare(self, image: Image.Image, **options: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(whole-picture input, aligned face chips (one per zoom) or None)."""
        return self._preprocessor.prepare(image, options.get("use_face", True))

    def score_prepared(self, prepared: list[Any], names: list[str], mode: str, **options: Any) -> list[ScoreResult]:
        heads = set(self.config.trained_heads)
        images = torch.stack([whole for whole, _ in prepared]).to(self.device)
        has_face = torch.tensor([chip is not None for _, chip in prepared], device=self.device)
        chips = [chip for _, chip in prepared if chip is not None]
        with torch.inference_mode():
            if self.face is not None:
                out = self.model.predict(
                    images, tta_flip=options.get("tta_flip"), has_face=has_face,
                    chips=torch.stack(chips).to(self.device) if chips else None,
                )
            else:
                out = self.model.predict(images, tta_flip=options.get("tta_flip"))
        regression = out["regression"].float().cpu().tolist()
        branches = (
            {"cnn": out["cnn"].float().cpu().tolist(), "face": out["face"].float().cpu().tolist()} if "face" in out else None
        )
        expert = out["expert"].float().cpu().tolist()
        metavoter = out["metavoter"].float().cpu().tolist()
        want_expert = mode in ("expert", "metavoter", "all") and "expert" in heads
        want_metavoter = mode in ("metavoter", "all") and "metavoter" in heads
        results = []
        for i, name in enumerate(names):
            r = ScoreResult(image=name)
            if mode in ("fast", "metavoter", "all"):
                r.regression_score = regression[i]
            if self.face is not None:  # which branches made the score
                r.extra["face_found"] = bool(has_face[i])
                r.person_found = bool(has_face[i])  # the detector finds faces: no face, no person it can rate
                if branches is not None and has_face[i]:
                    r.extra["whole_image_score"] = branches["cnn"][i]
                    r.extra["face_score"] = branches["face"][i]
            if want_expert:
                r.set_expert(expert[i])
            if want_metavoter:
                r.metavoter_score = metavoter[i]
            if mode == "fast":
                overall = regression[i]
            elif mode == "expert":
                overall = expert[i][OVERALL]
            elif mode == "metavoter":
                overall = metavoter[i]
            else:  # all: the best fusion this checkpoint has
                overall = metavoter[i] if want_metavoter else regression[i]
            results.append(r.finalize(overall))
        return results


def load_bundled(
    device: str = "cpu", *, path: str | os.PathLike | None = None, fast_decode: bool = True,
    dtype: str | torch.dtype | None = "auto",
) -> BundledScorer:
    """The packaged humanaes-mini scorer (or one saved by `save_bundled` in `path`).

    `dtype` is the networks' compute dtype: "auto" = bfloat16 on CPUs with bfloat16 units (2-3x
    faster there; scores differ from float32 by about 0.002 on average), float32 elsewhere;
    "float32" for exact results everywhere."""
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise HumanAesError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    compute_dtype = resolve_compute_dtype(dtype, torch_device)
    start = time.perf_counter()
    model, meta = load_mini_model(path, device=str(torch_device), optimize=True)
    model.set_compute_dtype(compute_dtype)
    scorer = BundledScorer(model, meta, fast_decode=fast_decode)
    scorer.load_seconds = time.perf_counter() - start
    return scorer
