"""Hostile file systems and repeated runs against `humanaes score` (issue 10 cases 1-6 and 8,
issue 11 outputs): each test names the bug it catches.

Uses the pixel-based test scorer of test_cli_score (no weights, about a second per run).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_cli_score import PixelScorer, _img, _one_line_error, install_pixel_scorer, make_photos

from humanaes import io as hio
from humanaes.cli import main
from humanaes.errors import ImageLoadError
from humanaes.fsutil import OutputLock
from humanaes.io.images import load_image
from humanaes.schema import ScoreResult

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file system semantics")

FORMATS = ("csv", "jsonl", "parquet")


@pytest.fixture
def scorer(monkeypatch: pytest.MonkeyPatch) -> PixelScorer:
    return install_pixel_scorer(monkeypatch)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """5 images: a.jpg, b.png, e.tiff, sub/c.webp, sub/deeper/d.BMP (plus hidden and non-image files)."""
    return make_photos(tmp_path)


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, ["score", *args])


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging forever (a FIFO read blocks until a writer appears)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s: something blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read_rows(out: Path) -> list[dict[str, Any]]:
    """The rows of an output as pandas / pyarrow read them (not through humanaes)."""
    if out.suffix == ".csv":
        import pandas as pd

        frame = pd.read_csv(out, dtype={"image": str, "display": str, "error": str}, keep_default_na=False)
        return frame.to_dict("records")
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(out).to_pylist()


def by_key(out: Path) -> dict[str, dict[str, Any]]:
    rows = read_rows(out)
    keys = [r["image"] for r in rows]
    assert len(keys) == len(set(keys)), f"two rows for one image in {out.name}: {keys}"
    return dict(zip(keys, rows))


# -- 1. one writer per output ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_second_run_on_the_same_out_is_refused_naming_the_pid(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                              fmt: str) -> None:
    # Bug caught: no lock -> both runs append (lost Parquet rows, doubled JSONL rows, 2nd CSV header).
    pytest.importorskip("pyarrow")
    out = tmp_path / f"s.{fmt}"
    with OutputLock(out):  # another open file description: conflicts like another process
        line = _one_line_error(_run(str(photos), "--out", str(out)))
    assert f"process {os.getpid()}" in line and "--out" in line
    assert scorer.calls == [] and not out.exists()
    assert _run(str(photos), "--out", str(out), "-q").exit_code == 0  # released: the next run works


def test_second_run_on_the_same_report_is_refused(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    report = tmp_path / "r.html"
    with OutputLock(report, what="--report"):
        line = _one_line_error(_run(str(photos), "--report", str(report)))
    assert "--report" in line and str(os.getpid()) in line and not report.exists()


_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\\n".encode())
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_killed_run_leaves_no_stuck_lock(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: a lock file that means "taken" by its mere existence (a pid file) stays after SIGKILL.
    out = tmp_path / "s.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out) + ".lock"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert f"process {holder.pid}" in _one_line_error(_run(str(photos), "--out", str(out)))
    finally:
        holder.kill()
        holder.wait(timeout=30)
    result = _run(str(photos), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    assert len(by_key(out)) == 5


# -- 2. FIFOs, sockets, devices -------------------------------------------------------------------


@pytest.fixture
def specials(tmp_path: Path, photos: Path) -> Iterator[dict[str, Path]]:
    fifo = photos / "p.jpg"
    os.mkfifo(fifo)
    sock_path = photos / "s.png"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(sock_path))
    except OSError:  # path too long for a UNIX socket on this machine
        sock.close()
        sock_path = None  # type: ignore[assignment]
    yield {"fifo": fifo, **({"socket": sock_path} if sock_path else {})}
    sock.close()


def test_fifo_and_socket_in_a_folder_are_error_rows_never_opened(tmp_path: Path, photos: Path, specials: dict[str, Path],
                                                                  scorer: PixelScorer) -> None:
    # Bug caught: discovery hands the FIFO to the decoder, whose read_bytes() blocks forever.
    out = tmp_path / "s.jsonl"
    with deadline(30):
        result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 1, result.output
    rows = by_key(out)
    assert len(rows) == 5 + len(specials)
    fifo_row = rows[str(specials["fifo"])]
    assert "FIFO" in fifo_row["error"] and "not opened" in fifo_row["error"] and fifo_row["overall"] is None
    if "socket" in specials:
        assert "socket" in rows[str(specials["socket"])]["error"]
    scored = {n for call in scorer.calls for n in call[0]}
    assert str(specials["fifo"]) not in scored


def test_discovery_marks_specials_without_opening(photos: Path, specials: dict[str, Path]) -> None:
    # Bug caught: discovery classifies only by extension (the FIFO goes to the model as an image).
    with deadline(10):
        items = {i.key: i for i in hio.discover_inputs([photos])}
    assert "FIFO" in (items[str(specials["fifo"])].error or "")
    assert items[str(photos / "a.jpg")].error is None


@pytest.mark.parametrize("how", ["direct", "manifest"])
def test_fifo_given_directly_or_listed_is_an_error_row(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                       how: str) -> None:
    fifo = tmp_path / "direct.jpg"
    os.mkfifo(fifo)
    args = [str(fifo), str(photos / "a.jpg"), "/dev/null"]
    if how == "manifest":
        manifest = tmp_path / "m.txt"
        manifest.write_text("".join(a + "\n" for a in args))
        args = [str(manifest)]
    out = tmp_path / "s.csv"
    with deadline(30):
        result = _run(*args, "--out", str(out))
    assert result.exit_code == 1, result.output
    rows = by_key(out)
    assert "FIFO" in rows[str(fifo)]["error"] and "device" in rows["/dev/null"]["error"]
    assert rows[str(photos / "a.jpg")]["error"] == ""


def test_load_image_refuses_a_fifo_instead_of_blocking(tmp_path: Path) -> None:
    # Bug caught: load_image(path) reads any path with read_bytes(), which blocks on a FIFO.
    fifo = tmp_path / "p.jpg"
    os.mkfifo(fifo)
    with deadline(10), pytest.raises(ImageLoadError, match=r"FIFO \(named pipe\), not a regular file"):
        load_image(fifo)
    with pytest.raises(ImageLoadError, match="device"):
        load_image("/dev/zero")  # would otherwise read forever


def test_load_image_refuses_a_file_too_big_for_any_allowed_image(tmp_path: Path) -> None:
    # Bug caught: a sparse multi-gigabyte "photo" is read whole into memory before decoding.
    big = tmp_path / "sparse.jpg"
    with open(big, "wb") as fh:
        fh.truncate(10_000_000)  # sparse: no disk used
    with pytest.raises(ImageLoadError, match="larger than any image within the pixel limit"):
        load_image(big, max_pixels=1000)  # at most 1000 * 8 bytes + 1 MiB
    with pytest.raises(ImageLoadError, match="looks like|not an image|starts with"):  # no limit: read, then refused as data
        load_image(big, max_pixels=None)


# -- 3. symlink loops and dangling links ----------------------------------------------------------


def test_symlink_loop_and_dangling_link_are_error_rows_keyed_by_the_link(tmp_path: Path, photos: Path,
                                                                         scorer: PixelScorer) -> None:
    # Bugs caught: .resolve() on a loop raises (traceback, nothing scored); a dangling link's row is
    # keyed by its target; a good link's row is keyed by its target (so two links collapse).
    (photos / "loop_a.jpg").symlink_to("loop_b.jpg")
    (photos / "loop_b.jpg").symlink_to("loop_a.jpg")
    (photos / "dangling.png").symlink_to(tmp_path / "gone.png")
    (photos / "alias.jpg").symlink_to("a.jpg")
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{photos / 'loop_a.jpg'}\n{photos / 'b.png'}\n")
    out = tmp_path / "s.parquet"
    pytest.importorskip("pyarrow")
    result = _run(str(manifest), str(photos), "--out", str(out))  # the manifest's items come first
    assert result.exit_code == 1, result.output
    rows = by_key(out)
    assert len(rows) == 5 + 4
    assert "symlink loop" in rows[str(photos / "loop_a.jpg")]["error"]
    assert f"listed in {manifest}, line 1" in rows[str(photos / "loop_a.jpg")]["error"]
    assert "symlink loop" in rows[str(photos / "loop_b.jpg")]["error"]
    dangling = rows[str(photos / "dangling.png")]
    assert "dangling symlink" in dangling["error"] and "gone.png" in dangling["error"]
    assert str(tmp_path / "gone.png") not in rows
    assert rows[str(photos / "alias.jpg")]["error"] is None  # a good link is scored, under its own name
    assert rows[str(photos / "alias.jpg")]["overall"] == rows[str(photos / "a.jpg")]["overall"]


# -- 4. names: non-UTF-8 bytes, CR/LF, quotes, commas ---------------------------------------------


def _bytes_name(folder: Path, name: bytes) -> str:
    path = os.path.join(os.fsencode(folder), name)
    _img(Path(os.fsdecode(path)), (70, 80, 90), fmt="PNG")
    return os.fsdecode(path)


def test_image_key_encoding_is_injective_and_reversible(tmp_path: Path) -> None:
    # Bug caught: "percent-encode only the bad names" gives b"l_\xe9" and the valid name "l_%E9" one key.
    bad, literal = b"/d/l_\xe9.jpg", b"/d/l_%E9.jpg"
    assert hio.image_key(bad) == "bytes:/d/l_%E9.jpg"
    assert hio.image_key(literal) == "/d/l_%E9.jpg"
    assert hio.image_key(os.fsdecode(bad)) == hio.image_key(bad)  # surrogate-escaped str: same key
    for raw in (bad, literal, b"/d/100%\xff%", b"/d/%41\xff", b"/d/\xc3\xa9\xe9 x,y\n.png"):
        assert os.fsencode(hio.key_to_path(hio.image_key(raw))) == raw
    assert hio.image_key(b"/d/%41\xff") != hio.image_key(b"/d/A\xff")
    assert hio.image_key("rel/./x.jpg") == os.path.join(os.getcwd(), "rel", "x.jpg")
    assert hio.image_key("a/../b.jpg") == os.path.join(os.getcwd(), "b.jpg")  # lexical, like abspath
    link = tmp_path / "link.jpg"
    link.symlink_to(tmp_path / "target.jpg")
    assert hio.image_key(link) == str(link)  # not resolved


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_utf8_names_are_written_and_resume(tmp_path: Path, photos: Path, scorer: PixelScorer, fmt: str) -> None:
    # Bug caught: UnicodeEncodeError in every writer at the batch holding l_\xe9.png (no run can finish).
    pytest.importorskip("pyarrow")
    try:
        bad = _bytes_name(photos, b"l_\xe9.png")
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    literal = _bytes_name(photos, b"l_%E9.png")  # a valid name that looks like the encoding
    out = tmp_path / f"s.{fmt}"
    result = _run(str(photos), "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    rows = by_key(out)
    bad_key = "bytes:" + str(photos).replace("%", "%25") + "/l_%E9.png"
    assert bad_key in rows and literal in rows and len(rows) == 7
    assert rows[bad_key]["display"] == str(photos) + "/l_\\xe9.png"
    assert hio.key_to_path(bad_key) == bad
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 0 and "nothing to do" in result.stderr, result.output


@pytest.mark.parametrize("fmt", FORMATS)
def test_writers_encode_a_raw_undecodable_name_from_the_api(tmp_path: Path, fmt: str) -> None:
    # Bug caught: a result named with surrogate escapes (os.listdir output) crashes the writer.
    pytest.importorskip("pyarrow")
    out = tmp_path / f"s.{fmt}"
    writer = hio.open_writer(out, fmt)
    raw = os.fsdecode(b"/x/l_\xe9.png")
    writer.write_batch([ScoreResult.failed(raw, f"{raw}: broken")], model="m", mode="fast", displays=[raw])
    writer.close()
    (row,) = read_rows(out)
    assert row["image"] == "bytes:/x/l_%E9.png" and row["display"] == "/x/l_\\xe9.png"
    assert row["error"] == "/x/l_\\xe9.png: broken"


ODD_NAMES = ["cr\rname.png", "lf\nname.png", 'quo"te.png', "com,ma.png", "sp ace.png", "<script>x</script>.png",
             "semi;colon.png", "tab\tname.png", "=cmd.png"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_names_round_trip_in_every_format(tmp_path: Path, scorer: PixelScorer, fmt: str) -> None:
    # Bug caught: "\r" written unquoted to CSV (pandas reads an extra row, the resume reader fails).
    pytest.importorskip("pyarrow")
    folder = tmp_path / "odd"
    for i, name in enumerate(ODD_NAMES):
        _img(folder / name, (10 * i, 100, 100), fmt="PNG")
    out = tmp_path / f"s.{fmt}"
    assert _run(str(folder), "--out", str(out), "-q").exit_code == 0
    rows = by_key(out)
    assert set(rows) == {str(folder / n) for n in ODD_NAMES}
    if fmt == "csv":
        import pyarrow.csv as pacsv

        assert sorted(pacsv.read_csv(out).column("image").to_pylist()) == sorted(rows)
    result = _run(str(folder), "--out", str(out))
    assert result.exit_code == 0 and "nothing to do" in result.stderr, result.output


# -- 6. temp files never follow a planted symlink --------------------------------------------------


def test_parquet_temp_file_does_not_follow_a_planted_symlink(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: the Parquet rewrite goes through a fixed "<out>.tmp", which follows a planted link.
    pytest.importorskip("pyarrow")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "s.parquet"
    (tmp_path / "s.parquet.tmp").symlink_to(victim)
    assert _run(str(photos), "--out", str(out), "-q").exit_code == 0
    assert victim.read_text() == "precious"
    assert len(by_key(out)) == 5
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".s.parquet"))
    assert leftovers == []


def test_parquet_journal_symlink_is_refused(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: rows appended through a planted `<out>.partial.jsonl` link into a file of the attacker's choice.
    pytest.importorskip("pyarrow")
    out = tmp_path / "s.parquet"
    hio.journal_path(out).symlink_to(tmp_path / "evil.txt")
    line = _one_line_error(_run(str(photos), "--out", str(out)))
    assert "is a symlink; remove it" in line and not (tmp_path / "evil.txt").exists()


def test_out_that_is_a_fifo_is_refused_without_opening(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    out = tmp_path / "s.jsonl"
    os.mkfifo(out)
    with deadline(20):
        line = _one_line_error(_run(str(photos), "--out", str(out)))
    assert "FIFO" in line and scorer.calls == []


# -- 8. --batch-size cap ---------------------------------------------------------------------------


def test_batch_size_has_a_documented_maximum(photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: --batch-size 1000 accepted silently (6.4 GiB for 1,500 images).
    from humanaes.cli.score import MAX_BATCH_SIZE

    line = _one_line_error(_run(str(photos), "--batch-size", str(MAX_BATCH_SIZE + 1)))
    assert f"maximum of {MAX_BATCH_SIZE}" in line and scorer.calls == []
    assert _run(str(photos), "--batch-size", str(MAX_BATCH_SIZE), "-q").exit_code == 0
    help_text = CliRunner().invoke(main, ["score", "--help"]).output
    assert f"1 to {MAX_BATCH_SIZE}" in help_text


# -- issue 11: one row per input, keys, summaries, person_found -------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_retry_errors_replaces_rows_one_row_per_input(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                      fmt: str) -> None:
    # Bug caught: --retry-errors appends a second (and third) row for the retried image.
    pytest.importorskip("pyarrow")
    broken = photos / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / f"s.{fmt}"
    assert _run(str(photos), "--out", str(out), "-q").exit_code == 1
    order = [r["image"] for r in read_rows(out)]
    assert _run(str(photos), "--out", str(out), "--retry-errors", "-q").exit_code == 1  # still broken
    assert len(by_key(out)) == 6
    broken.unlink()
    _img(broken, (5, 5, 5), fmt="JPEG")
    assert _run(str(photos), "--out", str(out), "--retry-errors", "-q").exit_code == 0
    assert _run(str(photos), "--out", str(out), "-q").exit_code == 0
    rows = by_key(out)
    assert len(rows) == 6 and not any(r["error"] for r in rows.values())
    assert [r["image"] for r in read_rows(out)] == order  # replaced in place, order kept


def test_a_file_with_two_rows_for_one_image_is_compacted(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: a crash between the retry append and the rewrite leaves two rows forever.
    out = tmp_path / "s.jsonl"
    assert _run(str(photos), "--out", str(out), "-q").exit_code == 0
    lines = out.read_text().splitlines()
    first = json.loads(lines[0])
    stale = dict(first, overall=None, level=None, error="a.jpg: old failure")
    out.write_text("\n".join([json.dumps(stale), *lines]) + "\n")  # older error row, then the good one
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 0 and "superseded" in result.stderr and "nothing to do" in result.stderr
    rows = read_rows(out)
    assert len(rows) == 5 and rows[0] == first


def test_jsonl_rows_all_have_the_same_keys(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: error rows lack `extra` (to_dict drops an empty one); rows lack person_found/display.
    (photos / "broken.jpg").write_bytes(b"")
    out = tmp_path / "s.jsonl"
    assert _run(str(photos), "--out", str(out), "-q").exit_code == 1
    rows = read_rows(out)
    assert {tuple(r) for r in rows} == {hio.JSONL_KEYS}
    error_row = next(r for r in rows if r["error"])
    assert error_row["extra"] == {} and error_row["person_found"] is None


def test_resume_from_another_working_directory_matches(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug caught: keys made from the path as given (relative), so a resume elsewhere rescans all.
    out = tmp_path / "s.csv"
    monkeypatch.chdir(tmp_path)
    assert _run("photos", "--out", "s.csv", "-q").exit_code == 0
    rows = by_key(out)
    assert {r["display"] for r in rows.values()} >= {"photos/a.jpg", "photos/sub/c.webp"}
    assert all(k.startswith(str(tmp_path) + "/photos/") for k in rows)
    monkeypatch.chdir(photos / "sub")
    scorer.calls.clear()
    result = _run("..", "--out", str(out))
    assert result.exit_code == 0 and "nothing to do" in result.stderr and scorer.calls == []


def test_table_shows_the_path_as_given(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(photos)
    result = _run(".", str(photos / "b.png"), "-q")
    names = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert names[:2] == ["a.jpg", "b.png"] or names[0] == "./a.jpg"
    assert str(photos / "b.png") not in names  # deduplicated with ./b.png: first place wins


def test_summary_names_the_first_failures_and_where_the_rest_are(tmp_path: Path, photos: Path,
                                                                 scorer: PixelScorer) -> None:
    # Bug caught: the summary only says "5 failed".
    for i in range(5):
        (photos / f"bad{i}.png").write_bytes(b"garbage")
    out = tmp_path / "s.csv"
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 1
    line = next(ln for ln in result.stderr.splitlines() if "failed:" in ln)
    assert line.startswith("5 failed: ")
    assert line.count("bad") >= 3 and "not an image" in line
    assert f"and 2 more, see the error column of {out}" in line


def test_interrupt_before_any_row_says_nothing_was_written(tmp_path: Path, photos: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug caught: "0 new rows are in out/r.jsonl" for a file that does not exist.
    import humanaes

    model = PixelScorer(interrupt_on_batch=1)
    monkeypatch.setattr(humanaes, "load", lambda *a, **k: model, raising=False)
    out = tmp_path / "r.jsonl"
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 130
    assert "nothing was written" in result.stderr and "0 new rows" not in result.stderr
    assert not out.exists()


def _with_person(scorer: PixelScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A detector stand-in: bright images 'have a person', dark ones not (a.jpg, e.tiff)."""
    plain = scorer.score_prepared

    def score_prepared(prepared: list[Any], names: list[str], mode: str, **options: Any) -> list[ScoreResult]:
        results = plain(prepared, names, mode, **options)
        for r in results:
            r.person_found = r.overall is not None and r.overall > 0.47
        return results

    monkeypatch.setattr(scorer, "score_prepared", score_prepared)


