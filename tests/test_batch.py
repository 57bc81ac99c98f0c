"""`humanaes batch`: job folder, exactly-once shards, resume, --verify, bad input, Ray engine.

Fast tests run the local engine in-process with the real bundled model (float32, one thread).
Tests marked `slow` start a local Ray instance (2 CPUs) in a subprocess driver, kill it, and
resume; each removes its Ray processes in teardown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import humanaes
from humanaes import io as hio
from humanaes.cli import main
from humanaes.distributed import job as jobdir
from humanaes.distributed.runner import BatchConfig, run_batch
from humanaes.errors import HumanAesError
from humanaes.fsutil import OutputLock

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "HumanBeauty" / "HumanBeauty-58K" / "images"
MEBEAUTY = ("mebeauty_female_asian_13.jpg", "mebeauty_female_asian_20.jpg", "mebeauty_female_asian_21.jpg")
#: humanaes-mini, float32, on mebeauty_female_asian_13.jpg (also what `humanaes score` gives)
GOLDEN_ASIAN_13 = 0.5751696825027466


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_threads() -> Any:
    # --threads 1 sets PyTorch's process-wide thread count; later tests expect the conftest's.
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scorer_cache() -> dict[tuple, Any]:
    return {}


@pytest.fixture
def cached_load(monkeypatch: pytest.MonkeyPatch, scorer_cache: dict[tuple, Any]) -> list[tuple]:
    """humanaes.load, but each (model, dtype, exif) loads once per module (the real model)."""
    real_load = humanaes.load
    calls: list[tuple] = []

    def load(model: Any = None, *, device: Any = "auto", dtype: Any = "auto", apply_exif: bool = True, **kw: Any) -> Any:
        key = (model, dtype, apply_exif)
        calls.append(key)
        if key not in scorer_cache:
            scorer_cache[key] = real_load(model, device="cpu", dtype=dtype, apply_exif=apply_exif)
        return scorer_cache[key]

    monkeypatch.setattr(humanaes, "load", load)
    return calls


def _tiny_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"t{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (24 + i % 7, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder of 12 tiny generated images plus 3 real MEBeauty photos (when shared data is here)."""
    folder = tmp_path / "imgs"
    _tiny_images(folder, 12)
    if SHARED_IMAGES.is_dir():
        for name in MEBEAUTY:
            shutil.copy(SHARED_IMAGES / name, folder / name)
    return folder


def _config(inputs: list[Any], out: Path, **kw: Any) -> BatchConfig:
    kw.setdefault("dtype", "float32")
    kw.setdefault("threads", 1)
    kw.setdefault("quiet", True)
    return BatchConfig(inputs=[str(i) for i in inputs], out=out, **kw)


