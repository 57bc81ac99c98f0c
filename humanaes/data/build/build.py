"""`humanaes data build`: from public data sets (a spec) to a HumanBeauty-style data set.

Steps, in order:

1. **Check** the spec and every source table (columns, numbers, range, image paths) and the
   output folder; any problem stops here, before anything is written.
2. **Probe** every listed image once (decode, size, faces, a person, hashes; `probe.py`) on all
   cores. Each result is appended to a cache in the work folder `<OUT>.work/` as it arrives, so an
   interrupted build resumes without probing finished images again.
3. **Filter** the rows on those facts (each drop gets a reason) and **deduplicate** the survivors
   by content and perceptual hash, across sources.
4. **Write** a complete data set into a staging folder beside OUT: images linked (relative
   symlinks) or copied, `HumanBeauty-58K/label.jsonl`, the seeded per-source train/test split
   (`humanaes.data.split_dataset`), `dropped.jsonl`, the report and its contact sheets; check it
   with `humanaes.data.validate_dataset`; then **publish** it as OUT in one rename, under a lock.

The same spec and inputs give byte-identical label files: rows follow the spec's source order and
each table's row order, scores are rounded to 6 decimals, and nothing depends on worker timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humanaes.data.build import report as R
from humanaes.data.build.dedup import duplicate_groups
from humanaes.data.build.probe import ProbeSettings
from humanaes.data.build.sources import SourceRow, SourceTable, read_source
from humanaes.data.build.spec import BUILD_SUBSET, BuildSpec, Filters, load_spec
from humanaes.errors import DataError, HumanAesError
from humanaes.fsutil import OutputLock, atomic_write, file_sha256, publish_dir, staging_dir
from humanaes.io.jsonl import json_lines, write_json_lines
from humanaes.schema import score_to_level

REPORT_JSON = "build_report.json"
REPORT_MD = "build_report.md"
SHEETS_DIR = "build_report"
DROPPED = "dropped.jsonl"

# Drop reasons, in the order the filters are applied.
MISSING = "missing image"
UNDECODABLE = "undecodable"
TOO_SMALL = "too small"
NO_HUMAN = "no human"
TOO_MANY_FACES = "too many faces"
EXACT_DUPLICATE = "exact duplicate"
NEAR_DUPLICATE = "near duplicate"
REASONS = (MISSING, UNDECODABLE, TOO_SMALL, NO_HUMAN, TOO_MANY_FACES, EXACT_DUPLICATE, NEAR_DUPLICATE)


class BuildInterrupted(HumanAesError):
    """The build was stopped (Ctrl-C) while probing; its work folder is kept for a resume."""


@dataclass
class _Item:
    """One source row on its way through the filters."""

    row: SourceRow
    order: int  # position over all sources, in spec then table order
    facts: dict[str, Any]
    reason: str | None = None
    detail: str | None = None
    name: str | None = None  # output file name, once kept
    kept: Path | None = None  # the copy kept instead of this duplicate


@dataclass
class BuildResult:
    out: Path
    report: dict[str, Any]
    probed: int = 0  # images probed in this run
    reused: int = 0  # images whose facts came from the work folder of an interrupted run
    extra: dict[str, Any] = field(default_factory=dict)


# -- helpers ----------------------------------------------------------------------------------------


def fingerprint(spec: BuildSpec) -> str:
    """What makes a build the same build: the spec's content and each source table's bytes."""
    parts = {"spec": spec.canonical(), "tables": {s.name: file_sha256(s.table) for s in spec.sources}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def work_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def _check_output(out: Path, digest: str, force: bool) -> None:
    """Refuse an output that holds something other than this build (a different build only with
    `force`; a folder that is no build at all, never: --force must not delete a user's files)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"--out {out} exists and is not a folder; choose a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    report = out / REPORT_JSON
    if not report.is_file():
        raise DataError(
            f"--out {out} already holds files that are not a `humanaes data build` output; choose a new or empty folder"
        )
    try:
        previous = json.loads(report.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != digest and not force:
        raise DataError(
            f"--out {out} already holds a different build (other spec or source tables); pass --force to replace it"
        )


def _link_or_copy(original: Path, target: Path, final_folder: Path, copy: bool) -> None:
    try:
        if copy:
            shutil.copyfile(original, target)
        else:
            # Relative to the folder the link will have once published (the staging folder sits
            # beside OUT, so the relative path is the same), so OUT and the sources can move together.
            target.symlink_to(os.path.relpath(os.path.realpath(original), os.path.realpath(final_folder)))
    except OSError as exc:
        hint = "" if copy else "; pass --copy to copy the images instead"
        raise DataError(f"cannot create {target} ({exc.strerror or exc}){hint}") from None


def _output_name(row: SourceRow, taken: set[str]) -> str:
    stem, dot, ext = row.rel.rpartition(".")
    if not dot or "/" in ext:
        stem, ext = row.rel, ""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in stem.replace("/", "_")).strip("_.") or "image"
    name = f"{row.source}_{safe}" + (f".{ext.lower()}" if ext else "")
    if name in taken:  # two paths that differ only in characters replaced above
        name = f"{row.source}_{safe}_{hashlib.sha1(row.rel.encode()).hexdigest()[:8]}" + (f".{ext.lower()}" if ext else "")
    taken.add(name)
    return name


# -- probing ------------------------------------------------------------------------------------------

_WORKER: Any = None
_WORKER_SETTINGS: ProbeSettings | None = None


def _init_worker(settings: ProbeSettings) -> None:
    # Only remembers the settings: a failing Pool initializer would be restarted forever, so the
    # detectors load on the first image, where an error reaches the parent like any other.
    global _WORKER_SETTINGS
    import signal

    # Ctrl-C reaches the whole process group; only the parent acts on it (it stops the pool).
    # A worker dying of it mid-task would leave the pool waiting for a result forever.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_SETTINGS = settings


def _probe_one(path: str) -> tuple[str, dict[str, Any]]:
    global _WORKER
    if _WORKER is None:
        import torch

        from humanaes.data.build.probe import Prober

        torch.set_num_threads(1)  # one process per core already
        _WORKER = Prober(_WORKER_SETTINGS)  # type: ignore[arg-type]
    return path, _WORKER.probe(Path(path))


def _stat_key(path: Path) -> str | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}"


