"""Fuzz corpus (issue 10 must 7): >= 40 hostile inputs through `humanaes score` with the bundled
model, for each output format: the run ends within a time bound, exits 0 or 1 (never a
traceback), writes exactly one row per input, the output parses back with pandas / pyarrow, and
reruns (plain and --retry-errors) resume to the same rows.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from test_hostile_inputs import deadline

import humanaes
from humanaes import io as hio
from humanaes.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX file system semantics")]

RUN_SECONDS = 180  # generous for a busy 2-core machine; a blocked read never ends


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's header; tiny file)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _save(path: Path, image: Image.Image, **kwargs: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def build_corpus(root: Path) -> tuple[list[str], set[str]]:
    """Make the hostile inputs under `root`; returns (CLI arguments, expected row keys)."""
    d = root / "corpus"
    d.mkdir(parents=True)
    rgb = Image.new("RGB", (16, 12), (180, 120, 90))
    # -- decodable but unusual images
    _save(d / "good.jpg", rgb)
    _save(d / "cmyk.jpg", Image.new("CMYK", (16, 12), (10, 200, 30, 5)))
    _save(d / "gray16.png", Image.new("I;16", (16, 12), 40000))
    palette = Image.new("P", (16, 12), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    _save(d / "palette_alpha.png", palette, transparency=1)
    _save(d / "rgba.png", Image.new("RGBA", (16, 12), (10, 20, 30, 0)))
    _save(d / "la.png", Image.new("LA", (16, 12), (100, 128)))
    _save(d / "animated.gif", Image.new("P", (16, 12), 3), save_all=True,
          append_images=[Image.new("P", (16, 12), 7)], duration=50, loop=0)
    _save(d / "multipage.tif", rgb, save_all=True, append_images=[Image.new("RGB", (16, 12), (1, 2, 3))])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    _save(d / "exif_rotated.jpg", Image.new("RGB", (20, 10), (90, 90, 200)), exif=exif)
    _save(d / "one_pixel.png", Image.new("RGB", (1, 1), (255, 255, 255)))
    _save(d / "sliver.png", Image.new("RGB", (1, 300), (0, 255, 0)))
    _save(d / "float.tif", Image.new("F", (16, 12), 0.5))
    _save(d / "bilevel.bmp", Image.new("1", (16, 12), 1))
    _save(d / "lossless.webp", rgb, lossless=True)
    jpeg = (d / "good.jpg").read_bytes()
    (d / "jpeg_named.png").write_bytes(jpeg)  # wrong extension, right content
    # -- broken data
    (d / "zero.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = (d / "one_pixel.png").read_bytes()
    (d / "truncated.png").write_bytes(png[:40])
    (d / "wrong_magic.png").write_bytes(b"\x89PNX\r\n\x1a\n" + png[8:])
    (d / "text.jpg").write_text("just some text, not an image\n")
    (d / "html.png").write_text("<html><script>alert(1)</script></html>")
    (d / "svg.png").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (d / "noise.bmp").write_bytes(os.urandom(300))
    flipped = bytearray(jpeg)
    flipped[len(flipped) // 2: len(flipped) // 2 + 40] = b"\xff" * 40
    (d / "corrupt_middle.jpg").write_bytes(bytes(flipped))
    (d / "bomb.png").write_bytes(_png_with_size(200_000, 200_000))
    (d / "gif_bomb.gif").write_bytes(b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00;")
    with open(d / "huge_sparse.jpg", "wb") as fh:
        fh.truncate(3 << 30)  # a 3 GiB "photo" of zeros; sparse, so it costs no disk
    (d / "heic_without_decoder.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32)
    # -- file-system hostiles
    os.mkfifo(d / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(d / "socket.png"))
    except OSError:
        pass  # path too long for a UNIX socket here
    finally:
        sock.close()  # the socket file stays
    (d / "loop_a.jpg").symlink_to("loop_b.jpg")
    (d / "loop_b.jpg").symlink_to("loop_a.jpg")
    (d / "self_loop.png").symlink_to("self_loop.png")
    (d / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (d / "to_dev_zero.jpg").symlink_to("/dev/zero")
    (d / "alias.jpg").symlink_to("good.jpg")
    (d / "folder.jpg").mkdir()  # a folder with an image's name: searched, not scored
    _save(d / "folder.jpg" / "inside.png", rgb)
    # -- names
    for name in ["sp ace.jpg", 'quo"te.jpg', "com,ma.jpg", "new\nline.jpg", "cr\rname.jpg", "tab\tname.jpg",
                 "<script>alert(1)<script>.jpg", "l_%E9.jpg", "é😀.jpg", "-rf.jpg", "=HYPERLINK(1).jpg",
                 "x" * 200 + ".jpg", "'single'.jpg", "back\\slash.jpg"]:
        (d / name).write_bytes(jpeg)
    raw_dir = os.fsencode(d)
    try:
        with open(os.path.join(raw_dir, b"l_\xe9.jpg"), "wb") as fh:
            fh.write(jpeg)
        with open(os.path.join(raw_dir, b"bad_\xff\xfe.png"), "wb") as fh:
            fh.write(b"")
    except OSError:
        pass  # a file system that refuses non-UTF-8 names
    # -- a manifest with a missing entry, a FIFO, a relative path and a duplicate
    manifest = root / "list.txt"
    manifest.write_text("corpus/good.jpg\nmissing.jpg\ncorpus/fifo.jpg\n./corpus/../corpus/cmyk.jpg\n")

    expected = {hio.image_key(os.path.join(raw_dir, n)) for n in os.listdir(raw_dir)
                if not n.startswith(b".") and n != b"folder.jpg"}
    expected |= {hio.image_key(d / "folder.jpg" / "inside.png"), hio.image_key(root / "missing.jpg")}
    return [str(d), str(manifest)], expected


@pytest.fixture(scope="module")
def bundled() -> Any:
    return humanaes.load(None)  # the bundled default model: fast, no download


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[list[str], set[str]]:
    return build_corpus(tmp_path)


def _score(args: list[str], out: Path, *extra: str) -> Any:
    with deadline(RUN_SECONDS):
        result = CliRunner().invoke(main, ["score", *args, "--out", str(out), "--batch-size", "8", *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1), result.output
    return result


def parse_back(out: Path) -> list[dict[str, Any]]:
    if out.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(out, dtype={"image": str, "display": str, "error": str}, keep_default_na=False).to_dict("records")
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_fuzz_corpus(tmp_path: Path, corpus: tuple[list[str], set[str]], bundled: Any, fmt: str,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    args, expected = corpus
    assert len(expected) >= 40
    monkeypatch.setattr(humanaes, "load", lambda *a, **k: bundled)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / f"scores.{fmt}"

    first = _score(args, out)
    assert first.exit_code == 1  # the corpus holds broken items
    rows = parse_back(out)
    keys = [r["image"] for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == expected
    by_key = {r["image"]: r for r in rows}
    for key, row in by_key.items():
        name = os.path.basename(hio.key_to_path(key))
        if row["error"]:
            assert row["error"].startswith((row["display"], key)), row  # names the item ...
            assert row["overall"] is None or row["overall"] == "" or row["overall"] != row["overall"]
        else:
            assert 0.0 <= float(row["overall"]) <= 1.0, (name, row["overall"])
    good = {os.path.basename(k) for k, r in by_key.items() if not r["error"]}
    assert {"good.jpg", "cmyk.jpg", "gray16.png", "palette_alpha.png", "animated.gif", "multipage.tif",
            "exif_rotated.jpg", "alias.jpg", "new\nline.jpg", "cr\rname.jpg", "inside.png"} <= good
    bad = {os.path.basename(hio.key_to_path(k)) for k, r in by_key.items() if r["error"]}
    assert {"zero.jpg", "truncated.jpg", "bomb.png", "fifo.jpg", "loop_a.jpg", "dangling.jpg",
            "to_dev_zero.jpg", "missing.jpg", "text.jpg", "huge_sparse.jpg"} <= bad

    snapshot = out.read_bytes()
    again = _score(args, out)
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    assert out.read_bytes() == snapshot  # a plain rerun changes nothing

    retried = _score(args, out, "--retry-errors")
    assert retried.exit_code == 1
    rows_after = parse_back(out)
    assert [r["image"] for r in rows_after] == keys  # same rows, same order: errors replaced in place
    assert {r["image"]: bool(r["error"]) for r in rows_after} == {k: bool(r["error"]) for k, r in by_key.items()}
