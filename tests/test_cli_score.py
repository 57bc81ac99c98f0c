"""`humanaes score` / `humanaes models` and humanaes.io, against a deterministic pixel-based scorer.

The real model loader (`humanaes.load`) is replaced by monkeypatch, so these tests need no
weights and run in about a second.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import humanaes
from humanaes import io as hio
from humanaes.cli import main
from humanaes.errors import HumanAesError, ModelNotFoundError
from humanaes.options import ScoreOptions, option
from humanaes.schema import DIMENSIONS, LEVEL_CENTRES, LEVELS, ScoreResult
from humanaes.scorer import BaseScorer


class PixelScorer(BaseScorer):
    """A legitimate tiny model: every score is a fixed function of the image's pixels.

    Brightness drives the overall score; channel statistics drive the twelve dimensions (so the
    report's radar path gets real, varying data).
    """

    name = "pixel-test"
    supported_modes = ("fast", "expert", "metavoter", "all")
    default_mode = "fast"

    def __init__(self, interrupt_on_batch: int | None = None) -> None:
        self.calls: list[tuple[list[str], str, dict[str, Any]]] = []
        self.interrupt_on_batch = interrupt_on_batch

    def prepare(self, image: Image.Image, **options: Any) -> np.ndarray:
        return np.asarray(image.resize((8, 8)), dtype=np.float64) / 255.0

    def score_prepared(self, prepared: list[Any], names: list[str], mode: str, **options: Any) -> list[ScoreResult]:
        self.calls.append((list(names), mode, dict(options)))
        if self.interrupt_on_batch is not None and len(self.calls) == self.interrupt_on_batch:
            raise KeyboardInterrupt  # what Ctrl-C in the middle of a forward pass looks like
        results = []
        for arr, name in zip(prepared, names):
            means = arr.reshape(-1, 3).mean(axis=0)
            brightness = float(means.mean())
            # Level probabilities peaked at the brightness' level bin.
            centres = np.array([LEVEL_CENTRES[lv] for lv in LEVELS])
            logits = -((centres - brightness) ** 2) * 40
            probs = np.exp(logits) / np.exp(logits).sum()
            result = ScoreResult(image=name)
            result.level_probs = {lv: float(p) for lv, p in zip(LEVELS, probs)}
            result.lm_score = float((probs * centres).sum())
            result.regression_score = brightness
            expert_overall = None
            if mode in ("expert", "metavoter", "all"):
                base = [means[i % 3] * (0.5 + 0.04 * i) for i in range(len(DIMENSIONS))]
                result.set_expert([float(min(max(v, 0.0), 1.0)) for v in base])
                expert_overall = result.expert[DIMENSIONS[-1]]
            if mode in ("metavoter", "all"):
                result.metavoter_score = (result.lm_score + brightness + expert_overall) / 3
            overall = {
                "fast": brightness,
                "expert": expert_overall,
                "metavoter": result.metavoter_score,
                "all": result.metavoter_score,
            }[mode]
            results.append(result.finalize(overall))
        return results


@pytest.fixture
def scorer(monkeypatch: pytest.MonkeyPatch) -> PixelScorer:
    """Make `humanaes.load` return a PixelScorer; the calls are recorded on it."""
    return install_pixel_scorer(monkeypatch)


def install_pixel_scorer(monkeypatch: pytest.MonkeyPatch) -> PixelScorer:
    """Make `humanaes.load` return a new PixelScorer (also used by test_hostile_inputs)."""
    model = PixelScorer()
    model.load_calls = []  # type: ignore[attr-defined]

    def fake_load(name_or_path: Any = None, **kwargs: Any) -> PixelScorer:
        model.load_calls.append((name_or_path, kwargs))  # type: ignore[attr-defined]
        if name_or_path == "no-such-model":
            raise ModelNotFoundError("model 'no-such-model' not found: not a preset, folder or hub id")
        return model

    monkeypatch.setattr(humanaes, "load", fake_load, raising=False)
    return model


def _img(path: Path, colour: tuple[int, int, int], fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path, format=fmt)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder: 5 images (nested, mixed formats), plus things discovery must skip."""
    return make_photos(tmp_path)


def make_photos(tmp_path: Path) -> Path:
    """The `photos` folder (also used by test_hostile_inputs)."""
    root = tmp_path / "photos"
    _img(root / "b.png", (200, 200, 200))
    _img(root / "a.jpg", (30, 30, 30))
    _img(root / "sub" / "c.webp", (120, 60, 200))
    _img(root / "sub" / "deeper" / "d.BMP", (250, 240, 230), fmt="BMP")
    _img(root / "e.tiff", (90, 160, 90))
    (root / "notes.txt").write_text("not an image\n")
    _img(root / ".hidden.png", (1, 2, 3))
    _img(root / ".cache" / "x.png", (1, 2, 3))
    return root


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, ["score", *args])


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _one_line_error(result: Any) -> str:
    """The error output of a failed command: exit 2, one line, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- discovery ----------------------------------------------------------------------------------


def test_discover_folder_is_recursive_sorted_and_skips_hidden(photos: Path) -> None:
    found = hio.discover_images([photos])
    rel = [p.relative_to(photos.resolve()).as_posix() for p in found]
    assert rel == ["a.jpg", "b.png", "e.tiff", "sub/c.webp", "sub/deeper/d.BMP"]
    assert all(p.is_absolute() for p in found)


def test_discover_dedupes_and_keeps_argument_order(photos: Path) -> None:
    found = hio.discover_images([photos / "sub" / "c.webp", photos])
    assert found[0].name == "c.webp" and len(found) == 5


def test_discover_txt_manifest(tmp_path: Path, photos: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# a comment\nphotos/b.png\n\n{photos / 'a.jpg'}\nphotos/missing.png\n")
    found = hio.discover_images([manifest])
    # Missing entries are kept: they become error rows instead of aborting a long run.
    assert [p.name for p in found] == ["b.png", "a.jpg", "missing.png"]


def test_discover_jsonl_manifest_keys_and_images_folder(tmp_path: Path) -> None:
    subset = tmp_path / "HumanBeauty-58K"
    _img(subset / "images" / "x.jpg", (10, 20, 30))
    _img(tmp_path / "y.png", (10, 20, 30))
    (subset / "label.jsonl").write_text(json.dumps({"image_name": "x.jpg", "score": 0.5}) + "\n")
    rows = [{"image": "y.png"}, {"path": "HumanBeauty-58K/images/x.jpg"}, {"image_name": "y.png"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.name for p in hio.discover_images([subset / "label.jsonl"])] == ["x.jpg"]
    assert [p.name for p in hio.discover_images([tmp_path / "m.jsonl"])] == ["y.png", "x.jpg"]


@pytest.mark.parametrize(
    "content, message",
    [("{not json\n", "not valid JSON"), ('{"score": 1}\n', "no 'image'"), ("\n\n", "lists no images")],
)
def test_discover_bad_manifests(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(HumanAesError, match=message):
        hio.discover_images([tmp_path / "m.jsonl"])


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(HumanAesError, match="no such file or folder"):
        hio.discover_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(HumanAesError, match="no images in this folder"):
        hio.discover_images([tmp_path / "empty"])


def test_columns() -> None:
    assert hio.COLUMNS[:6] == ("image", "overall", "level", "lm_score", "regression_score", "metavoter_score")
    assert hio.COLUMNS[6:11] == ("prob_bad", "prob_poor", "prob_fair", "prob_good", "prob_excellent")
    assert hio.DIMENSION_COLUMNS[0] == "facial_brightness"
    assert hio.DIMENSION_COLUMNS[10] == "general_appearance_aesthetic_score"
    assert hio.COLUMNS[-7:] == ("annotation", "error", "model", "mode", "extra", "person_found", "display")
    assert len(hio.COLUMNS) == 6 + 5 + 12 + 7
    assert hio.LEGACY_COLUMNS == hio.COLUMNS[:-3]
    assert hio.OLDER_LAYOUTS == (hio.COLUMNS[:-2], hio.LEGACY_COLUMNS)


@pytest.mark.parametrize(
    "out, fmt, expected",
    [
        (None, None, "table"),
        (None, "csv", "csv"),
        ("r.csv", None, "csv"),
        ("r.JSONL", None, "jsonl"),
        ("r.parquet", "parquet", "parquet"),
        ("r.data", "jsonl", "jsonl"),
    ],
)
def test_resolve_output_format(out: str | None, fmt: str | None, expected: str) -> None:
    assert hio.resolve_output_format(Path(out) if out else None, fmt) == expected


@pytest.mark.parametrize(
    "out, fmt, message",
    [("r.csv", "jsonl", "make them agree"), ("r.data", None, "cannot tell"), ("r.csv", "table", "prints to the terminal"),
     (None, "parquet", "pass --out")],
)
def test_resolve_output_format_errors(out: str | None, fmt: str | None, message: str) -> None:
    with pytest.raises(HumanAesError, match=message):
        hio.resolve_output_format(Path(out) if out else None, fmt)


# -- scoring ------------------------------------------------------------------------------------


def test_table_to_stdout(photos: Path, scorer: PixelScorer) -> None:
    result = _run(str(photos), "--quiet")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["image", "overall", "level"]
    assert len(lines) == 2 + 5
    assert "a.jpg" in lines[2] and "bad" in lines[2]  # darkest image first (sorted), lowest score
    assert scorer.load_calls == [(None, {"device": "auto", "dtype": "auto"})]  # type: ignore[attr-defined]
    assert [c[1] for c in scorer.calls] == ["fast"]  # default mode of the scorer, one batch of 5 (< 8)


def test_csv_output_columns_values_and_resume(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "scores.csv"
    result = _run(str(photos), "--out", str(out), "--mode", "all", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "scored 5 images" in result.stderr
    with open(out, newline="") as fh:
        assert next(csv.reader(fh)) == list(hio.COLUMNS)
    rows = _csv_rows(out)
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "b.png", "e.tiff", "c.webp", "d.BMP"]
    first = rows[0]
    assert first["model"] == "pixel-test" and first["mode"] == "all" and first["error"] == ""
    assert abs(sum(float(first[c]) for c in hio.PROB_COLUMNS) - 1) < 1e-9
    assert all(first[c] != "" for c in hio.DIMENSION_COLUMNS)
    assert float(first["overall"]) == pytest.approx(float(first["metavoter_score"]))
    assert [len(c[0]) for c in scorer.calls] == [2, 2, 1]

    # Rerun: nothing to do, no model needed, file untouched.
    before = out.read_bytes()
    scorer.calls.clear()
    result = _run(str(photos), "--out", str(out), "--mode", "all")
    assert result.exit_code == 0 and "nothing to do" in result.stderr
    assert out.read_bytes() == before and scorer.calls == []

    # A new image: only it is scored and appended; the header stays single.
    _img(photos / "f.png", (128, 128, 128))
    result = _run(str(photos), "--out", str(out), "--mode", "all")
    assert result.exit_code == 0, result.output
    assert "5 skipped" in result.stderr
    assert [c[0] for c in scorer.calls] == [[str((photos / "f.png").resolve())]]
    rows = _csv_rows(out)
    assert len(rows) == 6 and len({r["image"] for r in rows}) == 6
    assert out.read_text().count("image,overall") == 1


def _with_extra(scorer: PixelScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results carry model-specific facts in `extra`, as the bundled model's face branch does."""
    plain = scorer.score_prepared

    def score_prepared(prepared: list[Any], names: list[str], mode: str, **options: Any) -> list[ScoreResult]:
        results = plain(prepared, names, mode, **options)
        for r in results:
            r.extra = {"face_found": r.overall > 0.5, "face_score": round(r.overall, 3)} if r.overall > 0.5 else {"face_found": False}
        return results

    monkeypatch.setattr(scorer, "score_prepared", score_prepared)


