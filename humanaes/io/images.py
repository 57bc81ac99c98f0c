"""Image decoding: any source (path, bytes, file object, PIL image) -> 8-bit RGB PIL image.

`load_image` is the one decoder every model family uses (through `BaseScorer.decode`): EXIF
orientation, alpha, 16-bit and float modes, HEIC/AVIF when pillow-heif is installed, a
per-call decompression-bomb limit, and a clear ImageLoadError naming the item and the cause.
It knows nothing of tiling or any model: a family's `processing` module takes the decoded image.
With `apply_exif=False, alpha="drop"` it follows the official HumanAesExpert code
(Image.open + convert('RGB')).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import warnings
from typing import IO, Any, Literal, Protocol, Union

import numpy as np
from PIL import Image, ImageOps

from humanaes.errors import ConfigError, ImageLoadError
from humanaes.fsutil import NotRegularFileError, open_regular
from humanaes.io.discovery import special_file_kind
from humanaes.options import DEFAULT_MAX_PIXELS  # noqa: F401 - also importable from here, as before

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]
AlphaMode = Literal["white", "drop"]


_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = ("white", "drop")


class DraftTarget(Protocol):
    """What `load_image(draft=...)` asks of a resize target: the smallest (width, height) the
    decoded image may have, given the upright image's size (e.g. a tiling config's grid size)."""

    def draft_size(self, width: int, height: int) -> tuple[int, int]: ...


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def source_name(source: Any, index: int | None = None) -> str:
    """A short human-readable name of an image source, for results and error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)  # type: ignore[return-value]
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
    alpha: AlphaMode = "white",
    draft: tuple[int, int] | DraftTarget | None = None,
) -> Image.Image:
    """Decode `source` (path, bytes, binary file object or PIL image) to an 8-bit RGB PIL image.

    - apply_exif: rotate/flip by the EXIF orientation tag (False = official behaviour).
    - max_pixels: refuse larger images before decoding them (None = no limit).
    - alpha: "white" composites transparent pixels onto white (what is under them is often
      black or garbage, which would skew scores); "drop" = official convert('RGB').
    - draft: JPEG only, off by default. Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying
      at least this (width, height), or at least `draft.draft_size(width, height)` of the upright
      image (a tiling config asks for the grid size it will resize to).
      Much faster for big photos, but pixels (and rarely the grid) differ from the official path.

    Raises ImageLoadError naming the item and the cause (missing file, folder, empty file,
    text or unknown format, truncated or corrupt data, decompression bomb, HEIC without
    pillow-heif, unsupported source type).
    """
    item = name or source_name(source)
    if alpha not in _ALPHA_MODES:
        raise ConfigError(f"alpha must be one of {', '.join(_ALPHA_MODES)}, got {alpha!r}")

    if isinstance(source, Image.Image):
        img, data = source, None
    else:
        data = _read_bytes(source, item, _max_file_bytes(max_pixels))
        img = _open_lazy(data, item, max_pixels)

    try:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise _bomb_error(item, img.width, img.height, max_pixels)
        orientation = _orientation(img) if apply_exif else 1
        if draft is not None and data is not None and img.format == "JPEG":
            _apply_draft(img, draft, orientation)
        img.load()  # the actual decode; truncated/corrupt data fails here
        if orientation != 1:
            img = _exif_transpose(img)
        return to_rgb(img, alpha=alpha)
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(item, f"out of memory decoding a {img.width}x{img.height} image") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise assorted types on bad input data
        raise ImageLoadError(item, f"corrupt or truncated image data ({_describe(exc)})") from None


