"""Reading, checking, splitting and importing data in the HumanBeauty layout (reference section 6).

Layout::

    ROOT/
      <subset>/images/<file>          e.g. HumanBeauty-58K (overall only), HumanBeauty-50K (expert)
      <subset>/label.jsonl            {"image_name": "<file>", "source", "score", "text_level"?, ...}
      train_label.jsonl, test_label.jsonl, val_label.jsonl
                                      same rows + "is_expert", image_name "<subset>/images/<file>"

``score`` is a float in [0, 1] (overall only) or twelve floats in DIMENSIONS order (expert rows).
The official training script pads overall-only rows to twelve scores ``[0]*11 + [overall]``; such
rows are read as overall-only. Extra keys (``raw_score``, ``raw_scale`` ...) are kept on rewrite.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from humanaes.errors import DataError, ImageLoadError
from humanaes.schema import DIMENSIONS, LEVELS, NUM_DIMENSIONS, OVERALL, score_to_level

SPLIT_SUFFIX = "_label.jsonl"
SUBSET_LABEL = "label.jsonl"
#: Subset folder names used by `import` (the HumanBeauty names: 58K overall-only, 50K expert).
OVERALL_SUBSET = "HumanBeauty-58K"
EXPERT_SUBSET = "HumanBeauty-50K"
# Scores are normalised and rounded to 6 decimals, so a tiny slack only absorbs float noise.
_EPS = 1e-9


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    image       path of the image file (label-file folder joined with image_name)
    image_name  the name as written in the label file
    score       overall score in [0, 1] (the Comprehensive Aesthetic Score on expert rows)
    scores      the twelve dimension scores in DIMENSIONS order, or None on overall-only rows
    """

    image: Path
    image_name: str
    source: str
    score: float
    scores: tuple[float, ...] | None = None
    is_expert: bool = False
    text_level: str | None = None
    label_file: str | None = None
    line: int | None = None

    @property
    def level(self) -> str:
        return score_to_level(self.score)

    @property
    def dimension_scores(self) -> dict[str, float] | None:
        return None if self.scores is None else dict(zip(DIMENSIONS, self.scores))

    @property
    def where(self) -> str:
        """`file:line` of the row, for messages."""
        return f"{self.label_file}:{self.line}" if self.label_file else self.image_name


@dataclass
class _Row:
    """Result of checking one JSON row: the parsed fields, or the problems that block it."""

    fields: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_unit(value: Any, what: str, problems: list[str]) -> float | None:
    if not _is_number(value) or not math.isfinite(float(value)):
        problems.append(f"{what} must be a finite number, got {value!r}")
        return None
    if not (-_EPS <= float(value) <= 1 + _EPS):
        problems.append(f"{what} {value} is outside [0, 1]")
        return None
    return float(value)