def _read_cache(cache: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not cache.is_file():
        return done
    with cache.open("r", encoding="utf-8") as handle:
        # A line that is not JSON (the last one of a killed run may be cut short) is None: skipped.
        for _, entry, _ in json_lines(handle):
            if isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("facts"), dict):
                done[entry["key"]] = entry["facts"]
    return done


def _probe_all(
    paths: list[Path], settings: ProbeSettings, cache: Path, workers: int, progress: bool
) -> tuple[dict[Path, dict[str, Any]], int, int]:
    """Facts of every path (cached ones reused); returns (facts, probed now, reused)."""
    from tqdm import tqdm

    from humanaes.data.build.probe import check_dependencies

    check_dependencies(settings)  # here, before any worker starts
    done = _read_cache(cache)
    facts: dict[Path, dict[str, Any]] = {}
    todo: dict[str, Path] = {}
    keys: dict[Path, str] = {}
    for path in paths:
        key = _stat_key(path)
        if key is None:
            facts[path] = {"sha256": None, "error": "missing"}
        elif key in done:
            facts[path] = done[key]
        else:
            todo[str(path)] = path
            keys[path] = key
    reused = len(paths) - len(todo) - sum(1 for f in facts.values() if f.get("error") == "missing")
    if not todo:
        return facts, 0, reused
    bar = tqdm(total=len(todo), desc="probing images", unit="img", disable=not progress, file=sys.stderr)
    finished = 0
    with cache.open("a", encoding="utf-8") as handle:

        def record(path_text: str, result: dict[str, Any]) -> None:
            nonlocal finished
            path = todo[path_text]
            facts[path] = result
            handle.write(json.dumps({"key": keys[path], "facts": result}, sort_keys=True) + "\n")
            handle.flush()  # a killed run loses at most the images in flight
            finished += 1
            bar.update(1)

        try:
            if workers <= 1:
                from humanaes.data.build.probe import Prober

                prober = Prober(settings)
                for path_text, path in todo.items():
                    record(path_text, prober.probe(path))
            else:
                import multiprocessing

                # spawn: each worker starts clean (no forked torch thread pools or locks).
                ctx = multiprocessing.get_context("spawn")
                with ctx.Pool(workers, initializer=_init_worker, initargs=(settings,)) as pool:
                    for path_text, result in pool.imap_unordered(_probe_one, sorted(todo), chunksize=4):
                        record(path_text, result)
        except KeyboardInterrupt:
            bar.close()
            raise BuildInterrupted(
                f"interrupted after probing {finished} of {len(todo)} images; "
                f"the work folder {cache.parent} is kept: run the same command again to resume"
            ) from None
        finally:
            bar.close()
    return facts, len(todo), reused