def to_rgb(img: Image.Image, *, alpha: AlphaMode = "white") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (returns `img` itself if it is RGB already).

    16/32-bit integer and float images are scaled into 0..255, not clipped. Transparency
    (alpha channel, transparent palette entries, tRNS colour key) is composited onto white
    with alpha="white"; alpha="drop" just discards it, like convert('RGB').
    """
    if alpha not in _ALPHA_MODES:
        raise ConfigError(f"alpha must be one of {', '.join(_ALPHA_MODES)}, got {alpha!r}")
    mode = img.mode
    if mode == "RGB" and not (alpha == "white" and "transparency" in img.info):  # tRNS colour key
        return img
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(img).convert("RGB")
    if mode == "La":  # premultiplied LA: Pillow converts it to LA only
        img = img.convert("LA")
    if alpha == "white" and _has_transparency(img):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))  # C-level blend: a*src + (1-a)*white
        return out
    return img.convert("RGB")


def _has_transparency(img: Image.Image) -> bool:
    flag = getattr(img, "has_transparency_data", None)  # Pillow >= 10.1
    if isinstance(flag, bool):
        return flag
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _scale_to_l(img: Image.Image) -> Image.Image:
    """Map a 16/32-bit integer or float single-channel image onto 8-bit grey by scaling."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        # full 16-bit range -> 0..255 with rounding (65535 -> 255, 257 -> 1)
        out = (arr.astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(out.astype(np.uint8), mode="L")
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0  # float images in 0..1
    elif lo >= 0.0 and hi <= 255.0:
        pass  # already 8-bit range
    elif lo >= 0.0 and hi <= 65535.0:
        a = a * (255.0 / 65535.0)  # 16-bit data stored in a 32-bit mode (older Pillow PNG "I")
    else:
        a = (a - lo) * (255.0 / (hi - lo))  # arbitrary range: stretch
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def _read_bytes(source: Any, item: str, max_bytes: int | None = None) -> bytes | memoryview:
    """Whole encoded file in memory: no file handle outlives the call, and we can sniff it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _read_regular_file(os.fspath(source), item, max_bytes)
    if hasattr(source, "read"):
        try:
            data = source.read()
        except Exception as exc:  # noqa: BLE001 - any stream failure is the input's fault
            raise ImageLoadError(item, f"cannot read from the file object ({_describe(exc)})") from None
        if isinstance(data, str):
            raise ImageLoadError(item, "file object is in text mode; open the image with 'rb'")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageLoadError(item, f"file object returned {type(data).__name__}, not bytes")
        return data
    raise ImageLoadError(
        item, f"unsupported source type {type(source).__name__}; pass a path, bytes, a binary file object or a PIL image"
    )


def _max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest file an image within `max_pixels` can be: 8 bytes a pixel (16-bit RGBA, stored
    uncompressed) plus 1 MiB of metadata. A bigger file (a sparse 100 GB "photo") is refused before
    it is read into memory."""
    return None if max_pixels is None else max_pixels * 8 + (1 << 20)


def _read_regular_file(path: str | bytes, item: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file; anything else (FIFO, socket, device, folder, symlink loop) is
    refused with ImageLoadError before it is opened, so reading never blocks on a pipe and a
    device is never touched. A file larger than `max_bytes` is refused before it is read.

    The stat check names what the path is; `fsutil.open_regular` then opens it without blocking
    and checks the opened file again, so a FIFO swapped in between the two cannot block either.
    """
    try:
        _require_regular(os.stat(path).st_mode, item)
        fd = open_regular(path)
    except NotRegularFileError as exc:  # swapped in after the stat check
        _require_regular(exc.st_mode, item)
        raise  # pragma: no cover - st_mode is never a regular file's here
    except OSError as exc:
        raise _unreadable(exc, path, item) from None
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageLoadError(
                item,
                f"file of {size} bytes is larger than any image within the pixel limit can be "
                f"({max_bytes} bytes); not read. Pass a larger max_pixels to allow it",
            )
        try:
            return fh.read()
        except OSError as exc:
            raise ImageLoadError(item, f"cannot read the file ({_describe(exc)})") from None


def _unreadable(exc: OSError, path: str | bytes, item: str) -> ImageLoadError:
    """Why a path could not be opened, in words."""
    if isinstance(exc, FileNotFoundError):
        if os.path.islink(path):
            return ImageLoadError(item, "dangling symlink (its target does not exist)")
        return ImageLoadError(item, "file not found")
    if isinstance(exc, PermissionError):
        return ImageLoadError(item, "permission denied reading the file")
    if exc.errno == errno.ELOOP:
        return ImageLoadError(item, "symlink loop (the link leads back to itself)")
    return ImageLoadError(item, f"cannot read the file ({_describe(exc)})")


def _require_regular(mode: int, item: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise ImageLoadError(item, "is a folder, not an image file")
    raise ImageLoadError(item, f"is a {special_file_kind(mode)}, not a regular file; not opened")


# Serialises the rare temporary lift of Pillow's global bomb limit (see _open_lazy).
_PIL_LIMIT_LOCK = threading.Lock()
_BOMB_SIZE_RE = re.compile(r"\((\d+) pixels\)")


def _open_lazy(data: bytes | memoryview, item: str, max_pixels: int | None) -> Image.Image:
    """Image.open (header only, no decode) with our limit instead of Pillow's global one."""
    try:
        try:
            with warnings.catch_warnings():
                # Pillow warns above its own limit; ours is checked right after, per call.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            found = _BOMB_SIZE_RE.search(str(exc))
            pixels = int(found.group(1)) if found else None
            if max_pixels is not None and (pixels is None or pixels > max_pixels):
                raise ImageLoadError(
                    item,
                    f"{pixels or 'too many'} pixels exceeds the limit of {max_pixels} (possible decompression bomb); "
                    "pass a larger max_pixels to allow it",
                ) from None
            # The caller allows more than Pillow's hard limit: lift Pillow's global only for
            # this header parse (no pixels are decoded here) and restore it at once.
            with _PIL_LIMIT_LOCK:
                saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
                try:
                    return Image.open(io.BytesIO(data))
                finally:
                    Image.MAX_IMAGE_PIXELS = saved
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        pass
    except Exception as exc:  # noqa: BLE001 - plugins raise assorted types on bad headers
        kind = _sniff(bytes(data[:64])) or "image"
        raise ImageLoadError(item, f"corrupt or truncated {kind} header ({_describe(exc)})") from None
    return _open_unidentified(data, item)


def _open_unidentified(data: bytes | memoryview, item: str) -> Image.Image:
    """Pillow did not recognise the data: try HEIF via pillow-heif, else say what it looks like."""
    head = bytes(data[:512])
    kind = _sniff(head)
    if kind in ("HEIF", "AVIF"):
        if _register_heif():
            try:
                return Image.open(io.BytesIO(data))
            except Exception as exc:  # noqa: BLE001
                raise ImageLoadError(item, f"{kind} image that pillow-heif cannot decode ({_describe(exc)})") from None
        if kind == "HEIF":
            raise ImageLoadError(item, "HEIC/HEIF image; install pillow-heif (pip install pillow-heif) to read it")
        raise ImageLoadError(item, "AVIF image, but this Pillow has no AVIF support; upgrade Pillow or install pillow-heif")
    if len(data) == 0:
        raise ImageLoadError(item, "empty file (0 bytes)")
    if kind:
        raise ImageLoadError(item, f"corrupt or truncated {kind} file ({len(data)} bytes)")
    if _looks_like_text(head):
        raise ImageLoadError(item, "not an image: the file looks like text")
    raise ImageLoadError(item, f"not an image format Pillow can read (starts with {head[:8].hex(' ')})")


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _sniff(head: bytes) -> str | None:
    """Name of the container the first bytes announce, or None."""
    if head[4:8] == b"ftyp":  # ISO base media: major brand + compatible brands
        size = int.from_bytes(head[0:4], "big")
        end = min(max(size, 16), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
        if brands & _AVIF_BRANDS:
            return "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF"
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t\f" for ch in text)


_HEIF_LOCK = threading.Lock()
_HEIF_REGISTERED: bool | None = None  # None = not tried yet


def _register_heif() -> bool:
    """Register pillow-heif's opener once, lazily (the import is not free). True if available."""
    global _HEIF_REGISTERED
    with _HEIF_LOCK:
        if _HEIF_REGISTERED is None:
            try:
                import pillow_heif  # type: ignore[import-not-found]

                pillow_heif.register_heif_opener()
                _HEIF_REGISTERED = True
            except Exception:  # noqa: BLE001 - not installed or broken install: report "install"
                _HEIF_REGISTERED = False
        return _HEIF_REGISTERED


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or unreadable: bad EXIF must not lose the image)."""
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001
        return 1
    return value if 1 <= value <= 8 else 1


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)  # a new image; the caller's object is left alone
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
        return img


def _apply_draft(img: Image.Image, draft: tuple[int, int] | DraftTarget, orientation: int) -> None:
    """Ask the JPEG decoder for a reduced-scale decode that stays at least the needed size."""
    swap = orientation in (5, 6, 7, 8)  # sizes are in stored (unrotated) orientation
    if isinstance(draft, tuple):
        need = (int(draft[0]), int(draft[1]))
    else:
        w, h = (img.height, img.width) if swap else img.size  # the target is chosen on the upright image
        need = draft.draft_size(w, h)
    if swap:
        need = (need[1], need[0])
    img.draft("RGB", need)


def _bomb_error(item: str, width: int, height: int, max_pixels: int) -> ImageLoadError:
    return ImageLoadError(
        item,
        f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
        "(possible decompression bomb); pass a larger max_pixels to allow it",
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