@pytest.mark.parametrize("fmt", FORMATS)
def test_person_found_in_every_format_and_flagged(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                  monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    # Bug caught: person_found only inside `extra` (or dropped), no warning in the summary.
    pytest.importorskip("pyarrow")
    _with_person(scorer, monkeypatch)
    out = tmp_path / f"s.{fmt}"
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "2 images had no detectable person: their scores are not meaningful" in result.stderr
    rows = by_key(out)
    found = {Path(k).name: r["person_found"] for k, r in rows.items()}
    assert found == {"a.jpg": False, "e.tiff": False, "b.png": True, "c.webp": True, "d.BMP": True}


def test_person_found_flagged_in_the_table(photos: Path, scorer: PixelScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_person(scorer, monkeypatch)
    result = _run(str(photos))
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["image", "overall", "level", "person"]
    flags = {Path(ln.split()[0]).name: ln.split()[3] for ln in lines[2:]}
    assert flags["a.jpg"] == "NO" and flags["b.png"] == "yes"


@pytest.mark.parametrize("fmt", FORMATS)
def test_outputs_from_before_person_found_resume_and_are_upgraded(tmp_path: Path, photos: Path, scorer: PixelScorer,
                                                                  fmt: str) -> None:
    # Bug caught: a file with the previous layout (… extra, no person_found/display) is "not a humanaes output".
    pa = pytest.importorskip("pyarrow")
    previous = hio.COLUMNS[:-2]
    old = hio.flat_row(ScoreResult(image=str(photos / "a.jpg")).finalize(0.1), model="pixel-test", mode="fast")
    out = tmp_path / f"s.{fmt}"
    if fmt == "csv":
        out.write_text(hio.render_csv([list(previous), [old[c] for c in previous]]).replace("\r\n", "\n"))
    elif fmt == "jsonl":
        legacy = ScoreResult(image=str(photos / "a.jpg")).finalize(0.1).to_dict()
        legacy.pop("person_found")
        out.write_text(json.dumps({**legacy, "model": "pixel-test", "mode": "fast"}) + "\n")
    else:
        import pyarrow.parquet as pq

        schema = pa.schema([f for f in hio.parquet_schema() if f.name in previous])
        pq.write_table(pa.Table.from_pylist([{c: old[c] for c in previous}], schema=schema), out)
    result = _run(str(photos), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "1 skipped" in result.stderr and "older humanaes" in result.stderr
    rows = by_key(out)
    assert len(rows) == 5 and rows[str(photos / "a.jpg")]["overall"] == pytest.approx(0.1)
    if fmt == "jsonl":
        assert {tuple(r) for r in read_rows(out)} == {hio.JSONL_KEYS}
    else:
        assert list(read_rows(out)[0]) == list(hio.COLUMNS)


def test_csv_written_by_this_version_reads_back_its_own_quoting(tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    writer = hio.CsvWriter(out)
    weird = ScoreResult(image="/x/a\r\nb,\"c\".png", annotation="line\rone", error='e,"r"\n').finalize(0.5)
    weird.person_found = False
    writer.write_batch([weird], model="m", mode="fast", displays=["a\r\nb.png"])
    writer.close()
    again = hio.CsvWriter(out)
    (row,) = again.existing
    assert row["image"] == weird.image and row["annotation"] == "line\rone" and row["error"] == 'e,"r"\n'
    assert row["person_found"] is False and row["display"] == "a\r\nb.png"
    again.close()
    with open(out, newline="") as fh:
        assert len(list(csv.reader(fh))) == 2


def test_report_with_a_fifo_among_the_rows_does_not_block(tmp_path: Path, photos: Path,
                                                           specials: dict[str, Path]) -> None:
    # Bug caught: the report's thumbnailer opens every row's path, and opening a FIFO blocks forever.
    from humanaes.io.report import thumbnail_data_uri, write_report

    good = sorted(p for p in photos.iterdir() if p.is_file() and not p.is_fifo() and not p.is_socket())
    rows = [{"image": str(p), "overall": 0.5, "level": "fair"} for p in good]
    rows.append({"image": str(specials["fifo"]), "error": "not a regular file (a FIFO); not opened"})
    with deadline(30):
        write_report(rows, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    readable = sum(thumbnail_data_uri(str(p)) is not None for p in good)  # make_photos has a broken one
    assert readable >= 4 and page.count("data:image/jpeg;base64,") == readable


def test_report_thumbnails_images_with_undecodable_names(tmp_path: Path, photos: Path, scorer: PixelScorer) -> None:
    # Bug caught: the report opens the row's encoded `bytes:` key as if it were a path.
    from humanaes.io.report import thumbnail_data_uri

    raw = _bytes_name(photos, b"l_\xe9.png")
    key = hio.image_key(os.fsencode(raw))
    assert key.startswith("bytes:")
    assert thumbnail_data_uri(key) is not None


def test_an_existing_jsonl_out_that_is_not_ours_is_refused_naming_the_line(tmp_path: Path) -> None:
    # Bug caught: a foreign --out .jsonl is taken as results (or crashes) instead of a one-line refusal.
    from humanaes.errors import HumanAesError

    out = tmp_path / "s.jsonl"
    good = json.dumps({"image": "/x/a\u2028b.png"}, ensure_ascii=False)
    for body, needle in [(f"{good}\nnope\n", "line 2 is not JSON"), (f"{good}\n\n[1]\n", "line 3 has no 'image' field")]:
        out.write_text(body, encoding="utf-8")
        with pytest.raises(HumanAesError, match=needle):
            hio.open_writer(out, "jsonl", warn=lambda message: None)
