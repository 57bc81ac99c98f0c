"""Image decoding and the official InternVL2 dynamic tiling (reference section 5).

(First version: decoding only; the tiling follows.)
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, Any, Union

from PIL import Image, ImageOps

from humanaes.errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, IO[bytes], Image.Image]

# Pillow's own bomb limit (~89 MP warns, 2x errors) is a process-wide global; we check per call.
DEFAULT_MAX_PIXELS = 178_956_970


def source_name(source: Any, index: int | None = None) -> str:
    """A short human-readable name of an image source, for results and error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    if isinstance(name, str) and name:
        return name
    kind = type(source).__name__
    return f"<{kind} #{index}>" if index is not None else f"<{kind}>"


def load_image(
    source: ImageSource,
    *,
    apply_exif: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` (path, bytes, binary file object or PIL image) to an RGB PIL image.

    Raises ImageLoadError naming the item and the cause for missing files, non-images,
    truncated files and decompression bombs.
    """
    item = name or source_name(source)
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            if isinstance(source, (bytes, bytearray)):
                fp: Any = io.BytesIO(source)
            elif isinstance(source, (str, os.PathLike)):
                path = Path(source)
                if not path.exists():
                    raise ImageLoadError(item, "file not found")
                if path.is_dir():
                    raise ImageLoadError(item, "is a folder, not an image file")
                fp = path
            else:
                fp = source
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageLoadError(
                item, f"{img.width}x{img.height} pixels exceeds the limit of {max_pixels} (decompression bomb?)"
            )
        img.load()
        if apply_exif:
            img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(item, f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(item, "not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(item, f"cannot decode image ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB. 16-bit grey is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img).astype("float64")
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = (arr / peak * 255.0).clip(0, 255).astype("uint8")
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")