def _check_row(obj: Any) -> _Row:
    """Check one label row; returns its fields or the list of problems (never raises)."""
    if not isinstance(obj, dict):
        return _Row(None, [f"row must be a JSON object, got {type(obj).__name__}"])
    problems: list[str] = []
    warnings: list[str] = []

    name = obj.get("image_name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"image_name must be a non-empty string, got {name!r}")

    source = obj.get("source")
    if source is None:
        warnings.append("no source; counted as 'unknown'")
        source = "unknown"
    elif not isinstance(source, str) or not source.strip():
        problems.append(f"source must be a non-empty string, got {source!r}")

    is_expert = obj.get("is_expert")
    if is_expert is not None and not isinstance(is_expert, bool):
        problems.append(f"is_expert must be true or false, got {is_expert!r}")
        is_expert = None

    raw = obj.get("score")
    overall: float | None = None
    scores: tuple[float, ...] | None = None
    if isinstance(raw, list):
        if len(raw) != NUM_DIMENSIONS:
            problems.append(f"score must be one number or {NUM_DIMENSIONS} numbers, got a list of {len(raw)}")
        else:
            values = [_check_unit(v, f"score[{i}] ({DIMENSIONS[i]})", problems) for i, v in enumerate(raw)]
            if all(v is not None for v in values):
                # The official script pads overall-only rows as [0]*11 + [overall].
                padded = all(v == 0 for v in values[:OVERALL])
                overall = values[OVERALL]
                if is_expert is None:
                    is_expert = not padded
                if is_expert:
                    scores = tuple(values)  # type: ignore[arg-type]
                elif not padded:
                    warnings.append(
                        "is_expert is false but the 12 scores are not the [0]*11+[overall] padding; "
                        "only the last (overall) is used"
                    )
    elif raw is None:
        problems.append("no score")
    else:
        overall = _check_unit(raw, "score", problems)
        if is_expert:
            problems.append(f"is_expert is true but score has 1 number, not {NUM_DIMENSIONS}")
        is_expert = False if is_expert is None else is_expert

    text_level = obj.get("text_level")
    if text_level is not None:
        if not isinstance(text_level, str) or text_level.strip().lower() not in LEVELS:
            problems.append(f"text_level {text_level!r} is not one of {', '.join(LEVELS)}")
            text_level = None
        else:
            text_level = text_level.strip().lower()
            if overall is not None and text_level != score_to_level(min(max(overall, 0.0), 1.0)):
                warnings.append(
                    f"text_level {text_level!r} disagrees with score {overall} "
                    f"(level {score_to_level(min(max(overall, 0.0), 1.0))!r})"
                )

    if problems:
        return _Row(None, problems, warnings)
    return _Row(
        {
            "image_name": name,
            "source": source,
            "score": min(max(overall, 0.0), 1.0),  # type: ignore[type-var]
            "scores": None if scores is None else tuple(min(max(s, 0.0), 1.0) for s in scores),
            "is_expert": bool(is_expert),
            "text_level": text_level,
        },
        [],
        warnings,
    )


def _iter_json_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line number, parsed object or None, JSON error or None) for non-blank lines."""
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read label file {path} ({exc.strerror or exc})") from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    yield number, json.loads(text), None
                except json.JSONDecodeError as exc:
                    yield number, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
        except UnicodeDecodeError:
            raise DataError(f"label file {path} is not UTF-8 text; re-save it as UTF-8") from None


def default_image_root(label_file: Path) -> Path:
    """Folder that a label file's image names are relative to.

    A subset's `label.jsonl` names files inside its `images/` folder; split files at the dataset
    root name `<subset>/images/<file>` relative to the root.
    """
    if label_file.name == SUBSET_LABEL and (label_file.parent / "images").is_dir():
        return label_file.parent / "images"
    return label_file.parent


def load_jsonl(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[Sample]:
    """Read a HumanBeauty label file; raises DataError naming file:line on the first bad row.

    Image files are not checked here (evaluation reports unreadable images per item); use
    `validate_dataset` / `humanaes data validate` for that.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else default_image_root(path)
    samples: list[Sample] = []
    for number, _, f in _checked_rows(path):
        samples.append(
            Sample(
                image=root / f["image_name"],
                image_name=f["image_name"],
                source=f["source"],
                score=f["score"],
                scores=f["scores"],
                is_expert=f["is_expert"],
                text_level=f["text_level"],
                label_file=str(path),
                line=number,
            )
        )
    return samples


def split_files(root: str | os.PathLike) -> dict[str, Path]:
    """The split label files of a dataset root, by split name (`train`, `test`, `val`, ...)."""
    root = Path(root)
    return {p.name[: -len(SPLIT_SUFFIX)]: p for p in sorted(root.glob(f"*{SPLIT_SUFFIX}")) if p.is_file()}


def subset_label_files(root: str | os.PathLike) -> dict[str, Path]:
    """The per-subset `label.jsonl` files of a dataset root, by subset folder name."""
    root = Path(root)
    return {p.parent.name: p for p in sorted(root.glob(f"*/{SUBSET_LABEL}")) if p.is_file()}


