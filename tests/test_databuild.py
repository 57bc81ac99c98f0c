"""`humanaes data build`: spec checks, filters, dedup, normalisation, split, report, resume, publish.

The proof on real data (issue 15, must 5) builds a small set from shared MEBeauty photos plus
generated pictures without people, with an injected exact duplicate and a resized near-duplicate.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.nonhuman import nonhuman_images  # noqa: E402
from humanaes import data as D  # noqa: E402
from humanaes.cli import main  # noqa: E402
from humanaes.data.build import BuildInterrupted, build_dataset, load_spec  # noqa: E402
from humanaes.data.build.build import work_dir_for  # noqa: E402
from humanaes.data.build.dedup import duplicate_groups  # noqa: E402
from humanaes.errors import ConfigError, DataError, HumanAesError  # noqa: E402
from humanaes.fsutil import OutputLock  # noqa: E402

MEBEAUTY_ROWS = 20
NONHUMAN = 8
LICENCE = "MEBeauty: non-commercial research only"


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, data_dir):
    """Two sources: MEBeauty (24 photos + a resized copy of one: a near-duplicate within the source)
    and Scenes (generated pictures without people + an exact copy of a MEBeauty photo: a duplicate
    across sources). Returns (spec path, facts for the assertions)."""
    root = tmp_path_factory.mktemp("sources")
    labels = [json.loads(line) for line in (data_dir / "HumanBeauty-58K" / "label.jsonl").read_text().splitlines()]
    # Skip MEBeauty's own byte-identical copies, so the only duplicates are the injected ones.
    seen, chosen = set(), []
    for row in labels:
        digest = (data_dir / "HumanBeauty-58K" / "images" / row["image_name"]).read_bytes()
        if digest not in seen:
            seen.add(digest)
            chosen.append(row)
        if len(chosen) == MEBEAUTY_ROWS:
            break
    me = root / "mebeauty"
    (me / "photos" / "sub").mkdir(parents=True)
    lines = []
    for i, row in enumerate(chosen):
        rel = f"sub/{row['image_name']}" if i % 2 else row["image_name"]  # nested paths too
        shutil.copyfile(data_dir / "HumanBeauty-58K" / "images" / row["image_name"], me / "photos" / rel)
        lines.append(f"{rel},{row['raw_score']!r}")
    near_of = chosen[3]["image_name"]
    original = Image.open(me / "photos" / "sub" / near_of)
    original.resize((original.width * 3 // 5, original.height * 3 // 5), Image.Resampling.LANCZOS).save(
        me / "photos" / "near_copy.jpg", quality=85
    )
    lines.append("near_copy.jpg,5.5")
    _write_csv(me / "ratings.csv", "path,mean rating", lines)

    scenes = root / "scenes"
    scenes.mkdir()
    rows = []
    generated = nonhuman_images(NONHUMAN, seed=3)
    for k, (name, picture) in enumerate(generated):
        picture.save(scenes / f"{name}.jpg", quality=90)
        rows.append({"file": f"{name}.jpg", "stars": k % 5 + 1})
    exact_of = chosen[6]["image_name"]
    shutil.copyfile(data_dir / "HumanBeauty-58K" / "images" / exact_of, scenes / "copy_of_photo.jpg")
    rows.append({"file": "copy_of_photo.jpg", "stars": 3})
    (scenes / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    spec = root / "spec.yaml"
    spec.write_text(
        f"""
seed: 7
test_ratio: 0.1
sources:
  - name: MEBeauty
    table: mebeauty/ratings.csv
    images: mebeauty/photos
    image_column: path
    score_column: mean rating
    range: [1, 10]
    licence: "{LICENCE}"
  - name: Scenes
    table: scenes/scores.jsonl
    image_column: file
    score_column: stars
    range: min-max
filters:
  min_resolution: {{min_side: 64}}
  human: {{face: true, person: hog}}
  dedup: {{max_distance: 6}}