# -- filtering ----------------------------------------------------------------------------------------


def _apply_filters(items: list[_Item], filters: Filters) -> None:
    """Set `reason` (and `detail`) of every item a per-image filter drops."""
    first_of_path: dict[Path, _Item] = {}
    for item in items:
        f, row = item.facts, item.row
        if f.get("error") == "missing":
            item.reason, item.detail = MISSING, "file not found"
        elif f.get("error"):
            item.reason, item.detail = UNDECODABLE, str(f["error"])
        elif (filters.min_side and min(f["width"], f["height"]) < filters.min_side) or (
            filters.min_pixels and f["width"] * f["height"] < filters.min_pixels
        ):
            item.reason, item.detail = TOO_SMALL, f"{f['width']}x{f['height']}"
        elif filters.human is not None and not _has_human(f, filters):
            item.reason = NO_HUMAN
            weight = f.get("person_weight")
            item.detail = "no face, no person" if weight is None else f"no face, person margin {weight:g}"
        elif filters.max_faces is not None and (f.get("faces") or 0) > filters.max_faces:
            item.reason, item.detail = TOO_MANY_FACES, f"{f['faces']} faces"
        elif row.path in first_of_path:
            first = first_of_path[row.path].row
            item.reason, item.detail = EXACT_DUPLICATE, f"listed again (first at line {first.line} of {first.source})"
        else:
            first_of_path[row.path] = item


def _has_human(facts: dict[str, Any], filters: Filters) -> bool:
    human = filters.human
    assert human is not None
    if human.face and (facts.get("faces") or 0) > 0:
        return True
    weight = facts.get("person_weight")
    return human.person == "hog" and weight is not None and weight >= human.person_min_weight


def _deduplicate(items: list[_Item], filters: Filters) -> None:
    """Keep one item per duplicate group: the most pixels, then the earliest source and row."""
    if filters.dedup_distance is None:
        return
    alive = [i for i in items if i.reason is None]
    groups = duplicate_groups([i.facts["sha256"] for i in alive], [i.facts.get("phash") for i in alive], filters.dedup_distance)
    for group in groups:
        members = [alive[k] for k in group]
        keep = min(members, key=lambda i: (-(i.facts.get("width") or 0) * (i.facts.get("height") or 0), i.order))
        for item in members:
            if item is keep:
                continue
            exact = item.facts["sha256"] == keep.facts["sha256"]
            item.reason = EXACT_DUPLICATE if exact else NEAR_DUPLICATE
            item.detail = f"of {keep.row.source}/{keep.row.rel}"
            item.kept = keep.row.path


# -- the build -----------------------------------------------------------------------------------------


