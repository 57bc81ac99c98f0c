"""`humanaes data import` against hostile tables, images and output folders (issue 10 cases 6, 7).

Every image read lies under --images, every write and removal under --out; a failed import
leaves --out as it was; one import per --out at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from humanaes import data as D
from humanaes.cli import main
from humanaes.data import importer

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "win32", reason="POSIX file system features")


@pytest.fixture(autouse=True)
def _never_block():
    """A FIFO opened for reading blocks forever: turn such a hang into a failure."""

    def hung(*_: object) -> None:
        raise TimeoutError("the import blocked (did it open a FIFO?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (value, 10, 200)).save(path)
    return path


def _import(table: Path, images: Path, out: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["data", "import", str(table), "--images", str(images), "--out", str(out), "--scale", "0", "10", *extra])
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    return res.exit_code, res.output


def _snapshot(root: Path) -> dict[str, object]:
    """Every entry under root: file bytes, link targets, folders (links are not followed)."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file():
                out[rel] = path.read_bytes()
            else:  # a FIFO: reading it would block
                out[rel] = ("special", path.stat().st_mode)
    return out


def _beside(out: Path) -> list[str]:
    """`out`, its lock and any temporary folder of its name in its parent folder."""
    return sorted(p.name for p in out.parent.iterdir() if p.name == out.name or p.name.startswith((f"{out.name}.", f".{out.name}.")))


@pytest.fixture()
def world(tmp_path):
    """raw/ (the --images root) with good and hostile entries; outside/ with victims."""
    raw, outside = tmp_path / "raw", tmp_path / "outside"
    _image(raw / "good.png", 10)
    _image(raw / "sub" / "good2.png", 20)
    victim_png = _image(outside / "victim.png", 30)
    (outside / "victim.txt").write_text("victim: must survive, never be read\n")
    os.mkfifo(outside / "victim.jpg")  # opening it to read would block
    (raw / "link_out.png").symlink_to(victim_png)
    (raw / "link_fifo.jpg").symlink_to(outside / "victim.jpg")
    (raw / "link_in.png").symlink_to("sub/good2.png")
    (raw / "text.jpg").write_text("hello, I am text\n")
    (raw / "hostname.png").write_bytes(b"myhost\n")
    (raw / "empty.jpg").write_bytes(b"")
    # C source text that Pillow opens as an XBM image: only photo formats count.
    (raw / "xbm.png").write_text("#define im_width 8\n#define im_height 1\nstatic char im_bits[] = {\n0x00\n};\n")
    os.mkfifo(raw / "fifo.jpg")
    (raw / "loop_a.jpg").symlink_to("loop_b.jpg")
    (raw / "loop_b.jpg").symlink_to("loop_a.jpg")
    (raw / "dangling.jpg").symlink_to("missing.png")
    (raw / "folder.jpg").mkdir()
    return raw, outside


HOSTILE = [
    ("../outside/victim.png", "lies outside --images"),
    ("../outside/victim.txt", "lies outside --images"),
    ("../outside/victim.jpg", "lies outside --images"),
    ("sub/../../outside/victim.png", "lies outside --images"),
    ("ABS:outside/victim.png", "lies outside --images"),
    ("ABS:outside/victim.jpg", "lies outside --images"),
    ("/etc/hostname", "lies outside --images"),
    ("link_out.png", "symlink leading outside --images"),
    ("link_fifo.jpg", "symlink leading outside --images"),
    ("text.jpg", "not an image (its content looks like text"),
    ("hostname.png", "not an image"),
    ("xbm.png", "not an image"),
    ("empty.jpg", "empty file (0 bytes)"),
    ("fifo.jpg", "not a regular file"),
    ("folder.jpg", "not a regular file"),
    ("loop_a.jpg", "cannot be read"),
    ("dangling.jpg", "not found"),
    ("nope.png", "not found"),
    ("bad\nname.png", "not found"),
]
# CSV cannot carry a NUL at all (the whole table is refused); JSONL can.
HOSTILE_JSONL_ONLY = [("nul\x00.png", "contains a NUL byte")]


def _rows(names: list[str], tmp_path: Path) -> list[dict]:
    return [{"image": str(tmp_path / n[4:]) if n.startswith("ABS:") else n, "score": 5} for n in names]