def load_split(root: str | os.PathLike, split: str) -> list[Sample]:
    """Samples of `ROOT/<split>_label.jsonl`, image paths resolved against ROOT."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder {root} does not exist; pass a HumanBeauty root folder")
    path = root / f"{split}{SPLIT_SUFFIX}"
    if not path.is_file():
        have = ", ".join(split_files(root)) or "none"
        raise DataError(
            f"{root} has no {split}{SPLIT_SUFFIX} (splits there: {have}); "
            f"pick another --split or run `humanaes data split {root}`"
        )
    return load_jsonl(path, image_root=root)


def load_samples(data: str | os.PathLike, split: str = "test") -> list[Sample]:
    """Samples of a dataset root's split, or of a label .jsonl file given directly."""
    data = Path(data)
    if data.is_file():
        return load_jsonl(data)
    return load_split(data, split)


# -- validate -------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One problem or warning, located at file:line (line 0 = the file as a whole)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass
class ValidationReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    images_checked: int = 0
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _label_files_of(path: Path) -> list[tuple[Path, Path]]:
    """(label file, image root) pairs to validate for a root folder or a single label file."""
    if path.is_file():
        return [(path, default_image_root(path))]
    if not path.is_dir():
        raise DataError(f"{path} does not exist; pass a HumanBeauty root folder or a label .jsonl file")
    pairs = [(p, default_image_root(p)) for p in subset_label_files(path).values()]
    pairs += [(p, path) for p in split_files(path).values()]
    if not pairs:
        raise DataError(
            f"{path} holds no label files (*{SPLIT_SUFFIX} or <subset>/{SUBSET_LABEL}); "
            "is it a HumanBeauty root? `humanaes data import` creates one"
        )
    return pairs


def validate_dataset(path: str | os.PathLike, *, open_images: bool = True, progress: bool = False) -> ValidationReport:
    """Check every row of every label file under a HumanBeauty root (or one label file).

    Problems (the data is unusable as is): invalid JSON, bad fields, scores outside [0, 1], expert
    rows without 12 scores, unknown level words, missing or undecodable images. Warnings: text
    level disagreeing with the score, duplicate rows, images shared between split files (leakage).
    """
    from tqdm import tqdm

    from humanaes.preprocessing import load_image

    path = Path(path)
    report = ValidationReport()
    pairs = _label_files_of(path)
    # Parse everything first so the progress bar knows the number of image checks.
    checks: list[tuple[Finding, Path]] = []
    split_members: dict[str, set[str]] = {}
    for label_file, image_root in pairs:
        report.files.append(str(label_file))
        seen: dict[str, int] = {}
        names: set[str] = set()
        for number, obj, json_error in _iter_json_lines(label_file):
            report.rows += 1
            here = Finding(str(label_file), number, "")
            if json_error:
                report.problems.append(Finding(here.file, number, json_error))
                continue
            row = _check_row(obj)
            report.problems += [Finding(here.file, number, m) for m in row.problems]
            report.warnings += [Finding(here.file, number, m) for m in row.warnings]
            name = obj.get("image_name") if isinstance(obj, dict) else None
            if isinstance(name, str) and name.strip():
                if name in seen:
                    report.warnings.append(Finding(here.file, number, f"duplicate of line {seen[name]} ({name})"))
                else:
                    seen[name] = number
                names.add(name)
                checks.append((here, image_root / name))
        if label_file.parent == path and label_file.name.endswith(SPLIT_SUFFIX):
            split_members[label_file.name[: -len(SPLIT_SUFFIX)]] = names

    # An image in two split files leaks training data into evaluation.
    splits = sorted(split_members)
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            shared = split_members[a] & split_members[b]
            if shared:
                example = sorted(shared)[0]
                report.warnings.append(
                    Finding(str(path), 0, f"{len(shared)} images are in both {a} and {b} (e.g. {example})")
                )

    status: dict[Path, str | None] = {}  # each image decoded once even if several files list it
    for here, image_path in tqdm(checks, desc="checking images", unit="img", disable=not progress):
        if image_path not in status:
            if not image_path.is_file():
                status[image_path] = "image not found" if not image_path.exists() else "image path is not a file"
            elif open_images:
                try:
                    load_image(image_path, name=str(image_path))
                    status[image_path] = None
                except ImageLoadError as exc:
                    status[image_path] = f"image does not open ({exc.cause})"
            else:
                status[image_path] = None
        if status[image_path]:
            report.problems.append(Finding(here.file, here.line, f"{status[image_path]}: {image_path}"))
    report.images_checked = len(status)
    return report


