"""`humanaes data validate`: every row and image of a HumanBeauty root checked, located at file:line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from humanaes.data.labels import (
    SPLIT_SUFFIX,
    SUBSET_LABEL,
    _check_row,
    _iter_json_lines,
    default_image_root,
    split_files,
    subset_label_files,
)
from humanaes.errors import DataError, ImageLoadError


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
        what = "is not a regular file or folder" if path.exists() else "does not exist"
        raise DataError(f"{path} {what}; pass a HumanBeauty root folder or a label .jsonl file")
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
    rows without 12 scores, unknown level words, missing or undecodable images, an image labelled
    twice in one file with different scores, a file with no rows. Warnings: text level disagreeing
    with the score, repeated identical rows, images shared between split files (leakage).
    Files may start with a UTF-8 byte order mark.
    """
    from tqdm import tqdm

    from humanaes.io.images import load_image

    path = Path(path)
    report = ValidationReport()
    pairs = _label_files_of(path)
    # Parse everything first so the progress bar knows the number of image checks.
    checks: list[tuple[Finding, Path]] = []
    split_members: dict[str, set[str]] = {}
    for label_file, image_root in pairs:
        report.files.append(str(label_file))
        seen: dict[str, tuple[int, Any]] = {}  # image name -> (first line, its scores or None if invalid)
        names: set[str] = set()
        rows_before = report.rows
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
                scores = None if row.fields is None else (row.fields["score"], row.fields["scores"])
                if name in seen:
                    first, first_scores = seen[name]
                    if scores is not None and first_scores is not None and scores != first_scores:
                        # Two labels for one image: training would see both, evaluation one at random.
                        report.problems.append(
                            Finding(here.file, number, f"conflicts with line {first}: {name} is labelled twice with different scores")
                        )
                    else:
                        report.warnings.append(Finding(here.file, number, f"duplicate of line {first} ({name})"))
                else:
                    seen[name] = (number, scores)
                names.add(name)
                checks.append((here, image_root / name))
        if report.rows == rows_before:
            report.problems.append(Finding(str(label_file), 0, "holds no rows (an empty label file labels nothing)"))
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