def test_extra_facts_travel_in_csv_and_parquet(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _with_extra(scorer, monkeypatch)
    out = tmp_path / "scores.csv"
    assert _run(str(photos), "--out", str(out)).exit_code == 0
    rows = {Path(r["image"]).name: r for r in _csv_rows(out)}
    assert json.loads(rows["a.jpg"]["extra"]) == {"face_found": False}
    bright = json.loads(rows["b.png"]["extra"])
    assert bright["face_found"] is True and bright["face_score"] == pytest.approx(float(rows["b.png"]["overall"]), abs=1e-3)
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    out = tmp_path / "scores.parquet"
    assert _run(str(photos), "--out", str(out)).exit_code == 0
    extra = {Path(i).name: e for i, e in zip(pq.read_table(out).column("image").to_pylist(), pq.read_table(out).column("extra").to_pylist())}
    assert json.loads(extra["a.jpg"]) == {"face_found": False}


def test_outputs_from_before_the_extra_column_still_resume(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _with_extra(scorer, monkeypatch)
    old = hio.flat_row(ScoreResult(image=str((photos / "a.jpg").resolve())).finalize(0.1), model="pixel-test", mode="fast")
    legacy_csv = tmp_path / "old.csv"
    # written the way humanaes 0.1 wrote it: LF line ends, no extra/person_found/display
    legacy_csv.write_text(hio.render_csv([list(hio.LEGACY_COLUMNS), [old[c] for c in hio.LEGACY_COLUMNS]]).replace("\r\n", "\n"))
    result = _run(str(photos), "--out", str(legacy_csv))
    assert result.exit_code == 0, result.output
    assert "without the extra, person_found, display column(s)" in result.stderr and "1 skipped" in result.stderr
    with open(legacy_csv, newline="") as fh:
        records = list(csv.reader(fh))
    assert tuple(records[0]) == hio.COLUMNS and len(records) == 6  # upgraded in place: one layout
    assert all(len(r) == len(hio.COLUMNS) for r in records)
    assert records[1][0] == old["image"] and float(records[1][1]) == 0.1  # the old row kept, not rescored
    assert records[1][-1] == old["image"]  # its display defaults to its key

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    legacy_pq = tmp_path / "old.parquet"
    schema = pa.schema([f for f in hio.parquet_schema() if f.name in hio.LEGACY_COLUMNS])
    pq.write_table(pa.Table.from_pylist([{c: old[c] for c in hio.LEGACY_COLUMNS}], schema=schema), legacy_pq)
    result = _run(str(photos), "--out", str(legacy_pq))
    assert result.exit_code == 0, result.output
    table = pq.read_table(legacy_pq)
    assert tuple(table.column_names) == hio.COLUMNS and table.num_rows == 5  # upgraded on close
    by_name = dict(zip((Path(i).name for i in table.column("image").to_pylist()), table.column("extra").to_pylist()))
    assert by_name["a.jpg"] is None and json.loads(by_name["b.png"])["face_found"] is True


def test_jsonl_keeps_nested_dicts(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "scores.jsonl"
    result = _run(str(photos / "b.png"), "--out", str(out), "--mode", "expert")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(row["expert"]) == set(DIMENSIONS) and set(row["level_probs"]) == set(LEVELS)
    assert row["model"] == "pixel-test" and row["mode"] == "expert" and row["error"] is None
    assert row["overall"] == row["expert"]["Comprehensive Aesthetic Score"]


def test_csv_and_jsonl_to_stdout(photos: Path, scorer: PixelScorer) -> None:
    result = _run(str(photos / "a.jpg"), "--format", "csv", "-q")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == ",".join(hio.COLUMNS)
    result = _run(str(photos / "a.jpg"), "--format", "jsonl", "-q")
    assert json.loads(result.stdout)["image"].endswith("a.jpg")


def test_unreadable_image_gives_error_row_and_exit_1(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "s.csv"
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 1
    rows = {Path(r["image"]).name: r for r in _csv_rows(out)}
    assert len(rows) == 6
    assert "broken.jpg" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["overall"] == ""
    assert rows["a.jpg"]["error"] == ""
    assert "1 failed: " in result.stderr and "broken.jpg (" in result.stderr

    # Resume skips the failed row unless asked to retry it.
    scorer.calls.clear()
    assert _run(str(photos), "--out", str(out)).exit_code == 0
    (photos / "broken.jpg").unlink()
    _img(photos / "broken.jpg", (5, 5, 5))
    result = _run(str(photos), "--out", str(out), "--retry-errors")
    assert result.exit_code == 0, result.output
    rows = [r for r in _csv_rows(out) if r["image"].endswith("broken.jpg")]
    assert [bool(r["error"]) for r in rows] == [False]  # the retried row replaced the error row


def test_interrupt_keeps_finished_batches_and_resumes(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = PixelScorer(interrupt_on_batch=2)
    monkeypatch.setattr(humanaes, "load", lambda *a, **k: model, raising=False)
    out = tmp_path / "s.jsonl"
    result = _run(str(photos), "--out", str(out), "--batch-size", "2")
    assert result.exit_code == 130
    assert "rerun the same command to resume" in result.stderr
    assert len(out.read_text().splitlines()) == 2  # the first batch, complete

    model.interrupt_on_batch = None
    model.calls.clear()
    result = _run(str(photos), "--out", str(out), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert sum(len(c[0]) for c in model.calls) == 3
    images = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert len(images) == 5 and len(set(images)) == 5


_DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
import humanaes
from test_cli_score import PixelScorer

class Slow(PixelScorer):
    def score_prepared(self, *args, **kwargs):
        time.sleep(0.15)
        return super().score_prepared(*args, **kwargs)

humanaes.load = lambda *a, **k: Slow()
from humanaes.cli import main
main(sys.argv[1:])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_mid_run_loses_nothing_written(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    import signal
    import subprocess
    import time

    for i in range(6):
        _img(photos / f"more{i}.png", (40 * i, 50, 60))
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER.format(tests=str(Path(__file__).resolve().parent)))
    out = tmp_path / "s.jsonl"
    proc = subprocess.Popen([sys.executable, str(driver), "score", str(photos), "--out", str(out), "--batch-size", "1",
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    complete = out.read_text().split("\n")[:-1]  # a torn last line (if any) is the next run's business
    written = [json.loads(line) for line in complete]
    assert 3 <= len(written) < 11  # killed mid-run, every finished row intact

    result = _run(str(photos), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    images = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert len(images) == 11 and len(set(images)) == 11


def test_jsonl_torn_last_line_is_cut_with_warning(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "s.jsonl"
    assert _run(str(photos / "a.jpg"), str(photos / "b.png"), "--out", str(out)).exit_code == 0
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # a crash in the middle of the write
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "cut off" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["image"] for r in rows}) == 5


def test_jsonl_missing_final_newline_keeps_row(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "s.jsonl"
    assert _run(str(photos / "a.jpg"), "--out", str(out)).exit_code == 0
    out.write_text(out.read_text().rstrip("\n"))
    scorer.calls.clear()
    assert _run(str(photos / "a.jpg"), str(photos / "b.png"), "--out", str(out)).exit_code == 0
    assert len(scorer.calls[0][0]) == 1
    assert len(out.read_text().splitlines()) == 2


def test_csv_torn_last_row_with_multiline_field(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "s.csv"
    assert _run(str(photos / "a.jpg"), "--out", str(out)).exit_code == 0
    good = out.read_text()
    # A torn row whose quoted field already contains a newline must not pass as complete.
    torn = good + f'{photos / "b.png"},0.5,fair,,,,,,,,,,,,,,,,,,,,,,"line one\nline tw'
    out.write_text(torn)
    result = _run(str(photos / "a.jpg"), str(photos / "b.png"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "cut off" in result.stderr
    rows = _csv_rows(out)
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "b.png"] and rows[1]["overall"] != "0.5"


def test_csv_multiline_annotation_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    writer = hio.CsvWriter(out)
    res = ScoreResult(image="/x/a.png", annotation='Facial Brightness: good\n"Outfit": fair,\nLooks: poor')
    writer.write_batch([res.finalize(0.5)], model="m", mode="annotate")
    writer.close()
    again = hio.CsvWriter(out)
    assert again.existing[0]["annotation"] == res.annotation and again.existing[0]["overall"] == 0.5
    again.close()


def test_csv_torn_header_restarts_file(tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    out.write_text("image,overall,le")
    writer = hio.CsvWriter(out, warn=lambda m: None)
    writer.write_batch([ScoreResult(image="/a.png").finalize(0.1)], model="m", mode="fast")
    writer.close()
    assert [r["image"] for r in _csv_rows(out)] == ["/a.png"]


@dataclasses.dataclass(frozen=True)
class TiledOptions(ScoreOptions):
    max_tiles: int | None = option(None, "tiles", minimum=1)


class TiledPixelScorer(PixelScorer):
    """A PixelScorer that declares a max_tiles option and records how each image was decoded."""

    options_class = TiledOptions

    def __init__(self) -> None:
        super().__init__()
        self.exif_seen: list[bool] = []

    def decode(self, source: Any, name: str, options: ScoreOptions) -> Image.Image:
        self.exif_seen.append(options.apply_exif)
        return super().decode(source, name, options)


def test_options_max_tiles_and_no_exif(photos: Path, scorer: PixelScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    tiled = TiledPixelScorer()
    monkeypatch.setattr(humanaes, "load", lambda name_or_path=None, **kwargs: tiled, raising=False)
    assert _run(str(photos / "a.jpg"), "-q").exit_code == 0
    assert tiled.calls[-1][2] == {"max_tiles": None} and tiled.exif_seen == [True]
    result = _run(str(photos / "a.jpg"), "-q", "--max-tiles", "6", "--no-exif")
    assert result.exit_code == 0, result.output
    assert tiled.calls[-1][2] == {"max_tiles": 6} and tiled.exif_seen == [True, False]
    assert tiled.apply_exif is True  # --no-exif is an option of the run, not a change to the scorer


def test_typed_options_with_dash_o(photos: Path, scorer: PixelScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o NAME=VALUE` reaches the model typed (text "4" -> int 4); an ill-typed or unknown one is exit 2."""
    tiled = TiledPixelScorer()
    monkeypatch.setattr(humanaes, "load", lambda name_or_path=None, **kwargs: tiled, raising=False)
    result = _run(str(photos / "a.jpg"), "-q", "-o", "max_tiles=4", "--option", "apply-exif=false")
    assert result.exit_code == 0, result.output
    assert tiled.calls[-1][2] == {"max_tiles": 4} and tiled.exif_seen == [False]
    line = _one_line_error(_run(str(photos / "a.jpg"), "-o", "max_tiles=many"))
    assert "max_tiles" in line
    line = _one_line_error(_run(str(photos / "a.jpg"), "-o", "temperature=0.5"))
    assert "'temperature'" in line and "not available" in line
    line = _one_line_error(_run(str(photos / "a.jpg"), "-o", "max_tiles"))
    assert "expected NAME=VALUE" in line
    assert len(tiled.calls) == 1  # none of the refused runs reached the model


def test_option_the_model_cannot_use_is_exit_2(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "s.jsonl"
    line = _one_line_error(_run(str(photos / "a.jpg"), "--max-tiles", "6", "--out", str(out)))
    assert "'max_tiles'" in line and "pixel-test" in line
    assert scorer.calls == [] and (not out.exists() or out.read_text() == "")


def test_report_flag_writes_html(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out, report = tmp_path / "s.csv", tmp_path / "r.html"
    assert _run(str(photos / "a.jpg"), "--out", str(out), "--mode", "expert", "-q").exit_code == 0
    result = _run(str(photos), "--out", str(out), "--mode", "expert", "--report", str(report), "-q")
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert page.count('<tr class="ok">') == 5  # the resumed rows are in the report too
    assert page.count('class="radar"') == 5


# -- bad input ----------------------------------------------------------------------------------


def test_error_nonexistent_path(tmp_path: Path, scorer: PixelScorer) -> None:
    line = _one_line_error(_run(str(tmp_path / "nope.jpg")))
    assert "nope.jpg" in line and "no such file" in line


def test_error_folder_without_images(tmp_path: Path, scorer: PixelScorer) -> None:
    (tmp_path / "empty").mkdir()
    assert "no images" in _one_line_error(_run(str(tmp_path / "empty")))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "X/s.csv", "--format", "jsonl"], "make them agree"),
        (["--out", "X/s.txt"], "cannot tell the output format"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-tiles", "0"], "--max-tiles"),
        (["--model", "no-such-model"], "not found"),
        (["--mode", "annotate"], "not available with model"),
        (["--report", "X/r.pdf"], ".html"),
        (["--out", "X/missing/s.csv"], "does not exist"),
    ],
)
def test_usage_errors(tmp_path: Path, photos: Path, scorer: PixelScorer, args: list[str], message: str) -> None:
    args = [a.replace("X/", f"{tmp_path}/") for a in args]
    line = _one_line_error(_run(str(photos), *args))
    assert message in line
    assert scorer.calls == []  # failed before any work
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "name, content",
    [("s.csv", "name,score\nx,1\n"), ("s.jsonl", "hello world\n"), ("s.jsonl", '{"a": 1}\n'), ("s.csv", b"\x89PNG\x00\xff")],
)
def test_error_existing_output_of_another_format(
    tmp_path: Path, photos: Path, scorer: PixelScorer, name: str, content: str | bytes
) -> None:
    out = tmp_path / name
    out.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = _one_line_error(_run(str(photos), "--out", str(out)))
    assert "choose another --out" in line
    assert out.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # untouched


def test_error_resume_with_another_mode(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "s.csv"
    assert _run(str(photos / "a.jpg"), "--out", str(out), "-q").exit_code == 0
    assert "mode fast, not expert" in _one_line_error(_run(str(photos), "--out", str(out), "--mode", "expert"))


# -- parquet ------------------------------------------------------------------------------------


def test_parquet_missing_pyarrow_is_a_clear_error(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert "pyarrow" in _one_line_error(_run(str(photos), "--out", str(tmp_path / "s.parquet")))


def test_parquet_output_resume_and_journal(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    model = PixelScorer(interrupt_on_batch=2)
    monkeypatch.setattr(humanaes, "load", lambda *a, **k: model, raising=False)
    out = tmp_path / "s.parquet"
    assert _run(str(photos), "--out", str(out), "--batch-size", "2", "-q").exit_code == 130
    # Ctrl-C still finalises the Parquet file with the finished batch; the journal is gone.
    assert pq.read_table(out).num_rows == 2 and not hio.journal_path(out).exists()

    # Simulate a hard kill: a journal with one more row (and a torn line) next to the file.
    extra = hio.flat_row(ScoreResult(image=str((photos / "e.tiff").resolve())).finalize(0.4), model="pixel-test",
                         mode="fast")
    hio.journal_path(out).write_text(json.dumps(extra) + "\n" + '{"image": "/tor')
    model.interrupt_on_batch = None
    model.calls.clear()
    result = _run(str(photos), "--out", str(out), "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "picking up 1 rows" in result.stderr
    assert sum(len(c[0]) for c in model.calls) == 2
    table = pq.read_table(out)
    assert tuple(table.column_names) == hio.COLUMNS
    assert table.num_rows == 5 and len(set(table.column("image").to_pylist())) == 5
    assert not hio.journal_path(out).exists()


# -- the resume policy (humanaes.io.writers.ResumableOutput) and the run settings --------------


def _key(name: str) -> str:
    return hio.image_key(f"/data/{name}.jpg")


def _item(name: str) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(key=_key(name))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_resumable_output_says_what_is_done_and_replaces_a_retried_row(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"s.{fmt}"
    ok_a, bad_b, ok_c = ScoreResult(_key("a"), overall=0.25), ScoreResult.failed(_key("b"), "b: broken"), ScoreResult(_key("c"), overall=0.75)
    with hio.open_output(out, fmt) as first:
        first.write([ok_a, bad_b, ok_c], model="m1", mode="fast")
        assert first.written == [ok_a, bad_b, ok_c]
    items = [_item(n) for n in "abcd"]

    resumed = hio.open_output(out, fmt)
    assert [i.key for i in resumed.remaining(items)] == [_key("d")]  # a failed row counts as done ...
    assert resumed.earlier_failures == 1 and resumed.earlier_modes == {"fast"} and resumed.earlier_models == {"m1"}
    resumed.check_mode("fast")
    with pytest.raises(HumanAesError, match=r"holds results of mode fast, not expert; use another --out"):
        resumed.check_mode("expert")
    assert not resumed.mixes_models("m1") and resumed.mixes_models("m2")
    resumed.close()

    retry = hio.open_output(out, fmt, retry_errors=True)
    assert [i.key for i in retry.remaining(items)] == [_key("b"), _key("d")]  # ... unless retried
    retry.write([ScoreResult(_key("b"), overall=0.5)], model="m1", mode="fast")
    retry.close()
    text = out.read_text(encoding="utf-8")  # before any reopen (opening compacts a file too)
    assert len(text.splitlines()) == 3 + (fmt == "csv") and "broken" not in text  # rewritten on close
    rows = hio.open_writer(out, fmt).existing
    assert [(r["image"], r["overall"], r["error"]) for r in rows] == [
        (_key("a"), 0.25, None), (_key("b"), 0.5, None), (_key("c"), 0.75, None)
    ]  # one row per image: the retried row took the error row's place


def test_table_output_has_nothing_to_resume() -> None:
    import io

    output = hio.open_output(None, "table", retry_errors=True, stream=io.StringIO())
    assert output.remaining([_item("a")])[0].key == _key("a") and output.earlier_failures == 0
    output.check_mode("expert")  # nothing earlier to clash with


def test_score_settings_are_checked_before_the_model_loads(tmp_path: Path) -> None:
    from humanaes.cli.score import ScoreSettings

    flags = ScoreSettings(paths=(tmp_path,), mode="Expert", batch_size=4, device="CPU", dtype="Float32",
                          out=tmp_path / "s.jsonl", no_exif=True, quiet=True)
    settings = flags.checked()
    assert (settings.fmt, settings.mode, settings.device, settings.dtype) == ("jsonl", "expert", "cpu", "float32")
    tiled = TiledPixelScorer()
    assert settings.scoring_options(tiled) == {"apply_exif": False}
    assert dataclasses.replace(flags, max_tiles=3, no_exif=False).scoring_options(tiled) == {"max_tiles": 3}
    # -o values are text until typed against the model's options
    assert dataclasses.replace(flags, no_exif=False, extra_options=("max-tiles=5",)).scoring_options(tiled) == {"max_tiles": 5}
    with pytest.raises(HumanAesError, match="--batch-size must be at least 1, got 0"):
        dataclasses.replace(flags, batch_size=0).checked()
    with pytest.raises(HumanAesError, match="is a jsonl file name but --format is csv"):
        dataclasses.replace(flags, fmt="csv").checked()
    assert ScoreSettings(paths=(tmp_path,)).checked().fmt == "table"


# -- models -------------------------------------------------------------------------------------


def test_models_command(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [
        {"name": "humanaes-1b", "kind": "preset", "description": "HumanAesExpert-1B", "score_meaning": "MOS in [0, 1]"},
        {"name": "tiny", "kind": "bundled", "description": "tiny demo <model>", "score_meaning": "demo only"},
    ]
    monkeypatch.setattr(humanaes, "list_models", lambda: entries, raising=False)
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["name", "kind"] and "humanaes-1b" in lines[2] and "demo only" in lines[3]
    result = CliRunner().invoke(main, ["models", "--json"])
    assert json.loads(result.stdout) == entries


def test_threads_option_sets_torch_threads(photos: Path, scorer: PixelScorer) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        result = _run(str(photos), "--quiet", "--threads", "1")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        bad = _run(str(photos), "--threads", "0")
        assert bad.exit_code == 2 and "--threads" in bad.output
    finally:
        torch.set_num_threads(before)


def test_sampled_annotation_from_the_cli_is_the_api_s(tmp_path: Path) -> None:
    """`-o do_sample=true -o seed=N` on the tiny HumanAesExpert preset writes the very text
    `scorer.score(..., do_sample=True, seed=N)` gives, and differs from greedy decoding."""
    image = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
    scorer = humanaes.load("humanaes-tiny", device="cpu", dtype="float32", threads=None)
    greedy = scorer.score([image], mode="annotate", max_new_tokens=24)[0].annotation
    sampled = scorer.score([image], mode="annotate", max_new_tokens=24, do_sample=True, seed=7)[0].annotation
    assert sampled != greedy
    out = tmp_path / "s.jsonl"
    result = _run(str(image), "--model", "humanaes-tiny", "--dtype", "float32", "--mode", "annotate", "-q",
                  "-o", "max_new_tokens=24", "-o", "do_sample=true", "-o", "seed=7", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text().splitlines()[0])["annotation"] == sampled
