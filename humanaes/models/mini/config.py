"""Configuration of humanaes-mini: the whole-picture CNNs (`MiniConfig`) and the face branch
(`FaceConfig`), each stored as plain data in the checkpoint's JSON (`humanaes-mini.json`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from humanaes.config_keys import check_keys
from humanaes.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TensorFlow) convention: (x - 127) / 128 on 0-255 pixels.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3
BACKBONE_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "mobilenet_v2": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (TF_LITE_MEAN, TF_LITE_STD),
}

#: The heads a humanaes-mini checkpoint can have trained (`MiniConfig.trained_heads`).
MINI_TRAINABLE_HEADS: tuple[str, ...] = ("regression", "expert", "metavoter")


@dataclass
class MiniConfig:
    """Architecture and preprocessing of a humanaes-mini checkpoint (stored in its JSON)."""

    backbone: str = "mobilenet_v2"
    input_size: int = 224
    feature_dim: int = 1280
    dropout: float = 0.2
    expert_hidden: int = 16
    metavoter_hidden: int = 16
    # input normalisation; None = the backbone's pretraining convention (BACKBONE_NORMALIZATION)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # Heads whose weights were trained; only these may produce scores. The MetaVoter counts as
    # fitted exactly when it is listed here (the checkpoint stores no flag of its own).
    trained_heads: list[str] = field(default_factory=lambda: ["regression"])
    # Average the prediction over the image and its mirror image at inference.
    tta_flip: bool = False
    # Preprocessing keeps the central square of this fraction of the shorter side (1.0 = the
    # whole central square; 0.85 zooms in slightly on the subject).
    crop_fraction: float = 1.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MiniConfig":
        check_keys(cls, data, "humanaes-mini config")
        values = dict(data)
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["mean"] = None if self.mean is None else list(self.mean)
        data["std"] = None if self.std is None else list(self.std)
        return data

    def validate(self) -> None:
        if self.backbone not in BACKBONE_NORMALIZATION:
            raise ConfigError(
                f"backbone {self.backbone!r} is not supported; use one of: {', '.join(BACKBONE_NORMALIZATION)}"
            )
        if self.mean is None or self.std is None:
            mean, std = BACKBONE_NORMALIZATION[self.backbone]
            self.mean = self.mean or mean
            self.std = self.std or std
        if self.input_size < 32 or self.input_size % 32:
            raise ConfigError(f"input_size must be a multiple of 32 and at least 32, got {self.input_size}")
        if not 0.5 <= float(self.crop_fraction) <= 1.0:
            raise ConfigError(f"crop_fraction must be in [0.5, 1.0], got {self.crop_fraction!r}")
        bad = [h for h in self.trained_heads if h not in MINI_TRAINABLE_HEADS]
        if bad:
            raise ConfigError(f"unknown head {bad[0]!r} in trained_heads; valid heads: {', '.join(MINI_TRAINABLE_HEADS)}")
        if "metavoter" in self.trained_heads and not {"regression", "expert"} <= set(self.trained_heads):
            raise ConfigError("a trained MetaVoter needs trained regression and expert heads")


@dataclass
class FaceConfig:
    """The face branch of humanaes-mini: MTCNN landmarks -> aligned chip -> dlib's face ResNet
    (frozen) -> pooled block features -> a small MLP regression head."""

    chip_size: int = 150  # the face network's input (fixed by its weights)
    hidden: int = 64
    dropout: float = 0.2
    tta_flip: bool = True  # average the pooled features of the chip and its mirror image
    # Also feed the face chip's last 2x2 block map (where things are in the face), not only
    # global averages.
    last_map: bool = False
    # > 0: a second chip, cut with the landmarks shrunk this many times about the centre (2.0:
    # head, hair and shoulders), adds its pooled block features. 0: the face chip only.
    context_zoom: float = 0.0
    weight: float = 0.5  # share of the face score in `overall` when a face is found
    detect_size: int = 120  # the detector runs on a copy with this shorter side
    min_face_fraction: float = 0.25  # smallest face searched for, x the shorter side (portraits)
    # JPEGs are decoded reduced (Image.draft) only down to this shorter side, so that a face
    # filling half the picture still gives the 150-pixel chip real detail
    min_decode_side: int = 384

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FaceConfig":
        check_keys(cls, data, "face config")
        cfg = cls(**dict(data))
        if not 0.0 <= cfg.weight <= 1.0:
            raise ConfigError(f"face weight must be in [0, 1], got {cfg.weight!r}")
        if cfg.context_zoom and cfg.context_zoom < 1.0:
            raise ConfigError(f"face context_zoom must be 0 (off) or >= 1, got {cfg.context_zoom!r}")
        return cfg

    @property
    def zooms(self) -> tuple[float, ...]:
        """The chips cut per face (see `humanaes.models.mini.face.chip_template`)."""
        return (1.0, float(self.context_zoom)) if self.context_zoom else (1.0,)

    @property
    def feature_dim(self) -> int:
        from humanaes.models.mini.facenet import LAST_MAP_DIM, POOLED_LEVELS_DIM

        return POOLED_LEVELS_DIM * len(self.zooms) + (LAST_MAP_DIM if self.last_map else 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