# -- split ----------------------------------------------------------------------------------------


def _group_seed(seed: int, *parts: str) -> int:
    # A stable per-group seed: adding a source or subset never reshuffles the others.
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def _checked_rows(label_file: Path) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(line number, raw row, checked fields) of a label file; DataError naming file:line on the
    first bad row."""
    for number, obj, json_error in _iter_json_lines(label_file):
        if json_error:
            raise DataError(f"{label_file}:{number}: {json_error}; fix or remove that line")
        row = _check_row(obj)
        if row.fields is None:
            raise DataError(f"{label_file}:{number}: {'; '.join(row.problems)}")
        yield number, obj, row.fields


def _read_subset_rows(label_file: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(raw row, checked fields) of a subset label file; DataError on the first bad row."""
    return [(obj, fields) for _, obj, fields in _checked_rows(label_file)]


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    # Write to a temporary file and rename, so an interrupted run never leaves half a file.
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def split_dataset(
    root: str | os.PathLike, *, test_ratio: float = 0.1, seed: int = 0, force: bool = False
) -> dict[str, Any]:
    """Write ROOT/train_label.jsonl and ROOT/test_label.jsonl from the subsets' label.jsonl.

    Each (subset, source) group is split on its own (the official 90/10 per source), shuffled with
    a seed derived from `seed` and the group's name, after sorting by image name, so the split is
    reproducible whatever the row order and unaffected by other groups. A group of n rows gets
    round(n * test_ratio) test rows. Rows keep their keys; image_name gains `<subset>/images/` and
    `is_expert` is set. Overall-only rows keep their single float score (the loader also accepts
    the official [0]*11+[overall] padding). Other split files (e.g. val) are left untouched.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder {root} does not exist")
    if not (0.0 < test_ratio < 1.0):
        raise DataError(f"--test-ratio must be between 0 and 1 (exclusive), got {test_ratio}")
    outputs = {name: root / f"{name}{SPLIT_SUFFIX}" for name in ("train", "test")}
    existing = [str(p) for p in outputs.values() if p.exists()]
    if existing and not force:
        raise DataError(f"{' and '.join(existing)} already exist; pass --force to overwrite")
    subsets = subset_label_files(root)
    if not subsets:
        raise DataError(
            f"{root} has no <subset>/{SUBSET_LABEL} files to split; "
            "`humanaes data import` writes them"
        )

    groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    order = 0
    for subset, label_file in subsets.items():
        for obj, fields in _read_subset_rows(label_file):
            out = {"image_name": f"{subset}/images/{fields['image_name']}"}
            out.update({k: v for k, v in obj.items() if k not in ("image_name", "is_expert")})
            out["is_expert"] = fields["is_expert"]
            groups[(subset, fields["source"])].append((order, out))
            order += 1

    chosen: dict[str, list[tuple[int, dict[str, Any]]]] = {"train": [], "test": []}
    counts: dict[str, dict[str, int]] = {}
    for (subset, source), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r[1]["image_name"])
        rng = np.random.default_rng(_group_seed(seed, subset, source))
        perm = rng.permutation(len(rows))
        n_test = int(round(len(rows) * test_ratio))
        test_idx = set(perm[:n_test].tolist())
        for i, row in enumerate(rows):
            chosen["test" if i in test_idx else "train"].append(row)
        counts[f"{subset}/{source}"] = {"train": len(rows) - n_test, "test": n_test}

    for name, rows in chosen.items():
        # Keep the subsets' file order inside each split: easier to diff and read.
        _write_jsonl(outputs[name], (row for _, row in sorted(rows, key=lambda r: r[0])))
    return {
        "files": {name: str(p) for name, p in outputs.items()},
        "train": len(chosen["train"]),
        "test": len(chosen["test"]),
        "groups": counts,
        "seed": seed,
        "test_ratio": test_ratio,
    }


# -- stats ----------------------------------------------------------------------------------------

HISTOGRAM_BINS = 10


def _describe(samples: list[Sample]) -> dict[str, Any]:
    scores = np.array([s.score for s in samples], dtype=np.float64)
    hist = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0] if scores.size else np.zeros(HISTOGRAM_BINS)
    levels = Counter(s.level for s in samples)
    return {
        "rows": len(samples),
        "expert_rows": sum(1 for s in samples if s.scores is not None),
        "mean": float(scores.mean()) if scores.size else None,
        "std": float(scores.std()) if scores.size else None,  # population std, as the README
        "min": float(scores.min()) if scores.size else None,
        "max": float(scores.max()) if scores.size else None,
        "levels": {level: int(levels.get(level, 0)) for level in LEVELS},
        "histogram": {
            "edges": [round(i / HISTOGRAM_BINS, 10) for i in range(HISTOGRAM_BINS + 1)],
            "counts": [int(c) for c in hist],
        },
    }


def dataset_stats(root: str | os.PathLike) -> dict[str, Any]:
    """Counts per source and split, score summary, histogram and level balance of a dataset.

    Uses the split files; a root without them is described through its subset label files
    (as split "unsplit"). A single label file is described as split "<file name>".
    """
    root = Path(root)
    parts: dict[str, list[Sample]] = {}
    if root.is_file():
        parts[root.name] = load_jsonl(root)
    elif root.is_dir():
        for name, path in split_files(root).items():
            parts[name] = load_jsonl(path, image_root=root)
        if not parts:
            unsplit = [s for p in subset_label_files(root).values() for s in load_jsonl(p)]
            if unsplit:
                parts["unsplit"] = unsplit
        if not parts:
            raise DataError(f"{root} holds no label files; is it a HumanBeauty root?")
    else:
        raise DataError(f"{root} does not exist; pass a HumanBeauty root folder or a label .jsonl file")

    per_source: dict[str, dict[str, int]] = defaultdict(lambda: {name: 0 for name in parts})
    for name, samples in parts.items():
        for s in samples:
            per_source[s.source][name] += 1
    everything = [s for samples in parts.values() for s in samples]
    return {
        "root": str(root),
        "splits": {name: _describe(samples) for name, samples in parts.items()},
        "all": _describe(everything),
        "per_source": {src: dict(c) for src, c in sorted(per_source.items())},
    }


def format_stats(stats: dict[str, Any], width: int = 40) -> str:
    """Plain-text rendering of dataset_stats() with text bars."""
    lines = [f"data set: {stats['root']}", ""]
    splits = list(stats["splits"])
    rows = [(name, stats["splits"][name]) for name in splits]
    if len(splits) > 1:
        rows.append(("all", stats["all"]))

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines.append(f"{'split':<12}{'rows':>8}{'expert':>8}{'mean':>9}{'std':>9}{'min':>9}{'max':>9}")
    for name, d in rows:
        lines.append(
            f"{name:<12}{d['rows']:>8}{d['expert_rows']:>8}{num(d['mean']):>9}{num(d['std']):>9}"
            f"{num(d['min']):>9}{num(d['max']):>9}"
        )

    lines += ["", "rows per source"]
    src_w = max([len("source")] + [len(s) for s in stats["per_source"]]) + 2
    lines.append(f"{'source':<{src_w}}" + "".join(f"{n:>10}" for n in splits) + f"{'total':>10}")
    for src, counts in stats["per_source"].items():
        lines.append(
            f"{src:<{src_w}}" + "".join(f"{counts.get(n, 0):>10}" for n in splits) + f"{sum(counts.values()):>10}"
        )

    lines += ["", "level balance"]
    lines.append(f"{'split':<12}" + "".join(f"{lv:>16}" for lv in LEVELS))
    for name, d in rows:
        total = max(d["rows"], 1)
        cells = "".join(f"{d['levels'][lv]:>7} ({100 * d['levels'][lv] / total:4.1f}%)" for lv in LEVELS)
        lines.append(f"{name:<12}{cells}")

    for name, d in rows:
        counts = d["histogram"]["counts"]
        edges = d["histogram"]["edges"]
        peak = max(max(counts), 1)
        lines += ["", f"score histogram ({name})"]
        for i, c in enumerate(counts):
            close = "]" if i == len(counts) - 1 else ")"
            bar = "#" * max(int(round(width * c / peak)), 1 if c else 0)  # a non-empty bin always shows
            lines.append(f"[{edges[i]:.1f}, {edges[i + 1]:.1f}{close} {c:>7} {bar}")
    return "\n".join(lines)


# -- import ---------------------------------------------------------------------------------------

_IMAGE_COLUMNS = ("image", "image_name", "image_path", "file", "filename", "path")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "x"


def _norm_header(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _read_table(path: Path) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """Yield (line, row dict, error) from a CSV (header required) or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for number, obj, err in _iter_json_lines(path):
            if err:
                yield number, {}, err
            elif not isinstance(obj, dict):
                yield number, {}, f"row must be a JSON object, got {type(obj).__name__}"
            else:
                yield number, obj, None
        return
    if suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: unsupported table format {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(f"input file {path} does not exist; check the path") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ",")
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file; expected a header row like `image,score`")
            keys = [_norm_header(h) for h in header]
            for cells in reader:
                number = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(keys):
                    yield number, {}, f"{len(cells)} columns, header has {len(keys)}"
                    continue
                yield number, dict(zip(keys, cells)), None
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return out