def test_every_hostile_row_is_named_and_nothing_is_written(world, tmp_path):
    raw, outside = world
    before = _snapshot(outside)
    table = tmp_path / "t.jsonl"
    good = ["good.png", str(raw / "sub" / "good2.png"), "link_in.png"]  # relative, absolute inside, link inside
    hostile = HOSTILE + HOSTILE_JSONL_ONLY
    rows = _rows([n for n, _ in hostile], tmp_path) + _rows(good, tmp_path)
    table.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    out = tmp_path / "out"
    code, output = _import(table, raw, out)
    assert code == 2 and f"{len(hostile)} problem(s)" in output, output
    for line, (name, needle) in enumerate(hostile, start=1):
        hits = [t for t in output.splitlines() if t.strip().startswith(f"{table}:{line}:")]
        assert len(hits) == 1 and needle in hits[0], (name, hits, output)
    assert not out.exists() and _beside(out) == ["out.lock"]  # the lock file only
    assert _snapshot(outside) == before

    # Only the good rows: imported, each pointing at its file under raw/.
    table.write_text("".join(json.dumps(r) + "\n" for r in _rows(good, tmp_path)))
    code, output = _import(table, raw, out, "--force")
    assert code == 0, output
    rows = D.load_jsonl(out / D.OVERALL_SUBSET / "label.jsonl")
    assert [s.image_name for s in rows] == ["t_good.png", "t_sub_good2.png", "t_link_in.png"]
    assert [Path(os.path.realpath(s.image)) for s in rows] == [raw / "good.png", raw / "sub" / "good2.png", raw / "sub" / "good2.png"]


def test_force_failure_leaves_the_old_data_set_intact(world, tmp_path, monkeypatch):
    """Issue 10 case 7: `--force --copy` deleted the old image before a failing copy."""
    raw, _ = world
    table = tmp_path / "t.csv"
    table.write_text("image,score\ngood.png,2\nsub/good2.png,8\n")
    out = tmp_path / "out"
    assert _import(table, raw, out, "--copy")[0] == 0
    assert CliRunner().invoke(main, ["data", "split", str(out), "--test-ratio", "0.5"]).exit_code == 0
    before = _snapshot(out)

    calls = []
    real_copy = importer._copy_regular

    def failing_copy(original, target):
        calls.append(original)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_copy(original, target)

    monkeypatch.setattr(importer, "_copy_regular", failing_copy)
    table.write_text("image,score\ngood.png,9\nsub/good2.png,1\n")
    code, output = _import(table, raw, out, "--copy", "--force")
    assert code == 2 and "No space left on device" in output and "the old data set is unchanged" in output, output
    assert len(calls) == 2
    assert _snapshot(out) == before
    assert _beside(out) == ["out", "out.lock"]  # no temporary folder left behind

    monkeypatch.setattr(importer, "_copy_regular", real_copy)
    code, output = _import(table, raw, out, "--copy", "--force")
    assert code == 0, output
    assert [s.score for s in D.load_jsonl(out / D.OVERALL_SUBSET / "label.jsonl")] == [0.9, 0.1]
    assert "train_label.jsonl named 1 replaced row(s)" in output and "test_label.jsonl named 1" in output
    assert not (out / "train_label.jsonl").exists() and not (out / "test_label.jsonl").exists()  # only rows of that source


