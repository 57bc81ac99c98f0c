"""Image decoding and the official InternVL2 dynamic tiling (reference section 5).

Pipeline: `load_image` (any source -> 8-bit RGB PIL image) -> `tile_image` (uint8 tiles
[N, 3, 448, 448]) -> `normalize_tiles` (ImageNet-normalised float tensor). `preprocess_image`
chains the last two. With `apply_exif=False, alpha="drop"` decoding follows the official
HumanAesExpert code (Image.open + convert('RGB')); the tiles and normalised values are bit-exact
against the official preprocessing (checked against the fixtures in tests/test_preprocessing.py).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass
from typing import IO, Any, Literal, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from humanaes.errors import ConfigError, ImageLoadError
from humanaes.io.discovery import special_file_kind

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image]
AlphaMode = Literal["white", "drop"]

# Our own per-call bomb limit (the same number as Pillow's hard limit: 2 x MAX_IMAGE_PIXELS).
# Pillow's limit is a process-wide global, so we never set it; see `_open_lazy` for how a larger
# `max_pixels` is honoured.
DEFAULT_MAX_PIXELS = 178_956_970

TILE_SIZE = 448
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)

_ORIENTATION_TAG = 0x0112
_ALPHA_MODES = ("white", "drop")


# --------------------------------------------------------------------------------------------
# Tiling configuration and grid choice
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilingConfig:
    """How an image is cut into tiles (HumanAesExpert: 1..12 tiles of 448 px plus a thumbnail)."""

    max_tiles: int = 12
    min_tiles: int = 1
    tile_size: int = TILE_SIZE
    use_thumbnail: bool = True

    def __post_init__(self) -> None:
        _check_tiling(self.min_tiles, self.max_tiles, self.tile_size)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(cols, rows) chosen for an image of this size."""
        return find_grid(width, height, min_tiles=self.min_tiles, max_tiles=self.max_tiles, tile_size=self.tile_size)

    def num_tiles(self, width: int, height: int) -> int:
        """Tiles the image will cost (grid tiles + thumbnail), without resizing anything."""
        cols, rows = self.grid(width, height)
        n = cols * rows
        return n + 1 if (self.use_thumbnail and n > 1) else n


def _check_tiling(min_tiles: int, max_tiles: int, tile_size: int) -> None:
    if not (isinstance(min_tiles, int) and isinstance(max_tiles, int) and 1 <= min_tiles <= max_tiles):
        raise ConfigError(f"tiling needs 1 <= min_tiles <= max_tiles, got min_tiles={min_tiles!r}, max_tiles={max_tiles!r}")
    if not (isinstance(tile_size, int) and tile_size >= 1):
        raise ConfigError(f"tile_size must be a positive integer, got {tile_size!r}")


