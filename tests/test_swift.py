"""The ms-swift bridge: `humanaes data export --format swift` writes the official fine-tuning's
rows exactly; `humanaes data import --format swift` reads them back (round trip); bad rows are
refused with one line each and nothing is written; `merge-lora` and its old name `export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from humanaes.cli import main
from humanaes.data import load_split, validate_dataset
from humanaes.data.swift import SWIFT_KEYS, export_swift, import_swift
from humanaes.errors import DataError

EXPERT_SCORES = [0.1, 0.2, 0.35, 0.4, 0.59, 0.6, 0.79, 0.8, 0.95, 1.0, 0.0, 0.65]
# Written out by hand (not by the code under test): the release's arrange() format.
EXPERT_RESPONSE = (
    "1. Facial Brightness : bad\n2. Facial Feature Clarity : poor\n3. Facial Skin Tone : poor\n"
    "4. Facial Structure : fair\n5. Facial Contour Clarity : fair\n6. Facial Aesthetic Score : good\n"
    "7. Outfit : good\n8. Body Shape : excellent\n9. Looks : excellent\n10. Environment : excellent\n"
    "11. General Appearance Aesthetic Score : bad\n12. Comprehensive Aesthetic Score : good"
)


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), colour).save(path)


@pytest.fixture()
def root(tmp_path) -> Path:
    """A HumanBeauty root: two overall-only rows, one padded overall row, one expert row."""
    src = tmp_path / "src"
    _image(src / "HumanBeauty-58K/images/a.png", (200, 10, 10))
    _image(src / "HumanBeauty-58K/images/b.png", (10, 200, 10))
    _image(src / "HumanBeauty-58K/images/d.png", (10, 10, 200))
    _image(src / "HumanBeauty-50K/images/c.png", (90, 90, 90))
    _image(src / "HumanBeauty-58K/images/t.png", (1, 2, 3))
    train = [
        {"image_name": "HumanBeauty-58K/images/a.png", "source": "S1", "score": 0.2, "text_level": "poor", "is_expert": False},
        {"image_name": "HumanBeauty-50K/images/c.png", "source": "S2", "score": EXPERT_SCORES, "is_expert": True},
        {"image_name": "HumanBeauty-58K/images/b.png", "source": "S1", "score": 0.8, "is_expert": False},
        {"image_name": "HumanBeauty-58K/images/d.png", "source": "S1", "score": [0] * 11 + [0.55], "is_expert": False},
    ]
    test = [{"image_name": "HumanBeauty-58K/images/t.png", "source": "S1", "score": 0.5, "is_expert": False}]
    (src / "train_label.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (src / "test_label.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    return src


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_the_official_rows_exactly(root, tmp_path):
    out = tmp_path / "swift.jsonl"
    result = export_swift(root, out)
    assert result == {"out": str(out), "rows": 4, "expert_rows": 1, "overall_rows": 3}
    lines = out.read_text(encoding="utf-8").splitlines()
    a = root / "HumanBeauty-58K/images/a.png"
    assert lines[0] == (
        '{"query": "", "response": "The aesthetics of the human image is poor", "history": [], '
        f'"images": ["{a}"], "scores": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2], "is_expert": 0}}'
    )
    rows = [json.loads(line) for line in lines]
    assert all(tuple(r) == SWIFT_KEYS for r in rows)
    assert rows[1]["response"] == EXPERT_RESPONSE and rows[1]["scores"] == EXPERT_SCORES and rows[1]["is_expert"] == 1
    assert rows[2]["response"] == "The aesthetics of the human image is excellent"  # 0.8 is excellent
    assert rows[3]["response"] == "The aesthetics of the human image is fair" and rows[3]["scores"][-1] == 0.55
    assert rows[3]["is_expert"] == 0
    assert all(Path(r["images"][0]).is_absolute() and Path(r["images"][0]).is_file() for r in rows)
    assert "t.png" not in out.read_text()  # the test split stays out


def test_round_trip(root, tmp_path):
    first = tmp_path / "first.jsonl"
    export_swift(root, first)
    back = tmp_path / "back"
    result = import_swift(first, out=back, images_root=root, source="mine")
    assert result["rows"] == 4 and result["per_subset"] == {"HumanBeauty-58K": 3, "HumanBeauty-50K": 1}
    report = validate_dataset(back)
    assert report.ok and not report.warnings, [str(f) for f in report.problems + report.warnings]

    samples = load_split(back, "train")
    assert [s.score for s in samples] == [0.2, 0.65, 0.8, 0.55]
    assert [s.is_expert for s in samples] == [False, True, False, False]
    assert list(samples[1].scores) == EXPERT_SCORES
    assert samples[0].text_level == "poor" and {s.source for s in samples} == {"mine"}

    second = tmp_path / "second.jsonl"
    export_swift(back, second)
    rows1, rows2 = _rows(first), _rows(second)
    for r1, r2 in zip(rows1, rows2, strict=True):
        image1, image2 = Path(r1.pop("images")[0]), Path(r2.pop("images")[0])
        assert r1 == r2
        assert image2.is_relative_to(back) and image2.read_bytes() == image1.read_bytes()
    assert (back / "HumanBeauty-58K/images").stat().st_mode & 0o077  # not left private like a temp folder


def test_text_level_is_the_official_answer_for_overall_rows(tmp_path):
    """prepare_data_for_swift.py answers with the row's text_level (kept through a round trip)."""
    src = tmp_path / "src"
    _image(src / "HumanBeauty-58K/images/a.png", (1, 1, 1))
    row = {"image_name": "HumanBeauty-58K/images/a.png", "source": "S", "score": 0.45, "text_level": "good", "is_expert": False}
    (src / "train_label.jsonl").write_text(json.dumps(row) + "\n")
    export_swift(src, tmp_path / "s.jsonl")
    assert _rows(tmp_path / "s.jsonl")[0]["response"].endswith(" good")
    import_swift(tmp_path / "s.jsonl", out=tmp_path / "back", images_root=src)
    assert load_split(tmp_path / "back", "train")[0].text_level == "good"


