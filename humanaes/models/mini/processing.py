"""humanaes-mini's preprocessing: decoding for size, the resized centre crop, the face chips.

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

import io
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from humanaes.io.images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from humanaes.models.mini.face import FaceDetector, face_chips
from humanaes.options import ScoreOptions
from humanaes.scorer import Preprocessor


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
        return super().decode(source, name, options)

    def prepare(self, image: Image.Image, use_face: bool | None = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        whole = prepare_image(image, self.input_size, self.crop_fraction)
        if self.detector is None or use_face is False:
            return whole, None
        with torch.inference_mode():
            return whole, face_chips(image, self.detector, self.chip_size, self.zooms)

    def __call__(self, source: ImageSource, name: str, options: ScoreOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.prepare(self.decode(source, name, options), getattr(options, "use_face", True))