def _rows_by_id(out: Path) -> dict[str, dict[str, Any]]:
    rows = jobdir.read_rows(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id appears twice in the output"
    return {r["id"]: r for r in rows}


def _cli(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False)


# -- the local engine ---------------------------------------------------------------------------


def test_rows_equal_the_api_with_error_rows_for_bad_items(tmp_path: Path, images: Path, cached_load: list) -> None:
    missing = tmp_path / "imgs" / "gone.jpg"
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    broken = tmp_path / "broken.jpg"  # read fine, refused by the decoder (the CPU preprocessing stage)
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{missing}\n{fifo}\n{broken}\n", encoding="utf-8")
    out = tmp_path / "job"
    summary = run_batch(_config([images, manifest], out))
    rows = _rows_by_id(out)
    expected = hio.discover_images([images])
    assert set(rows) == {str(p) for p in expected} | {str(missing), str(fifo.resolve()), str(broken)}
    assert summary.failed == 3 and summary.scored == len(expected) + 3
    assert rows[str(broken)]["error"] == humanaes.load(None, dtype="float32").score([str(broken)])[0].error
    assert "file not found" in rows[str(missing)]["error"]
    assert "not a regular file" in rows[str(fifo.resolve())]["error"]  # never opened for reading: no hang
    # same scores as the Python API on the same files (the path `humanaes score` takes)
    api = humanaes.load(None, dtype="float32").score([str(p) for p in expected], batch_size=8)
    for result in api:
        assert rows[result.image]["overall"] == pytest.approx(result.overall, abs=1e-6)
        assert rows[result.image]["error"] is None and rows[result.image]["model"] == "humanaes-mini"
    # shards carry id and path plus exactly the flat columns of `score --format parquet`
    shard = jobdir.committed_shards(out)[0]
    assert tuple(pq.read_schema(shard).names) == ("id", "path", *hio.COLUMNS)
    if SHARED_IMAGES.is_dir():
        assert rows[str(images / MEBEAUTY[0])]["overall"] == pytest.approx(GOLDEN_ASIAN_13, abs=1e-4)


def test_the_bundled_preprocessor_ships_without_the_model_and_matches_score(tmp_path: Path, images: Path) -> None:
    """What the CPU tasks get: picklable, no CNN weights, the same inputs as score() (bit for
    bit, through the safetensors blob), and the same scores through score_prepared_batch."""
    import pickle

    import torch

    from humanaes.distributed.stages import pack_prepared, unpack_prepared
    from humanaes.models.mini.scorer import MiniPreprocessor
    from humanaes.models.registry import load_preprocessor
    from humanaes.scorer import prepare_items

    scorer = humanaes.load(None, device="cpu", dtype="float32")
    pre = load_preprocessor(None)
    blob = pickle.dumps(pre)
    assert isinstance(pre, MiniPreprocessor) and pre.detector is not None
    assert len(blob) < 4 * 2**20 < (Path(humanaes.__file__).parent / "models" / "mini" / "humanaes-mini.safetensors").stat().st_size
    shipped = pickle.loads(blob)
    typed = scorer.parse_options()
    paths = [str(p) for p in hio.discover_images([images])]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    batch = [(p, Path(p).read_bytes()) for p in paths] + [(str(broken), broken.read_bytes())]
    failed, ready = prepare_items(shipped, batch, typed)
    assert [r.error for r in failed if r is not None] == [scorer.score([broken])[0].error]  # worded as score() words it
    assert len(ready) == len(paths)
    faces = 0
    for _, name, value in ready:
        again = unpack_prepared(pack_prepared(value))
        mine = scorer.prepare_source(name, name, typed)
        assert torch.equal(again[0], mine[0]) and again[0].dtype == torch.uint8
        assert (again[1] is None) == (mine[1] is None)
        if mine[1] is not None:
            faces += 1
            assert torch.equal(again[1], mine[1])
    assert faces == (len(MEBEAUTY) if SHARED_IMAGES.is_dir() else 0)  # the face chips travel too
    prepared = [unpack_prepared(pack_prepared(v)) for _, _, v in ready]
    direct = scorer.score(paths)
    scored = scorer.score_prepared_batch(prepared, paths)
    assert [r.overall for r in scored] == [r.overall for r in direct]
    assert [r.person_found for r in scored] == [r.person_found for r in direct]


def test_actors_only_run_the_forward_when_stage_two_ran(tmp_path: Path, images: Path, cached_load: list,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The model actor scores prepared rows without decoding or preparing anything."""
    from humanaes.distributed.inputs import gather_inputs
    from humanaes.distributed.stages import BatchScorer, items_table, prepare_images, read_images
    from humanaes.models.registry import load_preprocessor

    items = gather_inputs([str(images)])
    typed = humanaes.load(None, dtype="float32").parse_options()
    prepared = prepare_images(read_images(items_table(items)), preprocessor=load_preprocessor(None), options=typed)
    actor = BatchScorer(model=None, mode="fast", options={}, dtype="float32")
    api = actor.scorer.score([i.path for i in items], batch_size=len(items))  # one batch, as the actor's

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the actor decoded or prepared an image")

    for hook in ("decode", "prepare", "prepare_source", "preprocessor"):
        monkeypatch.setattr(actor.scorer, hook, forbidden)
    rows = {r["id"]: r for r in actor(prepared).to_pylist()}
    assert [rows[i.id]["overall"] for i in items] == [r.overall for r in api]


def test_the_cpu_stage_gets_the_options_the_actor_scores_with(tmp_path: Path, cached_load: list) -> None:
    """-o use_face=false / --no-exif reach the CPU tasks typed exactly as the actor parses them."""
    from humanaes.distributed.runner import job_spec, preprocess_kwargs, scorer_kwargs

    typed = []
    for options in ({}, {"use_face": "false", "apply_exif": False}, {"tta_flip": "true"}):
        config = _config([tmp_path], tmp_path / "job", engine="ray", options=options)
        kwargs = scorer_kwargs(config, job_spec(config))
        stage = preprocess_kwargs(config, kwargs)
        assert stage is not None
        assert stage["options"] == humanaes.load(None, dtype="float32").parse_options(**kwargs["options"])
        typed.append(stage["options"])
    assert typed[0].use_face is True and typed[0].apply_exif is True  # the defaults of humanaes.load
    assert typed[1].use_face is False and typed[1].apply_exif is False and typed[2].tta_flip is True


def test_a_scorer_with_its_own_hooks_prepares_in_the_actor(tmp_path: Path, images: Path, cached_load: list,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No preprocessor apart from the scorer (a subclass's own prepare): the job still runs,
    the hook is used, and the trace shows the preparing was done where the scoring was."""
    from humanaes.models.mini.scorer import BundledScorer

    class Mirrored(BundledScorer):
        def prepare(self, image: Any, **options: Any) -> Any:
            return super().prepare(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), **options)

    base = humanaes.load(None, device="cpu", dtype="float32")
    mirrored = Mirrored(base.model, base.meta)
    assert mirrored.preprocessor() is None and base.preprocessor() is not None
    monkeypatch.setattr(humanaes, "load", lambda *a, **k: mirrored)
    trace = tmp_path / "trace"
    monkeypatch.setenv("HUMANAES_BATCH_TRACE", str(trace))
    out = tmp_path / "job"
    run_batch(_config([images], out))
    rows = _rows_by_id(out)
    expected = mirrored.score([str(p) for p in hio.discover_images([images])])
    assert [rows[r.image]["overall"] for r in expected] == [r.overall for r in expected]
    assert any(rows[r.image]["overall"] != o.overall for r, o in zip(expected, base.score([r.image for r in expected])))
    lines = [line.split() for line in trace.read_text().splitlines()]
    assert {stage for stage, _, _ in lines} == {"prepare", "score"}
    assert sum(int(n) for stage, _, n in lines if stage == "prepare") == len(expected)


def test_resume_scores_only_the_missing_ids(tmp_path: Path, images: Path, cached_load: list) -> None:
    out = tmp_path / "job"
    first = run_batch(_config([images], out, shard_rows=4))
    shards = jobdir.committed_shards(out)
    assert len(shards) == 4  # 15 rows in shards of 4
    before = _rows_by_id(out)
    lost = set(pq.read_table(shards[1]).column("id").to_pylist())
    shards[1].unlink()  # as if the driver died before committing that shard
    (out / "shards" / ".part-00000009-dead.parquet.tmp").write_bytes(b"half a shard")
    second = run_batch(_config([images], out, shard_rows=4))
    assert second.skipped == first.total - len(lost) and second.scored == len(lost)
    after = _rows_by_id(out)
    assert set(after) == set(before)
    assert all(after[i]["overall"] == before[i]["overall"] for i in before)
    assert not [p for p in (out / "shards").iterdir() if p.name.endswith(".tmp")]  # stale temp removed
    third = run_batch(_config([images], out))
    assert third.scored == 0 and third.skipped == first.total


def test_committer_drops_repeated_ids(tmp_path: Path) -> None:
    out = tmp_path / "job"
    (out / "shards").mkdir(parents=True)
    schema = jobdir.shard_schema()

    def table(ids: list[str]) -> Any:
        rows = [dict.fromkeys(schema.names) | {"id": i, "path": i, "image": i, "overall": 0.5} for i in ids]
        return pa.Table.from_pylist(rows, schema=schema)

    committer = jobdir.ShardCommitter(out, {"done"}, shard_rows=100)
    assert committer.add(table(["a", "b", "done"])) == 2
    assert committer.add(table(["b", "c"])) == 1  # a retried task's repeat of "b"
    committer.flush()
    assert sorted(r["id"] for r in jobdir.read_rows(out)) == ["a", "b", "c"]
    assert committer.duplicates_dropped == 2


def test_verify_reports_missing_and_duplicates(tmp_path: Path, images: Path, cached_load: list) -> None:
    out = tmp_path / "job"
    run_batch(_config([images], out, shard_rows=5))
    ok = _cli(["batch", str(images), "--out", str(out), "--verify"])
    assert ok.exit_code == 0, ok.output
    assert "15 ids in the input, 15 done" in ok.output and "0 missing, 0 duplicated" in ok.output
    shards = jobdir.committed_shards(out)
    shutil.copy(shards[0], out / "shards" / "part-99999999-copy.parquet")
    dropped = pq.read_table(shards[1]).column("id").to_pylist()
    shards[1].unlink()
    bad = _cli(["batch", str(images), "--out", str(out), "--verify"])
    assert bad.exit_code == 1
    assert "5 missing, 5 duplicated" in bad.output
    assert f"missing: {sorted(dropped)[0]}" in bad.output
    assert not jobdir.verify(out, [str(p) for p in hio.discover_images([images])]).ok


def test_retry_errors_rescores_error_rows_once(tmp_path: Path, cached_load: list) -> None:
    folder = tmp_path / "imgs"
    good = _tiny_images(folder, 3)
    late = tmp_path / "late.png"
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join(map(str, [*good, late])) + "\n", encoding="utf-8")
    out = tmp_path / "job"
    assert run_batch(_config([manifest], out)).failed == 1
    shutil.copy(good[0], late)
    assert run_batch(_config([manifest], out)).scored == 0  # without the flag, error rows count as done
    again = run_batch(_config([manifest], out, retry_errors=True))
    assert again.scored == 1 and again.failed == 0
    rows = _rows_by_id(out)
    assert rows[str(late)]["error"] is None
    assert rows[str(late)]["overall"] == pytest.approx(rows[str(good[0])]["overall"], abs=1e-9)


