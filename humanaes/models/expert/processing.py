"""HumanAesExpert's image preparation: the official InternVL2 dynamic tiling (reference section 5).

A decoded RGB image (`humanaes.io.images.load_image`) -> `tile_image` (uint8 tiles
[N, 3, 448, 448]) -> `normalize_tiles` (ImageNet-normalised float tensor). `preprocess_image`
chains the two. The tiles and normalised values are bit-exact against the official
preprocessing (checked against the fixtures in tests/test_preprocessing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from humanaes.errors import ConfigError
from humanaes.io.images import DEFAULT_MAX_PIXELS, ImageSource, load_image, source_name, to_rgb  # noqa: F401 - old names of this module
from humanaes.scorer import Preprocessor

TILE_SIZE = 448
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


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

    def draft_size(self, width: int, height: int) -> tuple[int, int]:
        """The size this image is resized to before tiling (`load_image(draft=...)` decodes no smaller)."""
        cols, rows = self.grid(width, height)
        return self.tile_size * cols, self.tile_size * rows

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
        return self.prepare(self.decode(source, name, options), getattr(options, "max_tiles", None))
