"""Decoding, grid choice, tiling and normalisation (humanaes.models.expert.processing).

The fixture part checks bit-exactness against the official HumanAesExpert preprocessing
(/work/shared/fixtures/internvl2/preprocess, README section 1); everything else builds tiny
images in memory so the file runs in a few seconds on one core.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from humanaes.errors import ConfigError, ImageLoadError
from humanaes.io import images as pp
from humanaes.io.images import load_image, source_name, to_rgb
from humanaes.models.expert.processing import (
    TilingConfig,
    find_grid,
    normalize_tiles,
    preprocess_image,
    tile_image,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "internvl2" / "preprocess"
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float32).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float32).view(3, 1, 1)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rgb_of(img: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    assert img.mode == "RGB"
    return tuple(int(v) for v in img.getpixel(xy))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but has no pixel data (a cheap 'bomb')."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------
# official fixtures
# --------------------------------------------------------------------------------------------

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"shared fixtures not found at {FIXTURES}")


@pytest.fixture(scope="module")
def meta() -> dict:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return json.loads((FIXTURES / "preprocess.json").read_text())


@pytest.fixture(scope="module")
def ref_tiles() -> dict[str, np.ndarray]:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    from safetensors.numpy import load_file

    return load_file(str(FIXTURES / "tiles_uint8.safetensors"))


@pytest.fixture(scope="module")
def decoded(meta) -> dict[str, Image.Image]:
    """Fixture images decoded the official way (no EXIF, alpha dropped)."""
    return {
        name: load_image(FIXTURES / info["file"], apply_exif=False, alpha="drop")
        for name, info in meta["images"].items()
    }


def _decoder_matches(meta, decoded, image_name: str) -> bool:
    img = decoded[image_name]
    digest = hashlib.sha256(np.asarray(img).tobytes()).hexdigest()
    return digest == meta["images"][image_name]["decoded_rgb_sha256"]


def _cases() -> list[tuple[str, str]]:
    names = ("astronaut", "grace_hopper", "wide")
    return [(n, f"{n}.max{m}") for n in names for m in (12, 6, 1)]


@needs_fixtures
@pytest.mark.parametrize("image_name", ["astronaut", "grace_hopper", "wide"])
def test_decoded_rgb_sha256(meta, decoded, image_name):
    info = meta["images"][image_name]
    img = decoded[image_name]
    assert img.mode == "RGB" and img.size == (info["width"], info["height"])
    if not _decoder_matches(meta, decoded, image_name):
        if info["file"].endswith(".jpg"):
            pytest.skip(f"this Pillow's JPEG decoder gives other pixels for {info['file']} than the fixture's (libjpeg-turbo 3.2.0)")
        pytest.fail(f"decoded pixels of lossless {info['file']} differ from the fixture")


@needs_fixtures
@pytest.mark.parametrize("image_name,key", _cases())
def test_tiles_match_official_exactly(meta, decoded, ref_tiles, image_name, key):
    case = meta["images"][image_name]["cases"][key]
    img = decoded[image_name]
    assert list(find_grid(img.width, img.height, max_tiles=case["max_num"])) == case["grid_cols_rows"]
    assert TilingConfig(max_tiles=case["max_num"]).num_tiles(img.width, img.height) == case["num_tiles"]
    if not _decoder_matches(meta, decoded, image_name):
        pytest.skip(f"JPEG decoder differs from the fixture's for {image_name}; tile equality cannot hold")
    tiles = tile_image(img, max_tiles=case["max_num"])
    assert tiles.dtype == np.uint8 and list(tiles.shape) == case["shape"]
    assert np.array_equal(tiles, ref_tiles[key])


@needs_fixtures
def test_normalisation_bit_exact(meta, ref_tiles):
    from safetensors.torch import load_file

    pixel_values = load_file(str(FIXTURES / "pixel_values.safetensors"))
    assert set(pixel_values) == {"astronaut.max6", "grace_hopper.max1", "wide.max6"}
    for key, expected in pixel_values.items():
        got = normalize_tiles(ref_tiles[key])
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got, expected), key  # tolerance 0


@needs_fixtures
def test_preprocess_image_end_to_end(meta, decoded):
    from safetensors.torch import load_file

    if not _decoder_matches(meta, decoded, "wide"):
        pytest.skip("decoded pixels differ")
    expected = load_file(str(FIXTURES / "pixel_values.safetensors"))["wide.max6"]
    assert torch.equal(preprocess_image(decoded["wide"], max_tiles=6), expected)
    # a path works too (decoded with the defaults: EXIF on, alpha white; wide.png has neither)
    assert torch.equal(preprocess_image(FIXTURES / "wide.png", max_tiles=6), expected)
    half = preprocess_image(decoded["wide"], max_tiles=6, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, expected.to(torch.bfloat16))


# --------------------------------------------------------------------------------------------
# grid choice
# --------------------------------------------------------------------------------------------


def test_find_grid_fixture_ties():
    # 2.0 aspect: 2x1 and 4x2 tie; 980,000 px > 0.5*448*448*8 = 802,816 -> the larger grid wins
    assert find_grid(1400, 700, max_tiles=12) == (4, 2)
    assert find_grid(1400, 700, max_tiles=6) == (2, 1)
    # 1x1 and 2x2 tie; 307,200 px is not > 401,408 -> 1x1 stays
    assert find_grid(512, 600, max_tiles=6) == (1, 1)
    assert find_grid(512, 600, max_tiles=12) == (3, 4)


def test_find_grid_tie_rule_on_area():
    # aspect 1.5 with max 2: 1x1 and 2x1 are equally far (0.5); area decides against 0.5*448^2*2
    assert find_grid(600, 400, max_tiles=2) == (2, 1)  # 240,000 > 200,704
    assert find_grid(300, 200, max_tiles=2) == (1, 1)  # 60,000 is not
    # area exactly half the grid's pixel area is not enough (strictly greater)
    assert find_grid(448, 224, max_tiles=8) == (2, 1)  # 4x2 ties, 100,352 !> 802,816
    assert find_grid(896, 448, max_tiles=8) == (2, 1)  # 401,408 !> 802,816
    assert find_grid(1268, 634, max_tiles=8) == (4, 2)  # 803,912 > 802,816
    # square: 1x1, 2x2, 3x3 all tie
    assert find_grid(896, 896, max_tiles=12) == (2, 2)  # 802,816 > 401,408 but not > 903,168
    assert find_grid(1000, 1000, max_tiles=12) == (3, 3)
    assert find_grid(300, 300, max_tiles=12) == (1, 1)
    assert find_grid(1000, 1000, max_tiles=12, tile_size=100) == (3, 3)


def test_find_grid_bounds_and_closeness():
    for max_tiles in (1, 2, 6, 12):
        for min_tiles in (1, 2):
            if min_tiles > max_tiles:
                continue
            for w, h in [(1, 1), (10, 1000), (1000, 10), (640, 480), (480, 640), (4032, 3024), (3, 7)]:
                cols, rows = find_grid(w, h, min_tiles=min_tiles, max_tiles=max_tiles)
                assert min_tiles <= cols * rows <= max_tiles
                best = min(
                    abs(w / h - c / r)
                    for c in range(1, max_tiles + 1)
                    for r in range(1, max_tiles + 1)
                    if min_tiles <= c * r <= max_tiles
                )
                assert abs(w / h - cols / rows) == best
    assert find_grid(1000, 1000, min_tiles=2, max_tiles=3) in {(1, 2), (2, 1)}
    assert find_grid(100, 100, min_tiles=4, max_tiles=4) == (2, 2)


def test_tiling_config_validation():
    for bad in [dict(min_tiles=0), dict(min_tiles=3, max_tiles=2), dict(tile_size=0), dict(max_tiles=2.5)]:
        with pytest.raises(ConfigError):
            TilingConfig(**bad)
    with pytest.raises(ConfigError):
        find_grid(0, 10)
    cfg = TilingConfig()
    assert (cfg.max_tiles, cfg.min_tiles, cfg.tile_size, cfg.use_thumbnail) == (12, 1, 448, True)
    assert cfg.num_tiles(1400, 700) == 9 and cfg.num_tiles(512, 512) == 1
    assert TilingConfig(use_thumbnail=False).num_tiles(1400, 700) == 8


# --------------------------------------------------------------------------------------------
# tiling and normalisation on synthetic images
# --------------------------------------------------------------------------------------------


def test_tiles_row_major_and_thumbnail_last():
    t = 16
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # TL, TR, BL, BR
    img = Image.new("RGB", (2 * t, 2 * t))
    for k, colour in enumerate(colours):
        img.paste(colour, ((k % 2) * t, (k // 2) * t, (k % 2 + 1) * t, (k // 2 + 1) * t))
    tiles = tile_image(img, max_tiles=4, tile_size=t)  # exact size: the resize is an identity
    assert tiles.shape == (5, 3, t, t) and tiles.dtype == np.uint8
    for k, colour in enumerate(colours):
        assert (tiles[k] == np.array(colour, dtype=np.uint8).reshape(3, 1, 1)).all()
    thumb = np.asarray(img.resize((t, t), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert np.array_equal(tiles[4], thumb)
    assert tile_image(img, max_tiles=4, tile_size=t, use_thumbnail=False).shape == (4, 3, t, t)
    assert tile_image(img, max_tiles=1, tile_size=t).shape == (1, 3, t, t)  # one tile: no thumbnail


def test_tiles_wide_grid_and_non_rgb_input():
    t = 8
    img = Image.fromarray(np.arange(3 * t * t, dtype=np.uint8).reshape(t, 3 * t), mode="L")
    tiles = tile_image(img, max_tiles=3, tile_size=t)  # 3x1 grid + thumbnail
    assert tiles.shape == (4, 3, t, t)
    grey = np.asarray(img)
    for k in range(3):
        assert np.array_equal(tiles[k, 0], grey[:, k * t : (k + 1) * t])
        assert np.array_equal(tiles[k, 0], tiles[k, 2])


def test_normalize_tiles_inputs_and_dtypes():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(2, 3, 5, 7), dtype=np.uint8)
    ref = (torch.from_numpy(u8).to(torch.float32) / 255 - MEAN) / STD
    got = normalize_tiles(u8)
    assert torch.equal(got, ref)
    before = u8.copy()
    u8.flags.writeable = False  # read-only arrays (np.asarray of a PIL image) are fine
    assert torch.equal(normalize_tiles(u8), ref) and np.array_equal(u8, before)
    assert torch.equal(normalize_tiles(torch.from_numpy(before)), ref)
    assert torch.equal(normalize_tiles(before[0]), ref[0])  # a single [3, H, W] tile
    assert torch.equal(normalize_tiles(before, dtype=torch.float16), ref.to(torch.float16))
    with pytest.raises(TypeError):
        normalize_tiles(before.astype(np.float32))
    with pytest.raises(ValueError):
        normalize_tiles(np.zeros((2, 4, 5, 5), dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# decoding: input kinds
# --------------------------------------------------------------------------------------------


def test_every_input_kind(tmp_path):
    src = Image.new("RGB", (6, 4), (10, 20, 30))
    data = encode(src)
    path = tmp_path / "im.png"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        from_file = load_image(fh)
    variants = [
        load_image(str(path)),
        load_image(path),
        load_image(data),
        load_image(bytearray(data)),
        load_image(memoryview(data)),
        load_image(io.BytesIO(data)),
        from_file,
        load_image(src),
        load_image(Image.open(io.BytesIO(data))),  # a lazily opened PIL image
    ]
    for img in variants:
        assert img.mode == "RGB" and img.size == (6, 4) and rgb_of(img) == (10, 20, 30)
    assert load_image(src) is src  # RGB without orientation: no needless copy


def test_source_names(tmp_path):
    path = tmp_path / "a.png"
    assert source_name(path) == str(path) and source_name(str(path)) == str(path)
    assert source_name(b"x", 3) == "<bytes #3>"
    assert source_name(io.BytesIO(b"")) == "<BytesIO>"
    path.write_bytes(encode(Image.new("RGB", (2, 2))))
    with open(path, "rb") as fh:
        assert source_name(fh) == str(path)


def test_text_mode_file_and_unsupported_type():
    with pytest.raises(ImageLoadError, match="text mode"):
        load_image(io.StringIO("hello"), name="notes")
    with pytest.raises(ImageLoadError, match=r"unsupported source type int"):
        load_image(42)
    with pytest.raises(ConfigError):
        load_image(Image.new("RGB", (2, 2)), alpha="black")


# --------------------------------------------------------------------------------------------
# decoding: modes
# --------------------------------------------------------------------------------------------


def test_alpha_white_vs_drop():
    rgba = Image.new("RGBA", (3, 1), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((1, 0), (200, 100, 0, 255))  # opaque
    rgba.putpixel((2, 0), (0, 0, 0, 128))  # half transparent black
    for source in (rgba, encode(rgba)):
        white = load_image(source)
        assert rgb_of(white, (0, 0)) == (255, 255, 255)
        assert rgb_of(white, (1, 0)) == (200, 100, 0)
        assert all(abs(v - 127) <= 1 for v in rgb_of(white, (2, 0)))
        drop = load_image(source, alpha="drop")
        assert rgb_of(drop, (0, 0)) == (0, 0, 0) and rgb_of(drop, (1, 0)) == (200, 100, 0)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: Image.new("LA", (2, 2), (0, 0)), id="LA"),
        pytest.param(lambda: Image.new("RGBa", (2, 2), (0, 0, 0, 0)), id="RGBa"),
        pytest.param(lambda: Image.new("La", (2, 2), (0, 0)), id="La"),
        pytest.param(lambda: Image.new("RGBA", (2, 2), (0, 0, 0, 0)).convert("PA"), id="PA"),
    ],
)
def test_alpha_modes_composite_onto_white(make):
    img = make()
    assert rgb_of(load_image(img)) == (255, 255, 255)
    assert rgb_of(load_image(img, alpha="drop")) == (0, 0, 0)


def test_palette_and_colour_key_transparency():
    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0, 90, 80, 70] + [0] * 762)
    p.putpixel((1, 1), 1)
    for fmt in ("PNG", "GIF"):
        data = encode(p, fmt, transparency=0)
        assert rgb_of(load_image(data)) == (255, 255, 255)
        assert rgb_of(load_image(data), (1, 1)) == (90, 80, 70)
        assert rgb_of(load_image(data, alpha="drop")) == (0, 0, 0)
    assert rgb_of(load_image(encode(p))) == (0, 0, 0)  # palette without transparency
    key = encode(Image.new("RGB", (2, 2), (1, 2, 3)), "PNG", transparency=(1, 2, 3))  # tRNS colour key
    assert rgb_of(load_image(key)) == (255, 255, 255)
    assert rgb_of(load_image(key, alpha="drop")) == (1, 2, 3)


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257, 300, 32896, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    for source in (img, encode(img)):
        out = np.asarray(load_image(source))[0, :, 0]
        assert out.tolist() == [0, 1, 1, 128, 255]
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert i32.mode == "I" and np.asarray(load_image(i32))[0, :, 0].tolist() == [0, 255]
    i8range = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert np.asarray(load_image(i8range))[0, :, 0].tolist() == [0, 200]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert f.mode == "F" and np.asarray(load_image(f))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    "make,expected,tol",
    [
        (lambda: Image.new("L", (4, 4), 77), (77, 77, 77), 0),
        (lambda: Image.new("1", (4, 4), 1), (255, 255, 255), 0),
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 0, 0)), (255, 0, 255), 0),
        (lambda: Image.new("YCbCr", (4, 4), (128, 128, 128)), (128, 128, 128), 1),
        (lambda: Image.new("RGB", (4, 4), (255, 0, 0)).convert("HSV"), (255, 0, 0), 1),
        (lambda: Image.new("LAB", (4, 4), (255, 128, 128)), (255, 255, 255), 2),
        (lambda: Image.new("RGBX", (4, 4), (1, 2, 3, 0)), (1, 2, 3), 0),
    ],
    ids=["L", "1", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"],
)
def test_other_modes(make, expected, tol):
    out = load_image(make())
    assert out.mode == "RGB" and out.size == (4, 4)
    assert all(abs(a - b) <= tol for a, b in zip(rgb_of(out), expected))


def test_encoded_modes_round_trip():
    cases = [
        (Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG", (255, 0, 255), 3),
        (Image.new("L", (8, 8), 90), "JPEG", (90, 90, 90), 2),
        (Image.new("1", (8, 8), 1), "PNG", (255, 255, 255), 0),
        (Image.new("RGB", (8, 8), (5, 6, 7)), "BMP", (5, 6, 7), 0),
        (Image.new("RGB", (8, 8), (5, 6, 7)), "TIFF", (5, 6, 7), 0),
        (Image.new("RGBA", (8, 8), (5, 6, 7, 255)), "WEBP", (5, 6, 7), 4),
    ]
    for img, fmt, expected, tol in cases:
        out = load_image(encode(img, fmt), name=fmt)
        assert out.mode == "RGB" and out.size == (8, 8), fmt
        assert all(abs(a - b) <= tol for a, b in zip(rgb_of(out, (4, 4)), expected)), (fmt, rgb_of(out, (4, 4)))


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build has no AVIF codec")
def test_avif_round_trip():
    out = load_image(encode(Image.new("RGB", (16, 16), (200, 30, 30)), "AVIF", quality=90))
    assert out.size == (16, 16) and all(abs(a - b) <= 12 for a, b in zip(rgb_of(out, (8, 8)), (200, 30, 30)))


# --------------------------------------------------------------------------------------------
# EXIF orientation and draft
# --------------------------------------------------------------------------------------------


def _oriented_jpeg(orientation: int) -> bytes:
    img = Image.new("RGB", (32, 16), (255, 0, 0))  # left half red, right half blue
    img.paste((0, 0, 255), (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, quality=95)


def _is_red(px) -> bool:
    return px[0] > 200 and px[2] < 60


def test_exif_rotation_on_and_off():
    data = _oriented_jpeg(6)  # stored landscape, shown rotated 90 degrees clockwise
    upright = load_image(data)
    assert upright.size == (16, 32)
    assert _is_red(upright.getpixel((8, 4))) and not _is_red(upright.getpixel((8, 28)))  # left half -> top
    official = load_image(data, apply_exif=False)
    assert official.size == (32, 16) and _is_red(official.getpixel((4, 8)))
    flipped = load_image(_oriented_jpeg(3))  # 180 degrees
    assert flipped.size == (32, 16) and not _is_red(flipped.getpixel((4, 8))) and _is_red(flipped.getpixel((28, 8)))
    assert load_image(_oriented_jpeg(1)).size == (32, 16)
    assert load_image(_oriented_jpeg(9)).size == (32, 16)  # invalid tag value: ignored
    # PIL images passed in get the same treatment and are not modified
    src = Image.open(io.BytesIO(data))
    assert load_image(src).size == (16, 32) and src.size == (32, 16)


def test_jpeg_draft_is_opt_in():
    data = encode(Image.new("RGB", (1600, 1200), (30, 120, 200)), "JPEG")
    assert load_image(data).size == (1600, 1200)
    assert load_image(data, draft=(400, 300)).size == (400, 300)  # 1/4 scale
    assert load_image(data, draft=(401, 300)).size == (800, 600)  # never below the request
    # grid for 1600x1200 with max 1 tile is 1x1 -> needs 448x448 -> 1/2 scale
    assert load_image(data, draft=TilingConfig(max_tiles=1)).size == (800, 600)
    assert load_image(encode(Image.new("RGB", (64, 48)), "PNG"), draft=(8, 8)).size == (64, 48)  # not JPEG


# --------------------------------------------------------------------------------------------
# decoding: errors name the item
# --------------------------------------------------------------------------------------------


def _raises(source, cause: str, **kw) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kw)
    err = info.value
    assert cause in err.cause, err.cause
    assert str(err).startswith(f"{err.item}: ")
    return err


def test_missing_file_and_folder(tmp_path):
    missing = tmp_path / "nope.jpg"
    assert _raises(missing, "file not found").item == str(missing)
    assert _raises(str(tmp_path), "folder").item == str(tmp_path)


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and symlinks")
def test_paths_that_are_not_regular_files_get_exact_causes(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    assert str(_raises(fifo, "")) == f"{fifo}: is a FIFO (named pipe), not a regular file; not opened"
    assert str(_raises(tmp_path, "")) == f"{tmp_path}: is a folder, not an image file"
    assert str(_raises(loop, "")) == f"{loop}: symlink loop (the link leads back to itself)"
    assert str(_raises(dangling, "")) == f"{dangling}: dangling symlink (its target does not exist)"
    assert str(_raises(tmp_path / "nope.jpg", "")) == f"{tmp_path / 'nope.jpg'}: file not found"


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs")
def test_a_fifo_swapped_in_after_the_stat_check_is_refused_not_read(tmp_path, monkeypatch):
    # Bug caught: the decoder trusts its stat check and opens the path for a blocking read; a FIFO
    # put in its place in between would hang the run (open_regular re-checks the opened file).
    import os

    regular, fifo = tmp_path / "ok.jpg", tmp_path / "pipe.jpg"
    regular.write_bytes(b"x")
    os.mkfifo(fifo)
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: real_stat(regular if str(path) == str(fifo) else path, *a, **k))
    import signal

    def hung(*_):
        raise AssertionError("load_image blocked on the FIFO")

    old_handler = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        assert str(_raises(fifo, "")) == f"{fifo}: is a FIFO (named pipe), not a regular file; not opened"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)


def test_importing_the_decoder_loads_no_writers_tables_or_models():
    # Bug caught: humanaes.io's package init imports every submodule (writers, tables), or the
    # decoder imports a model family's tiling, so every scorer pays for them.
    import subprocess

    code = ("import sys, json, humanaes.io.images; print(json.dumps(sorted(m for m in sys.modules "
            "if m.startswith(('humanaes.', 'pandas', 'pyarrow', 'torch', 'transformers')))))")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)}, check=True)
    assert json.loads(proc.stdout) == [
        "humanaes._moved", "humanaes.errors", "humanaes.fsutil", "humanaes.io", "humanaes.io.discovery",
        "humanaes.io.images", "humanaes.io.keys", "humanaes.options", "humanaes.schema",
    ]


def test_every_name_humanaes_io_exports_resolves():
    from humanaes import io as hio

    for name in hio.__all__:
        assert getattr(hio, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hio.nope  # noqa: B018


def test_empty_text_and_garbage(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _raises(empty, "empty file").item == str(empty)
    text = tmp_path / "readme.jpg"
    text.write_text("this is not a picture\n")
    assert _raises(text, "looks like text").item == str(text)
    _raises(b"\x00\x01\x02\x03garbage\xff" * 10, "not an image format", name="blob")
    assert _raises(b"", "empty file", name="upload-7").item == "upload-7"


def test_truncated_files(tmp_path):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
        data = encode(img, fmt)
        cut = tmp_path / f"cut.{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        assert _raises(cut, "truncated").item == str(cut)
        # only the first bytes: the header itself is broken
        assert fmt in _raises(data[:20], "corrupt or truncated", name=f"head.{suffix}").cause


def test_decompression_bomb_uses_our_limit_without_touching_pillow():
    pillow_limit = Image.MAX_IMAGE_PIXELS
    small = encode(Image.new("RGB", (100, 100)))
    err = _raises(small, "exceeds the limit of 5000", max_pixels=5000, name="big.png")
    assert "10000" in err.cause and err.item == "big.png"
    assert load_image(small, max_pixels=10_000).size == (100, 100)
    assert load_image(Image.new("RGB", (100, 100)), max_pixels=None).size == (100, 100)
    _raises(Image.new("RGB", (100, 100)), "exceeds the limit", max_pixels=99)
    # 20000 x 20000 = 400 MP: Pillow itself refuses it; we report it with our wording
    bomb = png_header_only(20_000, 20_000)
    _raises(bomb, "possible decompression bomb", name="bomb.png")
    # allowed explicitly: the header passes, then decoding finds no pixel data
    _raises(bomb, "corrupt or truncated", max_pixels=None, name="bomb.png")
    _raises(png_header_only(10_000, 10_000), "corrupt or truncated", name="ok-size.png")
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_heic_without_pillow_heif(monkeypatch):
    fake_heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    monkeypatch.setattr(pp, "_HEIF_REGISTERED", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    assert _raises(fake_heic, "install pillow-heif", name="IMG_0001.HEIC").item == "IMG_0001.HEIC"


def test_heic_registers_pillow_heif_once(monkeypatch):
    calls = []
    fake = types.ModuleType("pillow_heif")
    fake.register_heif_opener = lambda: calls.append(1)  # registers nothing: decoding still fails
    monkeypatch.setattr(pp, "_HEIF_REGISTERED", None)
    monkeypatch.setitem(sys.modules, "pillow_heif", fake)
    fake_heic = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    _raises(fake_heic, "pillow-heif cannot decode", name="a.heic")
    _raises(fake_heic, "pillow-heif cannot decode", name="b.heic")
    assert calls == [1]


def test_to_rgb_keeps_rgb_and_rejects_bad_alpha():
    img = Image.new("RGB", (2, 2))
    assert to_rgb(img) is img
    with pytest.raises(ConfigError):
        to_rgb(Image.new("RGBA", (2, 2)), alpha="grey")