def test_table_manifests_globs_and_id_columns(tmp_path: Path, cached_load: list) -> None:
    folder = tmp_path / "imgs"
    paths = _tiny_images(folder, 4)
    csv = tmp_path / "list.csv"
    csv.write_text("key,file\n007,imgs/t0000.png\n008,imgs/nope.png\n", encoding="utf-8")
    parquet = tmp_path / "list.parquet"
    pq.write_table(pa.table({"id": ["p1"], "path": [str(paths[1])]}), parquet)
    out = tmp_path / "job"
    run_batch(_config([csv], out, path_column="file", id_column="key"))
    rows = _rows_by_id(out)
    assert set(rows) == {"007", "008"}  # ids kept as text, relative paths from the manifest's folder
    assert rows["007"]["path"] == str(paths[0]) and rows["007"]["error"] is None
    assert "file not found" in rows["008"]["error"]
    out2 = tmp_path / "job2"
    run_batch(_config([parquet, str(folder / "t000[23].png")], out2))
    rows = _rows_by_id(out2)
    assert set(rows) == {"p1", str(paths[2]), str(paths[3])}  # the `id` column is used when present


def test_pyarrow_fs_uris_are_listed_and_read(tmp_path: Path, cached_load: list) -> None:
    paths = _tiny_images(tmp_path / "imgs", 3)
    csv = tmp_path / "remote.csv"
    csv.write_text(f"image\nfile://{tmp_path}/imgs/gone.png\n", encoding="utf-8")
    out = tmp_path / "job"
    run_batch(_config([f"file://{tmp_path}/imgs/", csv], out))
    rows = _rows_by_id(out)
    assert set(rows) == {f"file://{p}" for p in paths} | {f"file://{tmp_path}/imgs/gone.png"}
    assert rows[f"file://{tmp_path}/imgs/gone.png"]["error"].startswith(f"file://{tmp_path}/imgs/gone.png: cannot read")
    local = run_batch(_config([tmp_path / "imgs"], tmp_path / "job2"))
    assert local.failed == 0
    by_path = _rows_by_id(tmp_path / "job2")
    for p in paths:  # the same bytes, the same score, whichever way they were read
        assert rows[f"file://{p}"]["overall"] == by_path[str(p)]["overall"]