def test_force_removes_nothing_outside_out_and_prunes_splits(world, tmp_path):
    """Issue 10 case 7: a crafted image_name in the existing label file made --force delete outside --out."""
    raw, outside = world
    out = tmp_path / "deep" / "out"
    mine, other = tmp_path / "mine.csv", tmp_path / "other.csv"
    mine.write_text("image,score\ngood.png,2\nsub/good2.png,8\n")
    other.write_text("image,score\ngood.png,4\nsub/good2.png,6\n")
    assert _import(mine, raw, out)[0] == 0
    assert _import(other, raw, out, "--copy")[0] == 0
    assert CliRunner().invoke(main, ["data", "split", str(out), "--test-ratio", "0.5"]).exit_code == 0
    train_before = (out / "train_label.jsonl").read_text()
    # Hostile rows of source "mine" in the existing label file: --force "replaces" them.
    label = out / D.OVERALL_SUBSET / "label.jsonl"
    hostile = ["../../../../outside/victim.txt", str(outside / "victim.txt"), "../label.jsonl", "../../train_label.jsonl", ".", ""]
    with label.open("a") as fh:
        for name in hostile:
            fh.write(json.dumps({"image_name": name or "x/", "source": "mine", "score": 0.5}) + "\n")
    (out / "val_label.jsonl").write_text(
        json.dumps({"image_name": f"{D.OVERALL_SUBSET}/images/mine_good.png", "source": "mine", "score": 0.2}) + "\n"
    )
    # A kept row whose text holds a raw line separator (valid JSON) must survive whole.
    with (out / "train_label.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"image_name": "HumanBeauty-58K/images/other_good.png", "source": "other", "score": 0.4, "note": "a\u2028b"}, ensure_ascii=False) + "\n")
    train_before = (out / "train_label.jsonl").read_text(encoding="utf-8")
    victim_before = _snapshot(outside)
    mine.write_text("image,score\nsub/good2.png,10\n")
    code, output = _import(mine, raw, out, "--force")
    assert code == 0, output
    assert _snapshot(outside) == victim_before
    rows = D.load_jsonl(label)
    assert [(s.source, s.image_name, s.score) for s in rows] == [
        ("other", "other_good.png", 0.4), ("other", "other_sub_good2.png", 0.6), ("mine", "mine_sub_good2.png", 1.0)
    ]
    images = sorted(p.name for p in (out / D.OVERALL_SUBSET / "images").iterdir())
    assert images == ["mine_sub_good2.png", "other_good.png", "other_sub_good2.png"]  # mine_good.png went with its row
    assert (out / "train_label.jsonl").is_file() or (out / "test_label.jsonl").is_file()
    for split in ("train", "test"):
        path = out / f"{split}_label.jsonl"
        if path.exists():
            kept = [json.loads(t)["source"] for t in path.read_text(encoding="utf-8").split("\n")[:-1]]
            assert kept and set(kept) == {"other"}
    assert not (out / "val_label.jsonl").exists() and "val_label.jsonl named 1 replaced row(s)" in output
    assert "removed it (no rows left)" in output
    # A kept split file keeps its other rows verbatim.
    kept_lines = [t for t in train_before.split("\n")[:-1] if json.loads(t)["source"] == "other"]
    test_after = (out / "test_label.jsonl").read_text()
    assert (out / "train_label.jsonl").read_text(encoding="utf-8").split("\n")[:-1] == kept_lines
    assert CliRunner().invoke(main, ["data", "validate", str(out)]).exit_code == 0
    # A new source leaves the split files alone, and says they lack its rows.
    third = tmp_path / "third.csv"
    third.write_text("image,score\ngood.png,1\n")
    code, output = _import(third, raw, out)
    assert code == 0 and "train_label.jsonl does not hold the new rows" in output, output
    assert (out / "test_label.jsonl").read_text() == test_after


def test_out_or_its_folders_not_being_folders_is_one_line(world, tmp_path):
    raw, outside = world
    table = tmp_path / "t.csv"
    table.write_text("image,score\ngood.png,2\n")
    as_file = tmp_path / "file_out"
    as_file.write_text("not a folder")
    code, output = _import(table, raw, as_file)
    assert code == 2 and "is a file, not a folder" in output and output.count("\n") == 1, output
    assert as_file.read_text() == "not a folder"

    out = tmp_path / "out"
    (out / D.OVERALL_SUBSET).mkdir(parents=True)
    (out / D.OVERALL_SUBSET / "images").write_text("I am a file")
    code, output = _import(table, raw, out)
    assert code == 2 and f"{D.OVERALL_SUBSET}/images is a file, not a folder" in output and output.count("\n") == 1, output

    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / D.OVERALL_SUBSET).symlink_to(outside)
    code, output = _import(table, raw, linked)
    assert code == 2 and "is a symlink, not a folder" in output, output
    assert sorted(p.name for p in outside.iterdir()) == ["victim.jpg", "victim.png", "victim.txt"]

    code, output = _import(table, raw / "good.png", tmp_path / "o2")
    assert code == 2 and "--images" in output and "is not a folder" in output


