"""BundledScorer: the small model that ships inside the package (humanaes-mini).

Preprocessing: the central square of `crop_fraction` x the shorter side is resized with Pillow
to the model's input size (one `Image.resize` call with a crop box, bilinear with Pillow's
antialiasing), then fed as uint8 RGB.

Fast JPEG decode: when a JPEG's shorter side is at least twice the input size, the decoder is
asked for a reduced image with `Image.draft` (DCT-domain scaling by 1/2, 1/4 or 1/8, never below
the input size) before any pixel is decoded; a 1200x900 photo is then decoded at 300x225 for a
224-pixel model, several times faster than a full decode. The training and validation images
went through the same path, so this is the model's reference preprocessing (`fast_decode=False`
decodes at full size instead; scores differ slightly).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from humanaes.scorer import BaseScorer
from humanaes.models.mini.face import FaceDetector, face_chips
from humanaes.models.mini.modeling import FaceBranch, FaceConfig, HumanAesMini, MiniConfig, MiniEnsemble
from humanaes.errors import CheckpointError, HumanAesError, ModelNotFoundError
from humanaes.options import ScoreOptions, option
from humanaes.io.images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from humanaes.scorer import Preprocessor
from humanaes.runtime import resolve_compute_dtype
from humanaes.schema import OVERALL, ScoreResult

BUNDLED_NAME = "humanaes-mini"
WEIGHTS_FILE = f"{BUNDLED_NAME}.safetensors"
META_FILE = f"{BUNDLED_NAME}.json"
FORMAT = "humanaes-mini"
FORMAT_VERSION = 2  # 2: optional face branch, weights may be stored in float16

DESCRIPTION = (
    "humanaes-mini: small CNNs (MobileNetV2 + EfficientNet-Lite0) on the whole picture plus a face branch "
    "(MTCNN-aligned face chip, dlib's face-recognition ResNet, trained MLP head), trained on MEBeauty face photos "
    "(train split) to predict their mean facial-attractiveness rating, mapped to [0, 1]. It is a fast proxy, NOT "
    "HumanAesExpert: it rates facial attractiveness as judged by MEBeauty's raters, not photo "
    "aesthetics, and has no expert (12-dimension) or LM scores. Weights: non-commercial research "
    "use only (MEBeauty licence). Not for decisions about people."
)


# -- preprocessing ---------------------------------------------------------------------------


def open_for_size(
    source: ImageSource, size: int, crop_fraction: float = 1.0, min_side: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> ImageSource:
    """Open `source` lazily with a JPEG draft request when it is at least 2x `size`
    (after the crop: the kept square, `crop_fraction` x the shorter side, stays >= `size`) and
    at least 2x `min_side` (the face branch needs detail: its chips are cut from this image).

    Returns an unloaded PIL image configured to decode reduced, or `source` itself when the fast
    path does not apply or anything goes wrong (then `load_image` reports the error properly).
    """
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (bytes, bytearray)):
            fp: Any = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            if not os.path.isfile(source):
                return source
            fp = source
        else:
            return source  # file objects: keep their position untouched
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
        need = max(math.ceil(size / crop_fraction), min_side)
        too_big = max_pixels is not None and img.width * img.height > max_pixels  # load_image refuses it
        if img.format != "JPEG" or too_big or min(img.size) < 2 * need:
            img.close()
            return source
        img.draft("RGB", (need, need))
        return img
    except Exception:  # noqa: BLE001 - fall back to the normal decoder and its error messages
        return source


def resize_center_crop(image: Image.Image, size: int, crop_fraction: float = 1.0) -> Image.Image:
    """The central square of `crop_fraction` x the shorter side -> `size` x `size`, in one resize."""
    w, h = image.size
    side = min(w, h) * crop_fraction
    left, top = (w - side) / 2.0, (h - side) / 2.0
    return image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def prepare_image(image: Image.Image, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    return image_to_tensor(resize_center_crop(image, size, crop_fraction))


def load_prepared(path: ImageSource, size: int, fast_decode: bool = True, crop_fraction: float = 1.0) -> torch.Tensor:
    """Decode + preprocess exactly as BundledScorer does (used to build training caches)."""
    source = open_for_size(path, size, crop_fraction) if fast_decode else path
    return prepare_image(load_image(source, name=str(path)), size, crop_fraction)


@dataclass(frozen=True)
class MiniPreprocessor(Preprocessor):
    """humanaes-mini's decoding and preparation: the fast JPEG decode, the resized centre crop
    and, with a face branch, the MTCNN detector (about 2 MB, shared with the model in process)
    and the aligned face chips. Returns (whole-picture uint8 input, face chips or None)."""

    input_size: int
    crop_fraction: float = 1.0
    fast_decode: bool = True
    detector: FaceDetector | None = None
    chip_size: int = 150
    zooms: tuple[float, ...] = (1.0,)
    min_decode_side: int = 0

    def decode(self, source: ImageSource, name: str, options: ScoreOptions) -> Image.Image:
        # File paths / bytes go through a lazily opened, draft-configured image so that JPEGs
        # decode at reduced size; names (and error messages) are unchanged.
        if self.fast_decode:
            source = open_for_size(source, self.input_size, self.crop_fraction, self.min_decode_side,
                                   max_pixels=options.max_pixels)
        return load_image(source, apply_exif=options.apply_exif, max_pixels=options.max_pixels, name=name)

    def prepare(self, image: Image.Image, use_face: bool | None = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        whole = prepare_image(image, self.input_size, self.crop_fraction)
        if self.detector is None or use_face is False:
            return whole, None
        with torch.inference_mode():
            return whole, face_chips(image, self.detector, self.chip_size, self.zooms)

    def __call__(self, source: ImageSource, name: str, options: ScoreOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.prepare(self.decode(source, name, options), getattr(options, "use_face", True))


# -- weights ---------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundled(
    model: HumanAesMini | MiniEnsemble, directory: str | os.PathLike, meta: dict[str, Any] | None = None,
    *, storage_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `<dir>/humanaes-mini.safetensors` and `<dir>/humanaes-mini.json` (atomically).

    A single model's JSON has `config`; an ensemble's has `members` (one config each, weights
    under `members.<i>.`), `tta_flip` and, with a face branch, `face` (weights under `face.`).
    `storage_dtype=torch.float16` halves the file (the package's size budget); loading casts
    back to float32, and the reported metrics are measured on the stored weights."""
    from safetensors.torch import save_file

    if model.inference_optimized:
        raise CheckpointError("cannot save a humanaes-mini model after optimize_for_inference(); save the original")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_name(weights.name + f".tmp-{os.getpid()}")
    state = {
        k: (v.detach().to(storage_dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    os.replace(tmp, weights)
    data: dict[str, Any] = {"name": BUNDLED_NAME, "format": FORMAT, "format_version": FORMAT_VERSION}
    if isinstance(model, MiniEnsemble):
        data["members"] = [m.config.to_dict() for m in model.members]
        data["tta_flip"] = model.config.tta_flip
        data["crop_fraction"] = model.config.crop_fraction
        if model.face is not None:
            data["face"] = model.face.config.to_dict()
    else:
        data["config"] = model.config.to_dict()
    data["weights_dtype"] = str(storage_dtype).removeprefix("torch.")
    data["weights_sha256"] = _sha256(weights)
    data.update(meta or {})
    meta_path = directory / META_FILE
    tmp_meta = meta_path.with_name(meta_path.name + f".tmp-{os.getpid()}")
    tmp_meta.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    return weights


def load_model(
    directory: str | os.PathLike | None = None, device: str = "cpu", *, optimize: bool = False
) -> tuple[HumanAesMini | MiniEnsemble, dict[str, Any]]:
    """Load a humanaes-mini model (the packaged one when `directory` is None); `optimize`
    folds BatchNorm and uses channels-last (inference only)."""
    from humanaes.safetensors_io import load_safetensors

    with resources.as_file(resources.files("humanaes.models.mini")) as pkg_dir:
        base = Path(directory) if directory is not None else Path(pkg_dir)
        weights, meta_path = base / WEIGHTS_FILE, base / META_FILE
        if not weights.is_file() or not meta_path.is_file():
            raise ModelNotFoundError(
                f"{base} has no {WEIGHTS_FILE} + {META_FILE}; reinstall humanaes or train them with recipes/train_bundled.py"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); reinstall humanaes") from None
        if meta.get("format") != FORMAT or int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise CheckpointError(
                f"{meta_path} is format {meta.get('format')!r} v{meta.get('format_version')}, "
                f"this humanaes reads {FORMAT!r} up to v{FORMAT_VERSION}; upgrade humanaes"
            )
        expected = meta.get("weights_sha256")
        if expected and _sha256(weights) != expected:
            raise CheckpointError(f"{weights} does not match the checksum in {META_FILE} (corrupt file?); reinstall humanaes")
        model: HumanAesMini | MiniEnsemble
        if "members" in meta:
            configs = [MiniConfig.from_dict(c) for c in meta["members"]]
            model = MiniEnsemble(
                configs, tta_flip=bool(meta.get("tta_flip", False)), crop_fraction=meta.get("crop_fraction")
            )
            if meta.get("face") is not None:
                model.attach_face(FaceBranch(FaceConfig.from_dict(meta["face"])))
        else:
            model = HumanAesMini(MiniConfig.from_dict(meta["config"]))
        state = load_safetensors(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit humanaes-mini (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    model.eval().to(device)
    if optimize:
        model.optimize_for_inference()
    return model, meta


# -- scorer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiniOptions(ScoreOptions):
    """Options of humanaes-mini."""

    use_face: bool = option(True, "Use the face branch when a face is found (false: whole-picture CNNs only).")
    tta_flip: bool | None = option(None, "Also score the mirrored picture and average (null: as the checkpoint was exported).")


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
        if type(self).prepare is not BundledScorer.prepare or type(self).decode is not BundledScorer.decode:
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
    model, meta = load_model(path, device=str(torch_device), optimize=True)
    model.set_compute_dtype(compute_dtype)
    scorer = BundledScorer(model, meta, fast_decode=fast_decode)
    scorer.load_seconds = time.perf_counter() - start
    return scorer