def test_manifest_without_the_path_column_names_its_columns(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("name,score\na.jpg,1\n", encoding="utf-8")
    result = _cli(["batch", str(csv), "--out", str(tmp_path / "job")])
    assert result.exit_code == 2
    assert "no 'image', 'image_name' or 'path' column" in result.output
    assert "its columns are: name, score" in result.output
    assert not (tmp_path / "job").exists()


def test_refuses_a_job_of_other_settings_unless_force(tmp_path: Path, images: Path, cached_load: list) -> None:
    out = tmp_path / "job"
    run_batch(_config([images], out))
    other_model = tmp_path / "other-model"  # the bundled model saved elsewhere: another model for the record
    other_model.mkdir()
    for name in ("humanaes-mini.json", "humanaes-mini.safetensors"):
        shutil.copy(Path(humanaes.__file__).parent / "models" / "mini" / name, other_model / name)
    for extra, what in ((["--no-exif"], "options"), (["--dtype", "bfloat16"], "dtype"), (["--mode", "all"], "mode"),
                        (["--model", str(other_model)], "model")):
        args = ["batch", str(images), "--out", str(out), "--threads", "1", *extra]
        if "--dtype" not in extra:
            args += ["--dtype", "float32"]
        result = _cli(args)
        assert result.exit_code == 2, result.output
        assert f"holds a job with a different {what}" in result.output and "--force" in result.output
    assert len(_rows_by_id(out)) == 15  # nothing touched
    forced = _cli(["batch", str(images), "--out", str(out), "--threads", "1", "--dtype", "float32", "--no-exif", "--force", "-q"])
    assert forced.exit_code == 0, forced.output
    assert "discarded" in forced.output
    record = json.loads((out / "job.json").read_text())
    from humanaes.models.mini.scorer import MiniOptions

    # every typed option of the model, given or default, is in the record
    assert record["spec"]["options"] == dataclasses.asdict(MiniOptions(apply_exif=False))
    assert len(_rows_by_id(out)) == 15


def test_output_that_is_not_a_job_is_refused(tmp_path: Path, images: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    result = _cli(["batch", str(images), "--out", str(other)])
    assert result.exit_code == 2 and "is not a humanaes batch job" in result.output
    assert (other / "notes.txt").read_text() == "mine" and sorted(os.listdir(other)) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = _cli(["batch", str(images), "--out", str(a_file)])
    assert result.exit_code == 2 and "Error" in result.output or "is a file" in result.output
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "job.json").write_text('{"format": "something-else"}')
    result = _cli(["batch", str(images), "--out", str(bogus)])
    assert result.exit_code == 2 and "not a humanaes batch job record" in result.output


def test_a_running_job_holds_the_folder(tmp_path: Path, images: Path) -> None:
    out = tmp_path / "job"
    with OutputLock(out, what="--out"):
        result = _cli(["batch", str(images), "--out", str(out)])
    assert result.exit_code == 2
    assert f"is being written by process {os.getpid()}" in result.output


def test_usage_errors_fail_before_any_work(tmp_path: Path, images: Path) -> None:
    for args, message in (
        (["--concurrency", "2"], "need --engine ray"),
        (["--batch-size", "0"], "--batch-size must be between"),
        (["--shard-rows", "0"], "--shard-rows must be at least 1"),
        (["--max-tiles", "3"], "option 'max_tiles' not available with model 'humanaes-mini'"),
        (["-o", "use_face=maybe"], "use_face"),
        (["-o", "nope"], "expected NAME=VALUE"),
    ):
        result = _cli(["batch", str(images), "--out", str(tmp_path / "job"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    result = _cli(["batch", str(tmp_path / "no-*.jpg"), "--out", str(tmp_path / "job")])
    assert result.exit_code == 2 and "the glob matches no files" in result.output


def test_two_ids_for_one_name_are_refused(tmp_path: Path) -> None:
    paths = _tiny_images(tmp_path / "imgs", 2)
    csv = tmp_path / "list.csv"
    csv.write_text(f"id,image\nx,{paths[0]}\nx,{paths[1]}\n", encoding="utf-8")
    result = _cli(["batch", str(csv), "--out", str(tmp_path / "job")])
    assert result.exit_code == 2 and "id 'x' names two different images" in result.output


def test_forced_threads_are_not_lowered_by_the_automatic_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """--threads N (an actor's threads) is N even where the automatic choice would give fewer."""
    import torch

    from humanaes import runtime
    from humanaes.distributed.stages import BatchScorer

    monkeypatch.setattr(runtime, "default_threads", lambda probe=None: 1)  # a busy node
    BatchScorer(model=None, mode="fast", options={}, dtype="float32", threads=3)
    assert torch.get_num_threads() == 3


def test_local_engine_does_not_import_ray(tmp_path: Path) -> None:
    paths = _tiny_images(tmp_path / "imgs", 2)
    code = (
        "import sys; from humanaes.cli import main\n"
        f"try:\n    main(['batch', {str(paths[0])!r}, '--out', {str(tmp_path / 'job')!r}, '-q', '--threads', '1'])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('ray' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"


def test_unreachable_ray_address_fails_within_seconds(tmp_path: Path, images: Path) -> None:
    pytest.importorskip("ray")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    # a subprocess with a time limit: a hang (the bug) fails the test instead of stalling the suite
    done = subprocess.run(
        [sys.executable, "-m", "humanaes.cli", "batch", str(images), "--out", str(tmp_path / "job"), "--engine", "ray",
         "--address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=90, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 2, done.stderr
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in done.stderr
    assert time.monotonic() - start < 30
    with pytest.raises(HumanAesError, match="not a port number"):
        from humanaes.distributed.ray_engine import probe_address

        probe_address("ray://head:abc")


# -- the Ray engine (slow: each driver starts a local Ray instance) ------------------------------

RAY_FLAGS = ["--engine", "ray", "--local-cpus", "2", "--object-store-mb", "150", "--concurrency", "2",
             "--cpus-per-actor", "0.5", "--threads", "1", "--dtype", "float32", "--batch-size", "16", "-q"]


@pytest.fixture(scope="module")
def ray_job_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """300 tiny images, 3 MEBeauty photos and a missing file, with the uninterrupted
    `--engine local` rows as the reference."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("rayjob")
    _tiny_images(root / "imgs", 300, seed=1)
    if SHARED_IMAGES.is_dir():
        for name in MEBEAUTY:
            shutil.copy(SHARED_IMAGES / name, root / "imgs" / name)
    manifest = root / "extra.txt"
    manifest.write_text(f"{root / 'imgs' / 'missing.jpg'}\n", encoding="utf-8")
    reference = root / "local"
    import torch

    threads = torch.get_num_threads()
    run_batch(BatchConfig(inputs=[str(root / "imgs"), str(manifest)], out=reference, dtype="float32", threads=1,
                          batch_size=16, quiet=True))
    torch.set_num_threads(threads)  # --threads 1 is process-wide; later tests expect the conftest's count
    return root, _rows_by_id(reference)


def _driver(root: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "humanaes.cli", "batch", str(root / "imgs"), str(root / "extra.txt"),
            "--out", str(out), *RAY_FLAGS, *extra]
    full_env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", **(env or {}))
    # its own session: the test can signal the driver alone, as a user's kill would
    return subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_shards(out: Path, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(jobdir.committed_shards(out)) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"driver ended early ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {count} shards within {timeout} s")


def _ray_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"/tmp/hray-" in (entry / "cmdline").read_bytes():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120])
        except OSError:
            continue
    return found


@pytest.fixture
def no_leaked_ray() -> Any:
    yield
    from humanaes.distributed.ray_engine import reap_orphaned_instances

    deadline = time.monotonic() + 30
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(1)
    leaked = _ray_processes()
    reap_orphaned_instances()  # never leave them to the next test, even when failing
    assert not leaked, f"Ray processes left behind: {leaked}"


def _assert_same_as_local(out: Path, reference: dict[str, dict[str, Any]]) -> None:
    rows = _rows_by_id(out)  # asserts each id once
    assert set(rows) == set(reference)
    for item_id, row in reference.items():
        assert rows[item_id]["overall"] == row["overall"], item_id
        assert rows[item_id]["error"] == row["error"], item_id
    verify = jobdir.verify(out, list(reference))
    assert verify.ok and verify.done == len(reference)


@pytest.mark.slow
def test_ray_engine_equals_local(tmp_path: Path, ray_job_input: tuple, no_leaked_ray: None) -> None:
    root, reference = ray_job_input
    out = tmp_path / "job"
    trace = tmp_path / "trace"
    proc = _driver(root, out, env={"HUMANAES_BATCH_TRACE": str(trace)})
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 1, output  # the missing file is an error row
    _assert_same_as_local(out, reference)
    # decoding + preprocessing ran in CPU tasks, never in the model actors (nor the driver)
    lines = [line.split() for line in trace.read_text().splitlines()]
    preparers = {pid for stage, pid, _ in lines if stage == "prepare"}
    scorers = {pid for stage, pid, _ in lines if stage == "score"}
    readable = sum(1 for row in reference.values() if row["error"] is None)
    assert sum(int(n) for stage, _, n in lines if stage == "prepare") == readable
    assert sum(int(n) for stage, _, n in lines if stage == "score") == readable
    assert preparers and scorers and not preparers & scorers and str(proc.pid) not in preparers | scorers
    if SHARED_IMAGES.is_dir():
        assert reference[str(root / "imgs" / MEBEAUTY[0])]["overall"] == pytest.approx(GOLDEN_ASIAN_13, abs=1e-4)


@pytest.mark.slow
def test_ray_lost_actor_is_replaced_without_duplicates(tmp_path: Path, ray_job_input: tuple, no_leaked_ray: None) -> None:
    root, reference = ray_job_input
    out = tmp_path / "job"
    marker = tmp_path / "actor-died"
    proc = _driver(root, out, "--shard-rows", "32", env={"HUMANAES_BATCH_FAULT": f"exit-after=48,marker={marker}"})
    output, _ = proc.communicate(timeout=400)
    assert marker.exists(), "the fault was not injected"
    if proc.returncode not in (0, 1):  # Ray gave up on the task: the rerun must finish the job
        rerun = _driver(root, out, "--shard-rows", "32")
        output, _ = rerun.communicate(timeout=400)
    _assert_same_as_local(out, reference)


@pytest.mark.slow
def test_ray_driver_killed_then_resumed(tmp_path: Path, ray_job_input: tuple, no_leaked_ray: None) -> None:
    root, reference = ray_job_input
    out = tmp_path / "job"
    first = _driver(root, out, "--shard-rows", "16")
    _wait_for_shards(out, 2, first)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 130, output
    after_term = jobdir.verify(out, list(reference))
    assert after_term.missing and not after_term.duplicates
    second = _driver(root, out, "--shard-rows", "16")
    _wait_for_shards(out, len(jobdir.committed_shards(out)) + 2, second)
    second.kill()  # SIGKILL: nothing runs in the driver after this
    second.communicate(timeout=60)
    after_kill = jobdir.verify(out, list(reference))
    assert len(after_kill.missing) < len(after_term.missing) and not after_kill.duplicates
    third = _driver(root, out, "--shard-rows", "16")
    output, _ = third.communicate(timeout=400)
    assert third.returncode in (0, 1), output  # 1 when the missing file's error row was left to this run
    _assert_same_as_local(out, reference)
    verify = _cli(["batch", str(root / "imgs"), str(root / "extra.txt"), "--out", str(out), "--verify"])
    assert verify.exit_code == 0 and "0 missing, 0 duplicated" in verify.output


# -- Ray Serve ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_serve_deployment_scores_over_http_and_sheds_load(tmp_path: Path, no_leaked_ray: None) -> None:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    import socket
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from humanaes.distributed.ray_engine import DRIVER_PID_FILE, LOCAL_PREFIX
    from humanaes.distributed.serve import ReplicaSettings, build_application

    image = _tiny_images(tmp_path / "imgs", 1)[0]
    if SHARED_IMAGES.is_dir():
        image = SHARED_IMAGES / MEBEAUTY[0]
    data = image.read_bytes()
    expected = humanaes.load(None, device="cpu", dtype="float32").score([str(image)])[0].overall
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix=LOCAL_PREFIX, dir="/tmp")
    Path(temp, DRIVER_PID_FILE).write_text(f"{os.getpid()}\n")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, object_store_memory=150 * 2**20, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        replicas = ReplicaSettings(num_cpus=0.5, max_ongoing_requests=1, max_queued_requests=1, retry_after_s=3)
        app = build_application(None, replicas=replicas, load_options={"device": "cpu", "dtype": "float32", "threads": 1})
        serve.run(app, name="humanaes", route_prefix="/")  # returns once the replica has loaded the model
        url = f"http://127.0.0.1:{port}/v1/score"

        def post(_: int) -> httpx.Response:
            return httpx.post(url, files={"files": (image.name, data, "image/jpeg")}, timeout=120)

        one = post(0)
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["model"] == "humanaes-mini" and len(body["results"]) == 1
        assert body["results"][0]["overall"] == pytest.approx(expected, abs=1e-6)
        # 1 request on the replica + 1 queued in Serve: the rest of a burst is shed at once
        with ThreadPoolExecutor(10) as pool:
            burst = list(pool.map(post, range(10)))
        statuses = sorted(r.status_code for r in burst)
        assert 429 in statuses and set(statuses) <= {200, 429}, statuses
        shed = next(r for r in burst if r.status_code == 429)
        assert shed.headers.get("retry-after") == "3"
        for response in burst:
            if response.status_code == 200:
                assert response.json()["results"][0]["overall"] == pytest.approx(expected, abs=1e-6)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_sampling_settings_without_annotation_are_refused_before_the_job(tmp_path: Path) -> None:
    """-o do_sample=true with a mode that writes no annotation is refused when the job is set up
    (its record), not batch after batch in the model actors."""
    from humanaes.distributed.runner import BatchConfig, job_spec

    config = BatchConfig(inputs=[str(tmp_path)], out=tmp_path / "job", model="humanaes-tiny", mode="fast",
                         options={"do_sample": "true"})
    with pytest.raises(HumanAesError, match="only applies to the annotation"):
        job_spec(config)
    annotate = BatchConfig(inputs=[str(tmp_path)], out=tmp_path / "job", model="humanaes-tiny", mode="annotate",
                           options={"do_sample": "true", "seed": "4"})
    assert job_spec(annotate).options["seed"] == 4