def test_copy_and_force(root, tmp_path):
    swift = tmp_path / "s.jsonl"
    export_swift(root, swift)
    back = tmp_path / "back"
    import_swift(swift, out=back, images_root=root, copy=True)
    copied = back / "HumanBeauty-58K/images/HumanBeauty-58K__images__a.png"
    assert copied.is_file() and not copied.is_symlink()
    with pytest.raises(DataError, match="is not empty; pass --force"):
        import_swift(swift, out=back, images_root=root)
    import_swift(swift, out=back, images_root=root, force=True)
    assert copied.is_symlink() and copied.read_bytes() == (root / "HumanBeauty-58K/images/a.png").read_bytes()
    with pytest.raises(DataError, match="holds the image"):  # replacing --out would delete the images
        import_swift(swift, out=root, images_root=root, force=True)


def _one_row(**change) -> dict:
    row = {"query": "", "response": "The aesthetics of the human image is fair", "history": [], "images": [],
           "scores": [0.0] * 11 + [0.5], "is_expert": 0}
    row.update(change)
    return row


@pytest.mark.parametrize(
    "change,message",
    [
        ({"images": ["/etc/hostname"]}, "is not under --images-root"),
        ({"images": ["{root}/../outside.png"]}, "is not under --images-root"),
        ({"images": ["HumanBeauty-58K/images/a.png"]}, "is not absolute"),
        ({"images": ["{root}/HumanBeauty-58K/images/zz.png"]}, "zz.png not found"),
        ({"scores": [0.1] + [0.0] * 10 + [0.5]}, "first eleven scores are not all zero"),
        ({"scores": [0.0] * 11 + [1.5]}, r"scores\[11\] must be a number in \[0, 1\]"),
        ({"response": "The aesthetics of the human image is great"}, "is not 'The aesthetics of the human image is <level>'"),
        ({"response": EXPERT_RESPONSE.replace("7. Outfit : good", "7. Outfit : bad"), "scores": EXPERT_SCORES, "is_expert": 1},
         "response line 7 is '7. Outfit : bad', but the scores give '7. Outfit : good'"),
        ({"response": EXPERT_RESPONSE + "\n", "scores": EXPERT_SCORES, "is_expert": 1}, "response has 13 lines"),
        ({"is_expert": 2}, "is_expert must be 0 or 1"),
        ({"query": "Rate it."}, 'query must be ""'),
        ({"objects": []}, r"unexpected key\(s\) objects"),
    ],
)
def test_import_refuses_bad_rows_and_writes_nothing(root, tmp_path, change, message):
    (root.parent / "outside.png").write_bytes((root / "HumanBeauty-58K/images/a.png").read_bytes())
    good = _one_row(images=[str(root / "HumanBeauty-58K/images/a.png")])
    bad = _one_row(images=[str(root / "HumanBeauty-58K/images/b.png")])
    bad.update({k: [v.format(root=root) for v in value] if k == "images" else value for k, value in change.items()})
    swift = tmp_path / "s.jsonl"
    swift.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n{not json\n")
    with pytest.raises(DataError, match=message) as info:
        import_swift(swift, out=tmp_path / "back", images_root=root)
    assert f"{swift}:2: " in str(info.value) and f"{swift}:3: not valid JSON" in str(info.value)
    assert not (tmp_path / "back").exists()


def test_export_errors(root, tmp_path):
    (root / "HumanBeauty-58K/images/b.png").unlink()
    with pytest.raises(DataError, match=r"train_label.jsonl:3: image .*b.png not found"):
        export_swift(root, tmp_path / "s.jsonl")
    assert not (tmp_path / "s.jsonl").exists()
    with pytest.raises(DataError, match="is a folder"):
        export_swift(root, tmp_path)
    with pytest.raises(DataError, match="has no nope_label.jsonl"):
        export_swift(root, tmp_path / "s.jsonl", split="nope")


def test_cli_round_trip_and_errors(root, tmp_path):
    runner = CliRunner()
    swift = tmp_path / "s.jsonl"
    done = runner.invoke(main, ["data", "export", "--format", "swift", str(root), "--out", str(swift)])
    assert done.exit_code == 0, done.output
    assert "wrote 4 rows (3 overall-only, 1 12-dimension)" in done.output
    back = tmp_path / "back"
    done = runner.invoke(main, ["data", "import", "--format", "swift", str(swift), "--out", str(back), "--images-root", str(root)])
    assert done.exit_code == 0, done.output
    assert len(load_split(back, "train")) == 4

    for args, message in [
        (["--out", str(tmp_path / "x")], "error: --format swift needs --images-root"),
        (["--out", str(tmp_path / "x"), "--images-root", str(root), "--scale", "1", "10"], "error: --scale does not apply"),
        (["--out", str(tmp_path / "x"), "--images-root", str(tmp_path / "nope")], "error: --images-root"),
    ]:
        done = runner.invoke(main, ["data", "import", "--format", "swift", str(swift), *args])
        assert done.exit_code == 2 and message in done.output, done.output
    done = runner.invoke(main, ["data", "import", str(swift), "--out", str(tmp_path / "x")])
    assert done.exit_code == 2 and "error: --images and --scale are required" in done.output


def test_merge_lora_keeps_export_as_a_hidden_alias():
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"]).output
    assert "merge-lora" in listing and " export " not in listing
    for name in ("merge-lora", "export"):
        done = runner.invoke(main, [name, "--help"])
        assert done.exit_code == 0 and "CONFIG_FILE CHECKPOINT" in done.output
        done = runner.invoke(main, [name, "missing.yaml", "ckpt", "--out", "o"])
        assert done.exit_code == 2 and "does not exist" in done.output  # both reach the same command


def test_export_of_the_shared_mebeauty_set(data_dir, tmp_path):
    out = tmp_path / "mebeauty.jsonl"
    export_swift(data_dir, out)
    rows, labels = _rows(out), _rows(data_dir / "train_label.jsonl")
    assert len(rows) == len(labels) == 1768
    for row, label in zip(rows, labels):
        assert row["response"] == f"The aesthetics of the human image is {label['text_level']}"
        assert row["scores"] == [0.0] * 11 + [label["score"]] and row["is_expert"] == 0
        assert row["images"] == [str((data_dir / label["image_name"]).absolute())]


def test_a_second_writer_is_refused(root, tmp_path):
    from humanaes.errors import HumanAesError
    from humanaes.fsutil import OutputLock

    swift = tmp_path / "s.jsonl"
    export_swift(root, swift)
    with OutputLock(swift), pytest.raises(HumanAesError, match="is being written by process"):
        export_swift(root, swift)
    back = tmp_path / "back"
    with OutputLock(back), pytest.raises(HumanAesError, match="is being written by process"):
        import_swift(swift, out=back, images_root=root)
    assert not back.exists()