""",
        encoding="utf-8",
    )
    facts = {
        "raw": {(f"sub/{r['image_name']}" if i % 2 else r["image_name"]): r["raw_score"] for i, r in enumerate(chosen)},
        "nonhuman": [f"{name}.jpg" for name, _ in generated],
        "near_of": f"sub/{near_of}",
        "exact_of": exact_of,
        "root": root,
    }
    return spec, facts


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory):
    spec, facts = sources
    out = tmp_path_factory.mktemp("built") / "HumanBeautyMini"
    result = build_dataset(spec, out, workers=1)
    return out, result, facts


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _drops(out: Path) -> dict[tuple[str, str], dict]:
    return {(d["source"], d["image"]): d for d in _rows(out / "dropped.jsonl")}


# -- the proof on real data (must 5) ------------------------------------------------------------------


def test_nonhuman_pictures_are_dropped_as_no_human(built):
    out, _, facts = built
    drops = _drops(out)
    for name in facts["nonhuman"]:
        assert drops[("Scenes", name)]["reason"] == "no human", name
    kept = {r["image_name"] for r in _rows(out / "HumanBeauty-58K" / "label.jsonl")}
    assert not any(name.startswith("Scenes_") for name in kept)


def test_mebeauty_faces_are_kept(built):
    out, _, facts = built
    kept = [r for r in _rows(out / "HumanBeauty-58K" / "label.jsonl") if r["source"] == "MEBeauty"]
    originals = set(facts["raw"])
    dropped_originals = [d for (src, img), d in _drops(out).items() if src == "MEBeauty" and img in originals]
    assert len(kept) >= 0.95 * MEBEAUTY_ROWS, dropped_originals
    assert len(kept) + len(dropped_originals) == MEBEAUTY_ROWS


def test_injected_duplicates_are_removed_and_the_originals_kept(built):
    out, _, facts = built
    drops = _drops(out)
    exact = drops[("Scenes", "copy_of_photo.jpg")]
    near = drops[("MEBeauty", "near_copy.jpg")]
    assert exact["reason"] == "exact duplicate" and facts["exact_of"] in exact["detail"]
    assert near["reason"] == "near duplicate" and near["detail"] == f"of MEBeauty/{facts['near_of']}"
    assert ("MEBeauty", facts["near_of"]) not in drops  # the larger original stays


def test_output_validates_and_train_reads_it(built):
    out, _, _ = built
    report = D.validate_dataset(out)
    assert report.ok, report.problems[:3]
    assert not report.warnings, report.warnings[:3]  # includes "images in both train and test"
    train, test = D.load_split(out, "train"), D.load_split(out, "test")
    assert {s.image_name for s in train}.isdisjoint({s.image_name for s in test})
    assert all(s.image.is_file() for s in train + test)
    kept = _rows(out / "HumanBeauty-58K" / "label.jsonl")
    assert len(train) + len(test) == len(kept)
    # 90/10 per source: round(n * 0.1) test rows of each source
    for source in {r["source"] for r in kept}:
        n = sum(1 for r in kept if r["source"] == source)
        assert sum(1 for s in test if s.source == source) == round(n * 0.1)


def test_scores_are_normalised_per_source_and_licence_travels(built):
    out, _, facts = built
    rows = _rows(out / "train_label.jsonl") + _rows(out / "test_label.jsonl")
    me = [r for r in rows if r["source"] == "MEBeauty"]
    assert me
    for r in me:
        rel = next(rel for rel in facts["raw"] if r["image_name"].endswith(rel.replace("/", "_")))
        assert r["raw_score"] == facts["raw"][rel]
        assert r["score"] == round((facts["raw"][rel] - 1) / 9, 6)  # golden: the declared 1-10 scale
        assert r["raw_scale"] == [1.0, 10.0]
        assert r["licence"] == LICENCE
        assert r["is_expert"] is False
        assert r["text_level"] == D.score_to_level(r["score"])


def test_images_are_relative_symlinks_to_the_sources(built):
    out, _, facts = built
    images = out / "HumanBeauty-58K" / "images"
    some = sorted(images.iterdir())[0]
    assert some.is_symlink() and not os.path.isabs(os.readlink(some))
    assert some.resolve().is_relative_to(facts["root"].resolve())


def test_report_counts_histograms_and_contact_sheets(built):
    out, result, facts = built
    report = json.loads((out / "build_report.json").read_text())
    assert report == result.report
    me, scenes = report["sources"]["MEBeauty"], report["sources"]["Scenes"]
    assert me["rows_in"] == MEBEAUTY_ROWS + 1 and scenes["rows_in"] == NONHUMAN + 1
    assert scenes["dropped"] == {"no human": NONHUMAN, "exact duplicate": 1}
    assert scenes["kept"] == 0 and scenes["scale"] == [1.0, 5.0] and scenes["scale_from"] == "min-max of the source"
    assert me["dropped"].get("near duplicate") == 1
    assert me["licence"] == LICENCE
    assert sum(me["histograms"]["raw_in"]["counts"]) == me["rows_in"]
    assert sum(me["histograms"]["normalised_kept"]["counts"]) == me["kept"] == sum(me["levels"].values())
    assert me["histograms"]["normalised_kept"]["edges"][-1] == 1.0 and me["histograms"]["raw_kept"]["edges"][0] == 1.0
    assert me["train"] + me["test"] == me["kept"]
    for reason in ("no human", "exact duplicate", "near duplicate"):
        sheet = report["contact_sheets"][reason]
        with Image.open(out / sheet["file"]) as image:
            assert image.format == "PNG" and image.width == 6 * 160
    md = (out / "build_report.md").read_text()
    assert f"| MEBeauty | {MEBEAUTY_ROWS + 1} |" in md and LICENCE in md and "build_report/no-human.png" in md


@pytest.fixture(scope="module")
def scenes_only(sources):
    """The spec with only the Scenes source (generated pictures + two photos, so that train and test
    each get one row at test_ratio 0.5): cheap to probe."""
    spec, facts = sources
    scenes = facts["root"] / "scenes"
    first_photo = next(iter(facts["raw"]))  # not the photo copied into Scenes (chosen[6])
    shutil.copyfile(facts["root"] / "mebeauty" / "photos" / first_photo, scenes / "second_photo.jpg")
    rows = (scenes / "scores.jsonl").read_text(encoding="utf-8") + json.dumps({"file": "second_photo.jpg", "stars": 4}) + "\n"
    (scenes / "scores-only.jsonl").write_text(rows, encoding="utf-8")
    small = spec.with_name("scenes-only.yaml")
    text = spec.read_text().replace("test_ratio: 0.1", "test_ratio: 0.5").replace("scenes/scores.jsonl", "scenes/scores-only.jsonl")
    small.write_text(text[: text.index("  - name: MEBeauty")] + text[text.index("  - name: Scenes") :])
    return small


def test_build_is_deterministic_and_resumes_without_reprobing(scenes_only, tmp_path, monkeypatch):
    """Interrupt a build after 5 images, resume it: only the rest is probed, and every output
    file is byte-identical to an uninterrupted build's."""
    from humanaes.data.build import probe

    first = build_dataset(scenes_only, tmp_path / "first", workers=1)
    assert first.report["totals"]["kept"] == 2  # the two photos; the rest has no human
    assert (first.report["totals"]["train"], first.report["totals"]["test"]) == (1, 1)
    out = tmp_path / "again"
    calls: list[Path] = []
    real = probe.Prober.probe

    def interrupted(self, path):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(path)
        return real(self, path)

    monkeypatch.setattr(probe.Prober, "probe", interrupted)
    with pytest.raises(BuildInterrupted, match="run the same command again"):
        build_dataset(scenes_only, out, workers=1)
    assert not out.exists()  # nothing published
    (cache,) = work_dir_for(out).glob("probe-*.jsonl")
    assert len(cache.read_text().splitlines()) == 5
    assert not list(tmp_path.glob(".again.staging-*"))

    calls.clear()
    monkeypatch.setattr(probe.Prober, "probe", lambda self, path: (calls.append(path), real(self, path))[1])
    result = build_dataset(scenes_only, out, workers=1)
    total = NONHUMAN + 2
    assert len(calls) == total - 5 and result.reused == 5 and result.probed == total - 5
    assert not work_dir_for(out).exists()  # removed once published
    for name in ("train_label.jsonl", "test_label.jsonl", "HumanBeauty-58K/label.jsonl", "dropped.jsonl",
                 "build_report.json", "build_report.md"):
        assert (out / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name


@pytest.mark.slow
def test_parallel_workers_give_the_same_output(scenes_only, tmp_path):
    """The spawn pool (2 worker processes) against the in-process path."""
    a = build_dataset(scenes_only, tmp_path / "a", workers=1)
    build_dataset(scenes_only, tmp_path / "b", workers=2)
    assert a.report["totals"]["kept"] == 2
    for name in ("train_label.jsonl", "test_label.jsonl", "dropped.jsonl", "build_report.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# -- bad input: one-line errors, nothing published ---------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    """A source of 4 generated pictures with every image filter off (no detectors: fast), split
    half and half (test_ratio 0.5) so that both train and test get rows."""
    folder = tmp_path / "src"
    folder.mkdir()
    for k, (name, picture) in enumerate(nonhuman_images(4, seed=11)):
        picture.save(folder / f"{name}.png")
    _write_csv(folder / "t.csv", "image,score", [f"{name}.png,{k + 2}" for k, (name, _) in enumerate(nonhuman_images(4, seed=11))])

    def make(source_extra: str = "", filters: str = "  human: false\n  dedup: false\n", table: str = "src/t.csv") -> Path:
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"test_ratio: 0.5\nsources:\n  - name: Tiny\n    table: {table}\n    range: [0, 10]\n{source_extra}filters:\n{filters}", encoding="utf-8"
        )
        return spec

    return make


def _error(spec: Path, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(main, ["data", "build", str(spec), "--out", str(out), "-j", "1", "-q", *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not list(out.parent.glob(f".{out.name}.staging-*"))  # nothing half-built left behind
    return lines[0]


def test_missing_table_and_missing_column_name_the_cause(tiny, tmp_path):
    assert "does not exist" in _error(tiny(table="src/nope.csv"), tmp_path / "o")
    message = _error(tiny(source_extra="    score_column: rating\n"), tmp_path / "o")
    assert "no score column 'rating'" in message and "columns found: 'image', 'score'" in message


def test_score_that_is_no_finite_number_is_refused(tiny, tmp_path):
    # Bug caught: a text, a NaN or a JSON true taken as a score (float("nan"), float(True) == 1.0).
    table = tmp_path / "src" / "t.csv"
    original = table.read_text()
    for cell, needle in [("lots", "score must be a number, got 'lots'"), (" nan ", "score must be finite, got ' nan '")]:
        table.write_text(original.replace(",3\n", f",{cell}\n"))
        assert f"t.csv:3: {needle}" in _error(tiny(), tmp_path / "o")
    rows = [{"image": p.name, "score": 5} for p in sorted((tmp_path / "src").glob("*.png"))]
    rows[1]["score"] = True
    (tmp_path / "src" / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "t.jsonl:2: score must be a number, got True" in _error(tiny(table="src/t.jsonl"), tmp_path / "o")


def test_score_outside_range_and_single_score_are_refused(tiny, tmp_path):
    table = tmp_path / "src" / "t.csv"
    table.write_text(table.read_text().replace(",3\n", ",11\n"))
    message = _error(tiny(), tmp_path / "o")
    assert "t.csv:3: score 11 is outside the declared range [0, 10]" in message
    table.write_text("image,score\n" + "".join(f"{p.name},4\n" for p in sorted((tmp_path / "src").glob("*.png"))))
    spec = tiny()
    spec.write_text(spec.read_text().replace("range: [0, 10]", "range: min-max"))
    assert "min-max normalisation needs at least 2 distinct scores" in _error(spec, tmp_path / "o")


def test_image_path_escaping_the_source_root_is_refused(tiny, tmp_path):
    table = tmp_path / "src" / "t.csv"
    (tmp_path / "outside.png").write_bytes((tmp_path / "src" / "noise_1.png").read_bytes())
    table.write_text(table.read_text() + "../outside.png,5\n")
    assert "'../outside.png' escapes the source's image folder" in _error(tiny(), tmp_path / "o")
    table.write_text(table.read_text().replace("../outside.png", str(tmp_path / "outside.png")))
    assert "escapes the source's image folder" in _error(tiny(), tmp_path / "o")


def test_spec_errors_are_one_line(tiny, tmp_path):
    spec = tiny(filters="  human: {face: true, persn: hog}\n")
    with pytest.raises(ConfigError, match=r"\.yaml: unknown filters\.human key 'persn'; valid keys: face, face_detect_size, "
                                          r"min_face_fraction, min_face_score, person, person_min_weight$"):
        load_spec(spec)
    spec = tiny(filters="  human: {face: true, persn: hog, dedupe: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown filters\.human keys 'persn', 'dedupe'"):
        load_spec(spec)
    spec = tiny(source_extra="    licence: CC-BY\n    license: MIT\n")  # an alias must not hide a second value
    with pytest.raises(ConfigError, match=r"source 'Tiny': 'licence' and 'license' are the same setting; give only one"):
        load_spec(spec)
    spec.write_text("sources: []\n")
    assert "sources must be a non-empty list" in _error(spec, tmp_path / "o")
    spec.write_text("sources: [\n")
    assert "is not valid YAML" in _error(spec, tmp_path / "o")


def test_a_different_build_needs_force_and_a_foreign_folder_is_never_replaced(tiny, tmp_path):
    out = tmp_path / "o"
    spec = tiny()
    first = build_dataset(spec, out, workers=1)
    assert first.report["totals"]["kept"] == 4
    build_dataset(spec, out, workers=1)  # the same build again: allowed
    spec.write_text(spec.read_text().replace("range: [0, 10]", "range: [0, 20]"))
    assert "already holds a different build" in _error(spec, out)
    assert json.loads((out / "build_report.json").read_text())["fingerprint"] == first.report["fingerprint"]
    build_dataset(spec, out, workers=1, force=True)
    assert _rows(out / "HumanBeauty-58K" / "label.jsonl")[0]["raw_scale"] == [0.0, 20.0]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert "not a `humanaes data build` output" in _error(spec, foreign, "--force")
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_failure_while_writing_publishes_nothing(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise DataError("disk full (simulated)")

    (tmp_path / ".o.staging-999999" / "x").mkdir(parents=True)  # left by a killed run
    monkeypatch.setattr(D, "split_dataset", broken)
    with pytest.raises(DataError, match="simulated"):
        build_dataset(tiny(), tmp_path / "o", workers=1)
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o")] == []


def test_a_split_with_an_empty_side_is_refused_before_anything_is_written(tiny, tmp_path, monkeypatch):
    """4 kept rows at test_ratio 0.1 give round(0.4) = 0 test rows (0.9: 0 train rows): the build
    says so in the spec's terms, per source, before linking a single image."""
    from humanaes.data.build import build as B

    linked: list[Path] = []
    real_link = B._link_or_copy
    monkeypatch.setattr(B, "_link_or_copy", lambda original, target, *rest: (linked.append(target), real_link(original, target, *rest))[1])
    spec = tiny()
    out = tmp_path / "o"
    spec.write_text(spec.read_text().replace("test_ratio: 0.5", "test_ratio: 0.1"))
    assert _error(spec, out) == (
        "error: test_ratio 0.1 leaves the test split empty: each source puts round(kept x test_ratio) rows in test, "
        "and the rows kept per source are Tiny: 4; raise test_ratio in the spec or keep more rows "
        "(more sources or rows, looser filters); nothing published"
    )
    spec.write_text(spec.read_text().replace("test_ratio: 0.1", "test_ratio: 0.9"))
    message = _error(spec, out)
    assert "test_ratio 0.9 leaves the train split empty" in message and "lower test_ratio in the spec" in message
    spec.write_text(spec.read_text().replace("test_ratio: 0.9", "test_ratio: 0.5").replace("human: false", "min_resolution: {min_side: 4000}\n  human: false"))
    assert "all 4 rows were dropped (too small: 4); nothing published" in _error(spec, out)
    assert linked == [] and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o")] == []


def test_a_build_in_progress_holds_the_output_lock(tiny, tmp_path):
    with OutputLock(tmp_path / "o"):
        with pytest.raises(HumanAesError, match="is being written by process"):
            build_dataset(tiny(), tmp_path / "o", workers=1)


def test_copy_mode_copies_and_filters_record_their_reasons(tiny, tmp_path):
    folder = tmp_path / "src"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "small.png")
    (folder / "broken.png").write_bytes((folder / "noise_1.png").read_bytes()[:200])
    table = folder / "t.csv"
    table.write_text(table.read_text() + "small.png,1\nbroken.png,1\nmissing.png,1\nnoise_1.png,9\n")
    spec = tiny(filters="  min_resolution: {min_side: 64}\n  human: false\n")
    result = build_dataset(spec, tmp_path / "o", workers=1, copy=True)
    drops = _drops(tmp_path / "o")
    assert drops[("Tiny", "small.png")] | {} == {**drops[("Tiny", "small.png")], "reason": "too small", "detail": "40x30"}
    assert drops[("Tiny", "broken.png")]["reason"] == "undecodable"
    assert drops[("Tiny", "missing.png")]["reason"] == "missing image"
    assert drops[("Tiny", "noise_1.png")]["reason"] == "exact duplicate"
    assert "listed again" in drops[("Tiny", "noise_1.png")]["detail"]
    assert result.report["totals"] == {"rows_in": 8, "kept": 4, "train": 2, "test": 2, "dropped": 4}
    images = list((tmp_path / "o" / "HumanBeauty-58K" / "images").iterdir())
    assert len(images) == 4 and not any(p.is_symlink() for p in images)


def test_duplicate_groups_by_digest_and_hash_distance():
    digests = ["a", "b", "a", "c", "d", "e"]
    hashes = ["0000000000000000", "ffffffffffffffff", "0f0f0f0f0f0f0f0f", "0000000000000007", "000000000000003f", None]
    # a/a: same bytes; 0..0 and ..07 differ in 3 bits; ..3f is 6 bits from 0 and 3 from ..07: one chain
    assert duplicate_groups(digests, hashes, 3) == [[0, 2, 3, 4]]
    assert duplicate_groups(digests, hashes, 2) == [[0, 2]]
    assert duplicate_groups(digests, hashes, None) == [[0, 2]]


def test_cli_build_prints_a_summary_and_the_result_validates(tiny, tmp_path):
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["data", "build", str(tiny()), "--out", str(out), "-j", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"built {out}: 4 of 4 rows kept (2 train, 2 test); dropped 0 (none); report {out / 'build_report.md'}"
    )
    validated = CliRunner().invoke(main, ["data", "validate", str(out)])
    assert validated.exit_code == 0 and "0 problems, 0 warnings" in validated.output


def test_max_faces_drops_a_picture_with_two_faces(data_dir, tmp_path):
    photos = sorted((data_dir / "HumanBeauty-58K" / "images").glob("*.jpg"))[:2]
    folder = tmp_path / "src"
    folder.mkdir()
    faces = [Image.open(p).convert("RGB") for p in photos]
    height = min(f.height for f in faces)
    faces = [f.resize((f.width * height // f.height, height)) for f in faces]
    pair = Image.new("RGB", (sum(f.width for f in faces), height))
    pair.paste(faces[0], (0, 0))
    pair.paste(faces[1], (faces[0].width, 0))
    pair.save(folder / "two.jpg", quality=90)
    shutil.copyfile(photos[0], folder / "one.jpg")
    shutil.copyfile(photos[1], folder / "other.jpg")  # two kept rows: one for train, one for test
    _write_csv(folder / "t.csv", "image,score", ["two.jpg,3", "one.jpg,4", "other.jpg,2"])
    spec = tmp_path / "spec.yaml"
    spec.write_text("test_ratio: 0.5\nsources:\n  - {name: Pairs, table: src/t.csv, range: [1, 5]}\nfilters:\n  max_faces: 1\n  dedup: false\n")
    result = build_dataset(spec, tmp_path / "o", workers=1)
    drops = _drops(tmp_path / "o")
    assert result.report["totals"]["kept"] == 2
    assert drops == {("Pairs", "two.jpg"): {"source": "Pairs", "image": "two.jpg", "line": 2, "reason": "too many faces", "detail": "2 faces"}}


def test_tsv_with_bom_and_case_insensitive_columns_is_read(tmp_path):
    from humanaes.data.build.sources import read_source
    from humanaes.data.build.spec import SourceSpec

    (tmp_path / "a b").mkdir()
    (tmp_path / "t.tsv").write_text("\ufeffFile Name\tMOS\n\"a b/x, y.jpg\"\t2.5\nz.jpg\t4.5\n\n", encoding="utf-8")
    table = read_source(SourceSpec("T", tmp_path / "t.tsv", tmp_path, "file name", "mos", None))
    assert [(r.rel, r.raw_score, r.line) for r in table.rows] == [("a b/x, y.jpg", 2.5, 2), ("z.jpg", 4.5, 3)]
    assert table.scale == (2.5, 4.5) and table.normalise(3.0) == 0.25 and table.normalise(4.5) == 1.0


def test_probe_cache_skips_a_torn_last_line(tmp_path):
    # Bug caught: the cut-short last line of a killed run makes the resumed build fail (or keep junk).
    from humanaes.data.build.build import _read_cache

    cache = tmp_path / "probe-x.jsonl"
    good = json.dumps({"key": "a\0 1\0 2", "facts": {"sha256": "00"}}, sort_keys=True)
    cache.write_text(f"{good}\n[1]\n{{\"key\": \"b\", \"facts\": 3}}\n{{\"key\": \"c\", \"fa", encoding="utf-8")
    assert _read_cache(cache) == {"a\0 1\0 2": {"sha256": "00"}}
    assert _read_cache(tmp_path / "none.jsonl") == {}
