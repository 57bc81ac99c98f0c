"""humanaes.data and `humanaes data ...` on tiny generated data sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from humanaes import data as D
from humanaes.cli import main
from humanaes.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (value, value, value)).save(path)
    return path


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


EXPERT = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.65, 0.75]


def _root(tmp_path: Path, n_overall: int = 6, n_expert: int = 2) -> Path:
    """A HumanBeauty root with two subsets (no split files yet)."""
    root = tmp_path / "hb"
    rows = []
    for i in range(n_overall):
        _image(root / "HumanBeauty-58K" / "images" / f"o{i}.png", 20 * i)
        score = (i % 11) / 10
        rows.append({"image_name": f"o{i}.png", "source": "A" if i % 2 else "B", "score": score, "text_level": D.score_to_level(score)})
    _jsonl(root / "HumanBeauty-58K" / "label.jsonl", rows)
    rows = []
    for i in range(n_expert):
        _image(root / "HumanBeauty-50K" / "images" / f"e{i}.png", 30 + i)
        rows.append({"image_name": f"e{i}.png", "source": "X", "score": EXPERT})
    _jsonl(root / "HumanBeauty-50K" / "label.jsonl", rows)
    return root


def test_load_jsonl_row_kinds(tmp_path):
    _image(tmp_path / "sub" / "images" / "a.png")
    path = _jsonl(
        tmp_path / "test_label.jsonl",
        [
            {"image_name": "sub/images/a.png", "source": "S", "score": 0.25, "text_level": "poor", "is_expert": False},
            {"image_name": "sub/images/b.png", "source": "S", "score": EXPERT, "is_expert": True},
            {"image_name": "sub/images/c.png", "source": "S", "score": [0] * 11 + [0.9], "is_expert": False},
            "",
            {"image_name": "sub/images/d.png", "source": "S", "score": [0] * 11 + [0.3]},  # padding, no flag
        ],
    )
    a, b, c, d = D.load_jsonl(path)
    assert a.image == tmp_path / "sub" / "images" / "a.png" and a.score == 0.25 and a.scores is None
    assert b.is_expert and b.scores == tuple(EXPERT) and b.score == 0.75
    assert b.dimension_scores["Comprehensive Aesthetic Score"] == 0.75
    assert not c.is_expert and c.scores is None and c.score == 0.9
    assert not d.is_expert and d.scores is None and d.score == 0.3 and d.line == 5


@pytest.mark.parametrize(
    "row,needle",
    [
        ('{"image_name": "x.png", "score": 0.5', "not valid JSON"),
        ({"image_name": "x.png", "source": "S", "score": 1.5}, "outside [0, 1]"),
        ({"image_name": "x.png", "source": "S", "score": 0.5, "is_expert": True}, "is_expert is true"),
        ({"image_name": "x.png", "source": "S", "score": [0.5] * 5}, "list of 5"),
        ({"image_name": "x.png", "source": "S", "score": 0.5, "text_level": "great"}, "text_level 'great'"),
        ({"source": "S", "score": 0.5}, "image_name"),
        ({"image_name": "x.png", "source": "S", "score": "0.5"}, "finite number"),
    ],
)
def test_load_jsonl_errors_name_file_and_line(tmp_path, row, needle):
    good = {"image_name": "ok.png", "source": "S", "score": 0.5}
    path = _jsonl(tmp_path / "l.jsonl", [good, row])
    with pytest.raises(DataError) as info:
        D.load_jsonl(path)
    assert f"{path}:2:" in str(info.value) and needle in str(info.value)


def test_load_split_and_samples(tmp_path):
    root = _root(tmp_path)
    with pytest.raises(DataError, match="no test_label.jsonl"):
        D.load_split(root, "test")
    subset = D.load_samples(root / "HumanBeauty-58K" / "label.jsonl")
    assert subset[0].image == root / "HumanBeauty-58K" / "images" / "o0.png"


def test_split_reproducible_per_source(tmp_path):
    root = _root(tmp_path, n_overall=20, n_expert=10)
    runner = CliRunner()
    res = runner.invoke(main, ["data", "split", str(root), "--test-ratio", "0.2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    train = D.load_split(root, "train")
    test = D.load_split(root, "test")
    assert len(train) + len(test) == 30
    by_source = {s: sum(1 for x in test if x.source == s) for s in "ABX"}
    assert by_source == {"A": 2, "B": 2, "X": 2}  # 20% of 10, 10, 10
    assert all(x.image.is_file() for x in train + test)
    assert all(x.is_expert == (x.source == "X") for x in train + test)
    first = (root / "test_label.jsonl").read_text()
    assert json.loads(first.splitlines()[0])["image_name"].split("/")[1] == "images"

    res = runner.invoke(main, ["data", "split", str(root), "--seed", "3", "--test-ratio", "0.2"])
    assert res.exit_code == 2 and "--force" in res.output
    # Same seed, shuffled input rows -> same split.
    label = root / "HumanBeauty-58K" / "label.jsonl"
    label.write_text("".join(reversed(label.read_text().splitlines(keepends=True))))
    res = runner.invoke(main, ["data", "split", str(root), "--seed", "3", "--test-ratio", "0.2", "--force"])
    assert res.exit_code == 0, res.output
    assert {x.image_name for x in D.load_split(root, "test")} == {x.image_name for x in test}
    res = runner.invoke(main, ["data", "split", str(root), "--seed", "4", "--test-ratio", "0.2", "--force"])
    assert {x.image_name for x in D.load_split(root, "test")} != {x.image_name for x in test}


def test_validate_reports_every_problem_with_location(tmp_path):
    root = _root(tmp_path, n_overall=4, n_expert=2)
    assert CliRunner().invoke(main, ["data", "split", str(root), "--test-ratio", "0.5"]).exit_code == 0
    res = CliRunner().invoke(main, ["data", "validate", str(root)])
    assert res.exit_code == 0, res.output
    assert "0 problems" in res.output

    (root / "HumanBeauty-58K" / "images" / "broken.png").write_bytes(b"not a png")
    _jsonl(
        root / "val_label.jsonl",
        [
            {"image_name": "HumanBeauty-58K/images/o0.png", "source": "A", "score": 0.0, "is_expert": False},
            {"image_name": "HumanBeauty-58K/images/missing.png", "source": "A", "score": 0.3, "is_expert": False},
            {"image_name": "HumanBeauty-58K/images/broken.png", "source": "A", "score": 0.3, "is_expert": False},
            {"image_name": "HumanBeauty-58K/images/o1.png", "source": "A", "score": 0.3, "text_level": "meh"},
            {"image_name": "HumanBeauty-50K/images/e0.png", "source": "X", "score": 0.3, "is_expert": True},
            "{oops",
        ],
    )
    res = CliRunner().invoke(main, ["data", "validate", str(root)])
    assert res.exit_code == 1
    val = str(root / "val_label.jsonl")
    for line, text in [(2, "image not found"), (3, "does not open"), (4, "text_level 'meh'"), (5, "is_expert is true"), (6, "not valid JSON")]:
        assert f"{val}:{line}: " in res.output and text in res.output
    assert "in both" in res.output  # o0 is in val and in train or test: leakage warning
    assert "Traceback" not in res.output
    # --no-open only checks existence: the undecodable file passes.
    res = CliRunner().invoke(main, ["data", "validate", str(root), "--no-open"])
    assert res.exit_code == 1 and "does not open" not in res.output and "image not found" in res.output


def test_stats_json(tmp_path):
    root = _root(tmp_path, n_overall=10, n_expert=2)
    res = CliRunner().invoke(main, ["data", "split", str(root)])  # 0.1 of groups of 5, 5, 2: no test rows
    assert res.exit_code == 2 and "puts no rows in test" in res.output and not (root / "test_label.jsonl").exists()
    assert CliRunner().invoke(main, ["data", "split", str(root), "--test-ratio", "0.4"]).exit_code == 0
    res = CliRunner().invoke(main, ["data", "stats", str(root), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["all"]["rows"] == 12 and stats["all"]["expert_rows"] == 2
    assert sum(stats["per_source"]["A"].values()) == 5
    assert sum(stats["splits"]["train"]["histogram"]["counts"]) == stats["splits"]["train"]["rows"]
    assert sum(stats["all"]["levels"].values()) == 12
    text = CliRunner().invoke(main, ["data", "stats", str(root)]).output
    assert "level balance" in text and "score histogram (train)" in text


def test_import_csv_and_jsonl(tmp_path):
    raw = tmp_path / "raw"
    _image(raw / "p" / "a b.png")
    _image(raw / "c.png")
    _image(raw / "d.png")
    dims = ",".join(f'"{d}"' for d in D.DIMENSIONS)
    csv_path = tmp_path / "ratings.csv"
    csv_path.write_text(
        f"image,score,{dims}\n"
        "p/a b.png,1," + "," * 11 + "\n"
        "c.png,10," + "," * 11 + "\n"
        "d.png,," + ",".join(["5.5"] * 12) + "\n"
    )
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["data", "import", str(csv_path), "--images", str(raw), "--out", str(out), "--scale", "1", "10", "--source", "Mine"]
    )
    assert res.exit_code == 0, res.output
    overall = D.load_jsonl(out / "HumanBeauty-58K" / "label.jsonl")
    assert [s.score for s in overall] == [0.0, 1.0]
    assert overall[0].image_name == "mine_p_a_b.png" and overall[0].image.is_symlink()
    assert overall[0].image.resolve() == (raw / "p" / "a b.png").resolve()
    (expert,) = D.load_jsonl(out / "HumanBeauty-50K" / "label.jsonl")
    assert expert.is_expert and expert.scores == (0.5,) * 12
    res = CliRunner().invoke(main, ["data", "import", str(csv_path), "--images", str(raw), "--out", str(out), "--scale", "1", "10", "--source", "Mine"])
    assert res.exit_code == 2 and "--force" in res.output

    # JSONL, copied images, a second source in the same root; then split + validate the result.
    jl = _jsonl(tmp_path / "other.jsonl", [{"image": "c.png", "score": 3}, {"image": "d.png", "score": 0}])
    res = CliRunner().invoke(main, ["data", "import", str(jl), "--images", str(raw), "--out", str(out), "--scale", "0", "4", "--copy"])
    assert res.exit_code == 0, res.output
    rows = D.load_jsonl(out / "HumanBeauty-58K" / "label.jsonl")
    assert [(s.source, s.score) for s in rows] == [("Mine", 0.0), ("Mine", 1.0), ("other", 0.75), ("other", 0.0)]
    assert not rows[2].image.is_symlink()
    assert CliRunner().invoke(main, ["data", "split", str(out), "--test-ratio", "0.5"]).exit_code == 0
    assert CliRunner().invoke(main, ["data", "validate", str(out)]).exit_code == 0


def test_import_errors_are_one_message_with_lines(tmp_path):
    raw = tmp_path / "raw"
    _image(raw / "a.png")
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("image,score\na.png,11\nnope.png,3\na.png,abc\na.png,2,9\n")
    args = ["data", "import", str(csv_path), "--images", str(raw), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(main, args + ["--scale", "1", "10"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    for text in ["r.csv:2: score 11.0 is outside", "r.csv:3: image nope.png not found", "r.csv:4: score must be a number", "r.csv:5: 3 columns"]:
        assert text in res.output
    assert not (tmp_path / "o").exists()  # nothing written
    res = CliRunner().invoke(main, args + ["--scale", "5", "1"])
    assert res.exit_code == 2 and "bad --scale" in res.output


@pytest.mark.skipif(not (SHARED / "data" / "HumanBeauty" / "train_label.jsonl").is_file(), reason="shared data absent")
def test_shared_humanbeauty_loads():
    root = SHARED / "data" / "HumanBeauty"
    train = D.load_split(root, "train")
    assert len(train) == 1768 and all(s.source == "MEBeauty" and not s.is_expert for s in train)
    assert train[0].image.is_file()


def test_validate_bom_duplicates_and_empty_files(tmp_path):
    """Issue 10 case 9: a BOM is accepted, conflicting duplicates and empty files are problems."""
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    rows = [{"image_name": "a.png", "source": "S", "score": 0.5}, {"image_name": "b.png", "source": "S", "score": 0.25}]
    label = tmp_path / "label.jsonl"
    label.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    res = CliRunner().invoke(main, ["data", "validate", str(label)])
    assert res.exit_code == 0 and "2 rows" in res.output and "0 problems, 0 warnings" in res.output, res.output
    assert [s.score for s in D.load_jsonl(label)] == [0.5, 0.25]  # the loader reads it too

    # The same row twice is a warning; the same image with another score is a problem.
    _jsonl(label, rows + [rows[0]])
    res = CliRunner().invoke(main, ["data", "validate", str(label)])
    assert res.exit_code == 0 and f"warning: {label}:3: duplicate of line 1 (a.png)" in res.output, res.output
    _jsonl(label, rows + [{"image_name": "a.png", "source": "S", "score": 0.75}])
    res = CliRunner().invoke(main, ["data", "validate", str(label)])
    assert res.exit_code == 1 and f"{label}:3: conflicts with line 1: a.png is labelled twice" in res.output, res.output
    expert = {"image_name": "b.png", "source": "S", "score": EXPERT}
    _jsonl(label, [expert, dict(expert, score=[0.95] + EXPERT[1:])])  # same overall, one dimension differs
    res = CliRunner().invoke(main, ["data", "validate", str(label)])
    assert res.exit_code == 1 and "conflicts with line 1" in res.output, res.output

    for content in (b"", b"\n  \n", b"\xef\xbb\xbf"):
        label.write_bytes(content)
        res = CliRunner().invoke(main, ["data", "validate", str(label)])
        assert res.exit_code == 1 and f"{label}: holds no rows" in res.output, (content, res.output)


def test_split_never_writes_through_a_planted_temp_symlink(tmp_path):
    """Issue 10 case 6: label files were written through a fixed `<name>.tmp`, following a symlink."""
    root = _root(tmp_path, n_overall=4, n_expert=2)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("train_label.jsonl.tmp", "test_label.jsonl.tmp"):
        (root / name).symlink_to(victim)
    res = CliRunner().invoke(main, ["data", "split", str(root), "--test-ratio", "0.5"])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "keep me"
    assert len(D.load_split(root, "train")) + len(D.load_split(root, "test")) == 6
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == ["test_label.jsonl.tmp", "train_label.jsonl.tmp"]


def test_staging_dir_is_private_named_published_whole_or_removed(tmp_path):
    """fsutil.staging_dir: the one 'build a folder beside it, then publish it' helper (import,
    swift export and build use it)."""
    import os

    from humanaes.fsutil import publish_dir, staging_dir

    final = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with staging_dir(final, label="import-") as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".ds.import-") and tmp.name != ".ds.import-"
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("failed half way")
    assert list(tmp_path.iterdir()) == []  # nothing left, nothing published
    umask = os.umask(0)
    os.umask(umask)
    with staging_dir(final) as tmp:
        assert tmp.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700: it becomes `final`
        (tmp / "rows.jsonl").write_text("{}\n")
        publish_dir(tmp, final)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"] and (final / "rows.jsonl").read_text() == "{}\n"
    with staging_dir(final, mode=0o750) as tmp:
        assert tmp.stat().st_mode & 0o777 == 0o750


def test_json_lines_cuts_only_at_line_ends_and_names_bad_rows():
    """The one JSONL reader (label files, source tables, ms-swift files, batch manifests): a
    JSON string may hold U+2028 / U+0085 raw, which str.splitlines() would cut in two."""
    from humanaes.io.jsonl import json_lines

    text = '{"image": "a\u2028b\u0085.png"}\r\n\n  \n[1, 2]\r{"x": }\n'
    assert list(json_lines(text)) == [(1, {"image": "a\u2028b\u0085.png"}, None), (4, [1, 2], None),
                                      (5, None, "not valid JSON (Expecting value at column 7)")]
    assert list(json_lines(text, objects=True))[1] == (4, None, "row must be a JSON object, got list")


def test_is_within_is_by_path_component_not_by_prefix():
    # Bug caught: a bare startswith() takes /d/imagesX (a sibling) for a file under /d/images.
    from humanaes.fsutil import is_within

    assert is_within("/d/images", "/d/images") and is_within("/d/images/a/b.png", "/d/images")
    assert is_within("/d/images/a.png", "/d/images/") and is_within("/etc", "/")
    assert not is_within("/d/imagesX/a.png", "/d/images") and not is_within("/d", "/d/images")