def _source_report(table: SourceTable, items: list[_Item], splits: dict[str, str]) -> dict[str, Any]:
    kept = [i for i in items if i.reason is None]
    normalised = [table.normalise(i.row.raw_score) for i in kept]
    lo, hi = table.scale
    return {
        "table": str(table.spec.table),
        "images": str(table.spec.images),
        "licence": table.spec.licence,
        "scale": [lo, hi],
        "scale_from": "declared" if table.spec.raw_range is not None else "min-max of the source",
        "rows_in": len(items),
        "kept": len(kept),
        "train": sum(1 for i in kept if splits.get(i.name or "") == "train"),
        "test": sum(1 for i in kept if splits.get(i.name or "") == "test"),
        "dropped": {r: n for r in REASONS if (n := sum(1 for i in items if i.reason == r))},
        "histograms": {
            "raw_in": R.histogram([i.row.raw_score for i in items], lo, hi),
            "raw_kept": R.histogram([i.row.raw_score for i in kept], lo, hi),
            "normalised_kept": R.histogram(normalised, 0.0, 1.0),
        },
        "levels": R.level_counts([score_to_level(s) for s in normalised]),
    }


def _remove(path: Path) -> None:
    """Remove a folder tree or a file (never following a symlink); absent is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _check_split_sizes(items: list[_Item], tables: list[SourceTable], test_ratio: float) -> None:
    """Refuse, before anything is written, a build whose split would leave train or test empty.

    `data split` refuses such a split too (an empty label file labels nothing), but worded for its
    `--test-ratio` flag; here the user can act on the spec's `test_ratio` and on what was kept.
    """
    kept = Counter(i.row.source for i in items if i.reason is None)
    if not kept:
        reasons = Counter(i.reason for i in items)
        raise DataError(
            f"all {len(items)} rows were dropped ({', '.join(f'{r}: {n}' for r, n in reasons.items())}); nothing published"
        )
    from humanaes.data.split import rows_in_test

    n_test = sum(rows_in_test(n, test_ratio) for n in kept.values())
    empty = [name for name, n in (("train", sum(kept.values()) - n_test), ("test", n_test)) if n == 0]
    if empty:
        per_source = ", ".join(f"{t.spec.name}: {kept.get(t.spec.name, 0)}" for t in tables)
        raise DataError(
            f"test_ratio {test_ratio} leaves the {' and '.join(empty)} split empty: each source puts "
            f"round(kept x test_ratio) rows in test, and the rows kept per source are {per_source}; "
            f"{'raise' if empty == ['test'] else 'lower'} test_ratio in the spec or keep more rows "
            "(more sources or rows, looser filters); nothing published"
        )


def build_dataset(
    spec_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    workers: int | None = None,
    copy: bool = False,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build the data set described by the spec at `spec_path` into `out` (see the module docstring).

    `workers`: probing processes (default: all cores; 1 probes in this process). Raises a
    HumanAesError (one line) for bad input; BuildInterrupted on Ctrl-C while probing (resumable).
    """
    from humanaes import data as D

    say = log or (lambda _message: None)
    out = Path(os.path.abspath(out))
    spec = load_spec(spec_path)
    tables = [read_source(s) for s in spec.sources]
    digest = fingerprint(spec)
    _check_output(out, digest, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    workers = max(1, workers if workers is not None else usable_cores())

    with OutputLock(out):  # (output_lock() returns a held lock; `with` on it would lock twice)
        _check_output(out, digest, force)  # again, now that no other build can change it
        settings = ProbeSettings.from_filters(spec.filters)
        work = work_dir_for(out)
        work.mkdir(exist_ok=True)
        items = [
            _Item(row, order, {}) for order, row in enumerate(r for t in tables for r in t.rows)
        ]
        paths = sorted({i.row.path for i in items})
        say(f"{len(items)} rows from {len(tables)} sources, {len(paths)} image files; probing with {workers} worker(s)")
        facts, probed, reused = _probe_all(paths, settings, work / f"probe-{settings.key()}.jsonl", workers, progress)
        if reused:
            say(f"reused the facts of {reused} images probed by an interrupted run; probed {probed}")
        for item in items:
            item.facts = facts[item.row.path]
        _apply_filters(items, spec.filters)
        _deduplicate(items, spec.filters)
        _check_split_sizes(items, tables, spec.test_ratio)

        # Under the lock no other build writes here: staging folders left by killed runs can go.
        # (`.lock` files too: split_dataset locks the staging folder through `<staging>.lock`.)
        for stale in out.parent.glob(f".{out.name}.staging-*"):
            _remove(stale)
        with staging_dir(out, label="staging-") as staging, contextlib.ExitStack() as cleanup:
            cleanup.callback(_remove, staging.with_name(staging.name + ".lock"))  # left by split_dataset's lock
            images = staging / BUILD_SUBSET / "images"
            images.mkdir(parents=True)
            final_images = out / BUILD_SUBSET / "images"
            by_source = {t.spec.name: t for t in tables}
            taken: set[str] = set()
            rows: list[dict[str, Any]] = []
            for item in items:
                if item.reason is not None:
                    continue
                table = by_source[item.row.source]
                item.name = _output_name(item.row, taken)
                _link_or_copy(item.row.path, images / item.name, final_images, copy)
                score = table.normalise(item.row.raw_score)
                row = {
                    "image_name": item.name,
                    "source": item.row.source,
                    "score": score,
                    "text_level": score_to_level(score),
                    "raw_score": item.row.raw_score,
                    "raw_scale": list(table.scale),
                }
                if table.spec.licence:
                    row["licence"] = table.spec.licence
                rows.append(row)
            write_json_lines(staging / BUILD_SUBSET / D.SUBSET_LABEL, rows)
            D.split_dataset(staging, test_ratio=spec.test_ratio, seed=spec.seed)
            splits = {}
            for split in ("train", "test"):
                for sample in D.load_jsonl(staging / f"{split}{D.SPLIT_SUFFIX}", image_root=staging):
                    splits[sample.image_name.rsplit("/", 1)[-1]] = split

            drops = [
                {"source": i.row.source, "image": i.row.rel, "line": i.row.line, "reason": i.reason, "detail": i.detail,
                 "path": str(i.row.path), "kept_path": str(i.kept) if i.kept else None}
                for i in items if i.reason is not None
            ]
            write_json_lines(staging / DROPPED, ({k: v for k, v in d.items() if k not in ("path", "kept_path")} for d in drops))
            sheets: dict[str, Any] = {}
            if drops:
                (staging / SHEETS_DIR).mkdir()
            for reason in REASONS:
                these = [d for d in drops if d["reason"] == reason]
                if these:
                    name = f"{SHEETS_DIR}/{R.reason_slug(reason)}.png"
                    shown = R.contact_sheet(reason, these, staging / name, seed=spec.seed, title_total=len(these))
                    sheets[reason] = {"file": name, "shown": shown, "dropped": len(these)}

            per_source = {t.spec.name: _source_report(t, [i for i in items if i.row.source == t.spec.name], splits) for t in tables}
            report = {
                "fingerprint": digest,
                "spec": str(Path(spec_path).resolve()),
                "seed": spec.seed,
                "test_ratio": spec.test_ratio,
                "images": "copied" if copy else "symlinked",
                "filters": spec.canonical()["filters"],
                "drop_reasons": list(REASONS),
                "totals": {
                    "rows_in": len(items),
                    "kept": len(rows),
                    "train": sum(s["train"] for s in per_source.values()),
                    "test": sum(s["test"] for s in per_source.values()),
                    "dropped": len(drops),
                },
                "sources": per_source,
                "contact_sheets": sheets,
            }
            atomic_write(staging / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            atomic_write(staging / REPORT_MD, R.markdown(report))

            check = D.validate_dataset(staging, open_images=False)
            if not check.ok:
                raise DataError(f"the built data set does not validate ({check.problems[0]}); nothing published")
            publish_dir(staging, out)
        shutil.rmtree(work, ignore_errors=True)  # complete: the probe cache is no longer needed
    say(f"published {out}: {len(rows)} images kept of {len(items)} rows ({len(drops)} dropped)")
    return BuildResult(out=out, report=report, probed=probed, reused=reused)