def test_second_writer_on_the_same_out_is_refused_naming_the_pid(world, tmp_path):
    """Issue 10 must 2 for `data import --out` (and `data split`, which shares the lock)."""
    raw, _ = world
    table = tmp_path / "t.csv"
    table.write_text("image,score\ngood.png,2\nsub/good2.png,3\n")
    out = tmp_path / "out"
    assert _import(table, raw, out)[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from humanaes.fsutil import OutputLock; "
         "lock = OutputLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(out)
        code, output = _import(table, raw, out, "--force")
        assert code == 2 and f"is being written by process {holder.pid}" in output, output
        assert _snapshot(out) == before
        res = CliRunner().invoke(main, ["data", "split", str(out), "--test-ratio", "0.5"])
        assert res.exit_code == 2 and f"process {holder.pid}" in res.output, res.output
    finally:
        holder.kill()  # a killed holder leaves no stuck lock
        holder.wait()
    code, output = _import(table, raw, out, "--force")
    assert code == 0, output


def test_hostile_corpus_reads_writes_and_removes_nothing_outside_the_roots(world, tmp_path):
    """Fuzz-style: hostile rows, BOMs, duplicates, hostile existing labels and split files; every
    file-system call the import makes (Python audit events) is checked to stay off `outside/`."""
    raw, outside = world
    outside_real = os.path.realpath(outside)
    touched: list[tuple[str, str]] = []
    guard = threading.local()
    active = [True]

    def real(path: str, follow: bool) -> str:
        # open() follows a final symlink; unlink, rename, link, readlink, scandir ... act on it.
        if follow:
            return os.path.realpath(path)
        return os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))

    def audit(event: str, args: tuple) -> None:
        if not active[0] or getattr(guard, "busy", False) or not event.startswith(("open", "os.", "shutil.")):
            return
        guard.busy = True
        try:
            candidates = args[1:2] if event == "os.symlink" else args  # a link's text is not a touch
            for arg in candidates:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    path = os.fsdecode(arg)
                    if path and _inside(real(path, event == "open"), outside_real):
                        touched.append((event, path))
        except Exception:  # noqa: BLE001 - an audit hook must never break the code it watches
            pass
        finally:
            guard.busy = False

    before = _snapshot(outside)
    sys.addaudithook(audit)  # cannot be removed: `active` keeps it quiet after this test
    try:
        _run_corpus(raw, outside, tmp_path)
    finally:
        active[0] = False
    assert touched == [], touched
    assert _snapshot(outside) == before


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _run_corpus(raw: Path, outside: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = [r["image"] for r in _rows([n for n, _ in HOSTILE] + ["good.png", "good.png", "./good.png", "sub/good2.png"], tmp_path)]
    table = tmp_path / "corpus.csv"
    lines = ["image,score"] + [f'"{n}",{i % 11}' for i, n in enumerate(names)]
    table.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")

    code, output = _import(table, raw, out)
    assert code == 2
    # 19 hostile rows + good.png twice more (also as ./good.png): only the first 20 are listed.
    assert f"{len(HOSTILE) + 2} problem(s)" in output and "image good.png gives the same file name as line" in output
    assert not out.exists()

    ok = tmp_path / "ok.csv"
    ok.write_text("image,score\ngood.png,3\nsub/good2.png,4\n")
    assert _import(ok, raw, out)[0] == 0
    label = out / D.OVERALL_SUBSET / "label.jsonl"
    with label.open("a") as fh:
        for name in ["../../outside/victim.txt", "../../outside/victim.jpg", str(outside / "victim.png"), "../../../outside"]:
            fh.write(json.dumps({"image_name": name, "source": "ok", "score": 0.1}) + "\n")
    (out / D.OVERALL_SUBSET / "images" / "ok_planted.png").symlink_to(outside / "victim.png")
    (out / "train_label.jsonl").write_text(json.dumps({"image_name": "../outside/victim.txt", "source": "ok", "score": 0.1}) + "\n")
    assert _import(ok, raw, out, "--force")[0] == 0
    assert _import(ok, raw, out, "--force", "--copy")[0] == 0


def test_output_lock_works_as_a_context_manager(tmp_path):
    """`with output_lock(out):` (the documented use) must not refuse its own process."""
    from humanaes.errors import HumanAesError
    from humanaes.fsutil import output_lock

    target = tmp_path / "out"
    with output_lock(target, what="--out") as lock:
        assert lock.held
        with pytest.raises(HumanAesError, match=f"being written by process {os.getpid()}"):
            output_lock(target)
    assert not lock.held
    output_lock(target).release()  # free again once the block ends