def _parse_import_row(row: dict[str, Any]) -> tuple[str, float | None, list[float] | None]:
    """(image, raw overall or None, raw 12 scores or None) of one input row; ValueError if bad."""
    lowered = {_norm_header(str(k)): v for k, v in row.items()}
    image = next((lowered[c] for c in _IMAGE_COLUMNS if c in lowered), None)
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"no image name (column/key one of: {', '.join(_IMAGE_COLUMNS)})")

    score = lowered.get("score")
    dims: list[Any] | None = None
    if isinstance(score, list):  # JSONL: "score": [12 numbers], as in HumanBeauty
        dims, score = score, None
    if "scores" in lowered and lowered["scores"] not in (None, ""):
        dims = lowered["scores"]
    named = [_norm_header(d) for d in DIMENSIONS]
    present = [n for n in named if n in lowered and str(lowered[n]).strip() not in ("", "None")]
    if present:
        if len(present) != NUM_DIMENSIONS:
            missing = [DIMENSIONS[i] for i, n in enumerate(named) if n not in present]
            raise ValueError(f"has {len(present)} of the 12 dimension scores; missing: {', '.join(missing)}")
        dims = [lowered[n] for n in named]
    if dims is not None:
        if not isinstance(dims, list) or len(dims) != NUM_DIMENSIONS:
            raise ValueError(f"dimension scores must be {NUM_DIMENSIONS} numbers in the reference order")
        values = [_number(v, DIMENSIONS[i]) for i, v in enumerate(dims)]
        if score not in (None, ""):
            overall = _number(score, "score")
            if abs(overall - values[OVERALL]) > 1e-6 * max(1.0, abs(overall)):
                raise ValueError(
                    f"score {overall} disagrees with the Comprehensive Aesthetic Score {values[OVERALL]}; "
                    "give one or make them equal"
                )
        return image.strip(), values[OVERALL], values
    if score in (None, ""):
        raise ValueError("no score")
    return image.strip(), _number(score, "score"), None