def _candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (cols, rows) with min <= cols*rows <= max, in increasing tile count.

    Why the secondary key: the official code orders equal-count grids by Python set iteration
    order, an artefact. Within one tile count it only matters on an exact aspect-ratio tie
    between two grids of that count, which never happens with min_tiles=1 (1x1 is then always
    strictly closer; checked for every max_tiles <= 40), so any fixed order reproduces the
    official grids for HumanAesExpert's settings. We use wider-first for determinism.
    """
    grids = [
        (cols, rows)
        for cols in range(1, max_tiles + 1)
        for rows in range(1, max_tiles // cols + 1)
        if cols * rows >= min_tiles
    ]
    grids.sort(key=lambda g: (g[0] * g[1], -g[0]))
    return grids


def find_grid(
    width: int, height: int, *, min_tiles: int = 1, max_tiles: int = 12, tile_size: int = TILE_SIZE
) -> tuple[int, int]:
    """The (cols, rows) tile grid InternVL2 picks for a width x height image.

    Closest cols/rows to width/height wins; on an exactly equal distance a later (larger) grid
    replaces the current one only if the image area exceeds half the grid's pixel area.
    """
    _check_tiling(min_tiles, max_tiles, tile_size)
    if width < 1 or height < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    # Float arithmetic on purpose: ties are decided by exact float equality, as in the official code.
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in _candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and 2 * width * height > tile_size * tile_size * cols * rows:
            # integer form of area > 0.5 * tile^2 * cols * rows (exact either way)
            best = (cols, rows)
    return best


# --------------------------------------------------------------------------------------------
# Tiling and normalisation
# --------------------------------------------------------------------------------------------


def tile_image(
    image: Image.Image,
    *,
    max_tiles: int = 12,
    min_tiles: int = 1,
    tile_size: int = TILE_SIZE,
    use_thumbnail: bool = True,
) -> np.ndarray:
    """Cut an image into InternVL2 tiles: uint8 array [N, 3, tile, tile], RGB, channels first.

    Grid tiles come row by row, left to right; a bicubic thumbnail of the whole image is
    appended when there is more than one grid tile. Non-RGB images go through `to_rgb` first.
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    width, height = image.size
    cols, rows = find_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, tile_size=tile_size)
    n_grid = cols * rows
    thumb = use_thumbnail and n_grid > 1
    t = tile_size

    # One resize of the whole image (Pillow bicubic: antialiased, unlike torch's bicubic).
    resized = image.resize((t * cols, t * rows), Image.Resampling.BICUBIC)
    grid = np.asarray(resized)  # (rows*t, cols*t, 3), a read-only view on Pillow's bytes
    out = np.empty((n_grid + int(thumb), 3, t, t), dtype=np.uint8)
    # (rows, t, cols, t, 3) -> (rows, cols, 3, t, t): a single strided copy into the output,
    # tiles in row-major order.
    out[:n_grid].reshape(rows, cols, 3, t, t)[...] = grid.reshape(rows, t, cols, t, 3).transpose(0, 2, 4, 1, 3)
    del grid, resized
    if thumb:
        # Squashed to a square from the original image, not from the resized grid (official).
        out[n_grid] = np.asarray(image.resize((t, t), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    return out


def normalize_tiles(
    tiles_uint8: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(u8 / 255 - mean) / std with ImageNet mean/std, computed in float32, then cast to dtype.

    Bit-exact with torchvision ToTensor + Normalize (the official transform). Accepts a numpy
    array or torch tensor of shape [..., 3, H, W]; a CUDA tensor is normalised on its device.
    """
    if isinstance(tiles_uint8, np.ndarray):
        if tiles_uint8.dtype != np.uint8:
            raise TypeError(f"normalize_tiles expects uint8 tiles, got {tiles_uint8.dtype}")
        arr = tiles_uint8 if tiles_uint8.flags.writeable else tiles_uint8.copy()  # from_numpy needs writable
        u8 = torch.from_numpy(arr)
    elif isinstance(tiles_uint8, torch.Tensor):
        if tiles_uint8.dtype != torch.uint8:
            raise TypeError(f"normalize_tiles expects uint8 tiles, got {tiles_uint8.dtype}")
        u8 = tiles_uint8
    else:
        raise TypeError(f"normalize_tiles expects a numpy array or torch tensor, got {type(tiles_uint8).__name__}")
    if u8.dim() < 3 or u8.shape[-3] != 3:
        raise ValueError(f"normalize_tiles expects [..., 3, H, W], got shape {tuple(u8.shape)}")
    device = u8.device
    x = u8.to(torch.float32)  # fresh tensor, so the in-place ops below never touch the input
    # Divide by a broadcast tensor, not a Python scalar: CUDA turns scalar division into a
    # multiplication by the reciprocal (1 ulp off); tensor division is exact everywhere.
    x.div_(torch.full((1, 1, 1), 255.0, dtype=torch.float32, device=device))
    x.sub_(_MEAN.to(device)).div_(_STD.to(device))
    return x if dtype == torch.float32 else x.to(dtype)


def preprocess_image(
    image: Image.Image | ImageSource,
    *,
    max_tiles: int = 12,
    min_tiles: int = 1,
    dtype: torch.dtype = torch.float32,
    tile_size: int = TILE_SIZE,
    use_thumbnail: bool = True,
) -> torch.Tensor:
    """Image (or any source `load_image` accepts) -> normalised tiles [N, 3, tile, tile]."""
    if not isinstance(image, Image.Image):
        image = load_image(image)
    tiles = tile_image(image, max_tiles=max_tiles, min_tiles=min_tiles, tile_size=tile_size, use_thumbnail=use_thumbnail)
    return normalize_tiles(tiles, dtype=dtype)


class Preprocessor:
    """Decoding + preparation of one image for one model family, apart from the model.

    It holds only what those two steps need (tiling settings, a small face detector), never the
    model's weights, and pickles: `humanaes batch --engine ray` runs it in CPU tasks and sends
    the prepared inputs to the model actors, and `BaseScorer.score` runs the very same object in
    process, so both give identical inputs. `__call__` returns the family's prepared input
    (tensors) or raises ImageLoadError / HumanAesError naming the cause.
    """

    def __call__(self, source: ImageSource, name: str, options: Any) -> Any:
        """`options`: the scorer's typed ScoreOptions (apply_exif, max_pixels, the family's own)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TilePreprocessor(Preprocessor):
    """HumanAesExpert's preparation: decode, then InternVL2 dynamic tiling + normalisation."""

    max_tiles: int = 12
    min_tiles: int = 1
    tile_size: int = TILE_SIZE
    use_thumbnail: bool = True

    @classmethod
    def from_config(cls, config: Any) -> "TilePreprocessor":
        """From a HumanAesConfig (or anything with its tiling attributes)."""
        return cls(max_tiles=config.max_tiles, min_tiles=config.min_tiles, tile_size=config.image_size,
                   use_thumbnail=config.use_thumbnail)

    def prepare(self, image: Image.Image, max_tiles: int | None = None) -> torch.Tensor:
        """A decoded RGB image -> normalised tiles [N, 3, tile, tile] (`max_tiles` None: the model's)."""
        return preprocess_image(image, max_tiles=max_tiles or self.max_tiles, min_tiles=self.min_tiles,
                                tile_size=self.tile_size, use_thumbnail=self.use_thumbnail)

    def __call__(self, source: ImageSource, name: str, options: Any) -> torch.Tensor:
        image = load_image(source, apply_exif=options.apply_exif, max_pixels=options.max_pixels, name=name)
        return self.prepare(image, getattr(options, "max_tiles", None))


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
    draft: tuple[int, int] | TilingConfig | None = None,
) -> Image.Image:
    """Decode `source` (path, bytes, binary file object or PIL image) to an 8-bit RGB PIL image.

    - apply_exif: rotate/flip by the EXIF orientation tag (False = official behaviour).
    - max_pixels: refuse larger images before decoding them (None = no limit).
    - alpha: "white" composites transparent pixels onto white (what is under them is often
      black or garbage, which would skew scores); "drop" = official convert('RGB').
    - draft: JPEG only, off by default. Let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying
      at least this (width, height), or at least the grid size a TilingConfig would resize to.
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
    refused with ImageLoadError before it is opened, so reading never blocks on a pipe. A file
    larger than `max_bytes` is refused before it is read.

    The file is opened with O_NONBLOCK and checked again with fstat, so a FIFO swapped in
    between the two checks cannot block either.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageLoadError(item, "dangling symlink (its target does not exist)") from None
        raise ImageLoadError(item, "file not found") from None
    except PermissionError:
        raise ImageLoadError(item, "permission denied reading the file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(item, "symlink loop (the link leads back to itself)") from None
        raise ImageLoadError(item, f"cannot read the file ({_describe(exc)})") from None
    _require_regular(mode, item)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise ImageLoadError(item, "permission denied reading the file") from None
    except OSError as exc:
        raise ImageLoadError(item, f"cannot read the file ({_describe(exc)})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        _require_regular(st.st_mode, item)
        if max_bytes is not None and st.st_size > max_bytes:
            raise ImageLoadError(
                item,
                f"file of {st.st_size} bytes is larger than any image within the pixel limit can be "
                f"({max_bytes} bytes); not read. Pass a larger max_pixels to allow it",
            )
        try:
            return fh.read()
        except OSError as exc:
            raise ImageLoadError(item, f"cannot read the file ({_describe(exc)})") from None


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


def _apply_draft(img: Image.Image, draft: tuple[int, int] | TilingConfig, orientation: int) -> None:
    """Ask the JPEG decoder for a reduced-scale decode that stays at least the needed size."""
    swap = orientation in (5, 6, 7, 8)  # sizes are in stored (unrotated) orientation
    if isinstance(draft, TilingConfig):
        w, h = (img.height, img.width) if swap else img.size  # grid is chosen on the upright image
        cols, rows = draft.grid(w, h)
        need = (draft.tile_size * cols, draft.tile_size * rows)
    else:
        need = (int(draft[0]), int(draft[1]))
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