def import_table(
    table: str | os.PathLike,
    *,
    images: str | os.PathLike,
    out: str | os.PathLike,
    scale: tuple[float, float],
    source: str | None = None,
    copy: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Import a plain CSV/TSV/JSONL of (image, score[, 12 dimension scores]) into the HumanBeauty layout.

    Scores on the declared raw scale [MIN, MAX] are min-max normalised to [0, 1] (6 decimals);
    values outside the scale are errors. Rows with 12 scores go to `HumanBeauty-50K` (expert),
    the others to `HumanBeauty-58K`. Images are named `<source>_<relative path>` with unsafe
    characters replaced by `_`, and are **relative symlinks** to the originals by default (no
    copy of large data; the output stays valid if both folders move together); `copy=True`
    copies them instead. Rows of other sources already in OUT are kept; re-importing a source
    needs `force`, which replaces that source's rows. Nothing is written unless every row is valid.
    """
    table, images, out = Path(table), Path(images), Path(out)
    lo, hi = (float(scale[0]), float(scale[1]))
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise DataError(f"bad --scale {scale[0]} {scale[1]}: MIN must be a number below MAX (e.g. --scale 1 10)")
    if not table.is_file():
        raise DataError(f"input file {table} does not exist; check the path")
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder; pass the folder the image names are relative to")
    source = source or table.stem
    if not source.strip():
        raise DataError("--source must not be empty")

    def norm(v: float) -> float:
        return round((v - lo) / (hi - lo), 6)

    problems: list[str] = []
    planned: list[tuple[str, dict[str, Any], Path]] = []  # (subset, row, original image)
    taken: dict[str, int] = {}
    for number, raw, err in _read_table(table):
        where = f"{table}:{number}"
        if err:
            problems.append(f"{where}: {err}")
            continue
        try:
            image, overall, dims = _parse_import_row(raw)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        values = dims if dims is not None else [overall]
        outside = [v for v in values if not (lo - 1e-9 <= v <= hi + 1e-9)]  # type: ignore[operator]
        if outside:
            problems.append(f"{where}: score {outside[0]} is outside the declared scale [{lo:g}, {hi:g}]")
            continue
        original = images / image
        if not original.is_file():
            problems.append(f"{where}: image {image} not found under {images}")
            continue
        name = _slug(source.lower()) + "_" + _slug(image.replace("\\", "/").replace("/", "_"))
        if name in taken:
            problems.append(f"{where}: image {image} gives the same file name as line {taken[name]} ({name})")
            continue
        taken[name] = number
        subset = EXPERT_SUBSET if dims is not None else OVERALL_SUBSET
        score_out: float | list[float] = [norm(v) for v in dims] if dims is not None else norm(overall)  # type: ignore[arg-type]
        planned.append(
            (
                subset,
                {
                    "image_name": name,
                    "source": source,
                    "score": score_out,
                    "text_level": score_to_level(norm(overall)),  # type: ignore[arg-type]
                    "raw_score": dims if dims is not None else overall,
                    "raw_scale": [lo, hi],
                },
                original,
            )
        )
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} problem(s) in {table}, nothing imported:\n  {shown}{more}")
    if not planned:
        raise DataError(f"{table} has no data rows; nothing imported")

    # Keep other sources' rows; refuse to mix in a second import of the same source.
    kept: dict[str, list[dict[str, Any]]] = {}
    for subset in {s for s, _, _ in planned} | set(subset_label_files(out) if out.is_dir() else {}):
        label_file = out / subset / SUBSET_LABEL
        old = [obj for obj, _ in _read_subset_rows(label_file)] if label_file.is_file() else []
        if any(r.get("source") == source for r in old) and not force:
            raise DataError(
                f"{label_file} already has rows of source {source!r}; pass --force to replace them "
                "or choose another --source"
            )
        kept[subset] = [r for r in old if r.get("source") != source]
        for r in old:  # --force: drop the replaced rows' image links/copies too
            stale = out / subset / "images" / str(r.get("image_name", ""))
            if r.get("source") == source and r.get("image_name") and (stale.is_symlink() or stale.is_file()):
                stale.unlink()

    for subset, row, original in planned:
        folder = out / subset / "images"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / row["image_name"]
        if target.is_symlink() or target.exists():
            target.unlink()
        try:
            if copy:
                shutil.copy2(original, target)
            else:
                target.symlink_to(os.path.relpath(original.resolve(), folder.resolve()))
        except OSError as exc:
            hint = "" if copy else "; pass --copy to copy the images instead"
            raise DataError(f"cannot create {target} ({exc.strerror or exc}){hint}") from None
    written: dict[str, int] = {}
    for subset, old_rows in kept.items():
        new_rows = [row for s, row, _ in planned if s == subset]
        if new_rows or old_rows:
            (out / subset).mkdir(parents=True, exist_ok=True)
            _write_jsonl(out / subset / SUBSET_LABEL, old_rows + new_rows)
            written[subset] = len(new_rows)
    return {
        "out": str(out),
        "source": source,
        "rows": len(planned),
        "per_subset": written,
        "images": "copied" if copy else "symlinked",
        "scale": [lo, hi],
    }
