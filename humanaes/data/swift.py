"""The ms-swift bridge: the QA-pair JSONL that the official fine-tuning consumes.

The release's `prepare_data_for_swift.py` turns each training row of a HumanBeauty data set into
one JSON line with exactly these keys (facts from that script):

    query      ""  (the question is drawn during training)
    response   overall-only rows: "The aesthetics of the human image is <level>"
               12-dimension rows: twelve lines "<i>. <Dimension> : <level>" joined by "\\n", in the
               reference order, no trailing newline
    history    []
    images     [absolute path of the image]
    scores     twelve floats; overall-only rows: eleven zeros, then the overall score
    is_expert  0 or 1

`export_swift` writes such a file from a HumanBeauty root; `import_swift` reads one back into the
HumanBeauty layout. What the format does not carry (the source name, raw scores, other keys of the
label rows) cannot come back: imported rows get the source given to `import_swift`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from humanaes.data import EXPERT_SUBSET, OVERALL_SUBSET, SPLIT_SUFFIX, SUBSET_LABEL, Sample, load_samples
from humanaes.data.importer import problems_error
from humanaes.errors import DataError
from humanaes.fsutil import OutputLock, publish_dir, staging_dir
from humanaes.io.jsonl import json_lines, write_json_lines
from humanaes.models.expert.prompts import ANSWER_PREFIX, expert_answer, overall_answer
from humanaes.schema import LEVELS, NUM_DIMENSIONS, OVERALL

SWIFT_KEYS: tuple[str, ...] = ("query", "response", "history", "images", "scores", "is_expert")
_OVERALL_RESPONSE = re.compile(re.escape(ANSWER_PREFIX) + r" (" + "|".join(LEVELS) + r")")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def swift_row(sample: Sample) -> dict[str, Any]:
    """One label row as the official data script writes it for ms-swift.

    Overall-only rows answer with the row's `text_level` when it has one (the official script
    reads that field), otherwise with the level of its score.
    """
    if sample.scores is not None:
        scores = [float(s) for s in sample.scores]
        response, is_expert = expert_answer(scores), 1
    else:
        scores = [0.0] * OVERALL + [float(sample.score)]
        response, is_expert = overall_answer(sample.text_level or sample.score), 0
    return {
        "query": "",
        "response": response,
        "history": [],
        "images": [os.path.abspath(sample.image)],
        "scores": scores,
        "is_expert": is_expert,
    }


def export_swift(root: str | os.PathLike, out: str | os.PathLike, *, split: str = "train") -> dict[str, Any]:
    """Write the ms-swift JSONL of ROOT's `<split>_label.jsonl` (or of one label file) to `out`.

    One line per row, in the label file's order. Every image must exist (the training run would
    otherwise fail hours later); nothing is written unless all rows are good. The file is
    written atomically, under a lock on `out`.
    """
    out = Path(out)
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; pass the .jsonl file to write")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: folder {out.parent} does not exist")
    samples = load_samples(root, split)
    if not samples:
        raise DataError(f"{root}: the {split} split has no rows; nothing to export")
    missing = [f"{s.where}: image {s.image} not found" for s in samples if not s.image.is_file()]
    if missing:
        raise problems_error(missing, f"{root}, nothing exported")
    rows = [swift_row(s) for s in samples]
    with OutputLock(out):
        write_json_lines(out, rows)
    expert = sum(1 for s in samples if s.scores is not None)
    return {"out": str(out), "rows": len(samples), "expert_rows": expert, "overall_rows": len(samples) - expert}


def _unit_scores(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != NUM_DIMENSIONS:
        raise ValueError(f"scores must be a list of {NUM_DIMENSIONS} numbers, got {value!r}")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"scores[{i}] must be a number in [0, 1], got {v!r}")
        out.append(float(v))
    return out


def _image_under(value: Any, images_root: Path) -> Path:
    """The row's single absolute image path, checked to lie under `images_root` (lexically:
    `..` cannot climb out; links inside the root are its owner's business) and to exist."""
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], str) or not value[0]:
        raise ValueError(f"images must be a list with one image path, got {value!r}")
    raw = value[0]
    if not os.path.isabs(raw):
        raise ValueError(f"image path {raw!r} is not absolute (the official script writes absolute paths)")
    path = Path(os.path.normpath(raw))
    root = Path(os.path.normpath(os.path.abspath(images_root)))
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"image {raw} is not under --images-root {images_root}")
    if not path.is_file():
        raise ValueError(f"image {raw} not found")
    return path


def _parse_swift_row(obj: Any, images_root: Path) -> tuple[Path, list[float], bool, str | None]:
    """(image, twelve scores, is_expert, text level of an overall-only row); ValueError if bad."""
    if not isinstance(obj, dict):
        raise ValueError(f"row must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in SWIFT_KEYS if k not in obj]
    extra = sorted(set(obj) - set(SWIFT_KEYS))
    if missing or extra:
        parts = ([f"missing key(s) {', '.join(missing)}"] if missing else []) + (
            [f"unexpected key(s) {', '.join(extra)} (the HumanBeauty layout cannot keep them)"] if extra else []
        )
        raise ValueError("; ".join(parts))
    if obj["query"] != "" or obj["history"] != []:
        raise ValueError("query must be \"\" and history [] (the questions are drawn during training)")
    image = _image_under(obj["images"], images_root)
    scores = _unit_scores(obj["scores"])
    flag = obj["is_expert"]
    if flag not in (0, 1) or isinstance(flag, float):
        raise ValueError(f"is_expert must be 0 or 1, got {flag!r}")
    response = obj["response"]
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {response!r}")
    if flag:
        _check_expert_response(response, scores)
        return image, scores, True, None
    if any(s != 0 for s in scores[:OVERALL]):
        raise ValueError("is_expert is 0 but the first eleven scores are not all zero")
    match = _OVERALL_RESPONSE.fullmatch(response)
    if not match:
        raise ValueError(f"response {response!r} is not '{ANSWER_PREFIX} <level>' with a level of {', '.join(LEVELS)}")
    return image, scores, False, match.group(1)


def _check_expert_response(response: str, scores: list[float]) -> None:
    """The twelve lines must be what the scores give: the layout keeps the scores only."""
    got, want = response.split("\n"), expert_answer(scores).split("\n")
    for i, expected in enumerate(want):
        line = got[i] if i < len(got) else "(missing)"
        if line != expected:
            raise ValueError(f"response line {i + 1} is {line!r}, but the scores give {expected!r}")
    if len(got) != len(want):
        raise ValueError(f"response has {len(got)} lines; expected {len(want)} with no trailing newline")


def _image_name(image: Path, images_root: Path) -> str:
    relative = image.relative_to(Path(os.path.normpath(os.path.abspath(images_root)))).as_posix()
    return _UNSAFE_NAME.sub("_", relative.replace("/", "__")).strip("_") or "image"


def import_swift(
    file: str | os.PathLike,
    *,
    out: str | os.PathLike,
    images_root: str | os.PathLike,
    source: str | None = None,
    split: str = "train",
    copy: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Read an ms-swift JSONL back into a new HumanBeauty root `out`.

    Overall-only rows go to `HumanBeauty-58K` (score = the last of the twelve, text_level from
    the response), 12-dimension rows to `HumanBeauty-50K`; `<split>_label.jsonl` lists them all.
    Scores are taken as they are (already in [0, 1]). Every image path must be absolute and lie
    under `images_root`; images are linked (relative symlinks) or, with `copy`, copied, and named
    after their path below `images_root` (`/` becomes `__`). The set is built in a temporary
    folder beside `out` and published in one rename, under a lock on `out`; an `out` that holds
    anything is refused unless `force` (which replaces it). Nothing is written unless every row
    is good.
    """
    file, out, images_root = Path(file), Path(out), Path(images_root)
    source = source or file.stem
    if not source.strip():
        raise DataError("--source must not be empty")
    if not file.is_file():
        raise DataError(f"input file {file} does not exist; check the path")
    if not images_root.is_dir():
        raise DataError(f"--images-root {images_root} is not a folder")
    _refuse_existing(out, force)

    problems: list[str] = []
    rows: list[tuple[str, Path, dict[str, Any], bool]] = []  # (subset, original image, label row, expert)
    taken: dict[str, int] = {}
    for number, obj, error in _json_lines(file):
        where = f"{file}:{number}"
        if error:
            problems.append(f"{where}: {error}")
            continue
        try:
            image, scores, expert, level = _parse_swift_row(obj, images_root)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        name = _image_name(image, images_root)
        if name in taken:
            problems.append(f"{where}: image {image} repeats line {taken[name]}")
            continue
        taken[name] = number
        label: dict[str, Any] = {"image_name": name, "source": source}
        if expert:
            rows.append((EXPERT_SUBSET, image, {**label, "score": scores}, True))
        else:
            rows.append((OVERALL_SUBSET, image, {**label, "score": scores[OVERALL], "text_level": level}, False))
    if problems:
        raise problems_error(problems, f"{file}, nothing imported")
    if not rows:
        raise DataError(f"{file} has no rows; nothing imported")
    inside = next((image for _, image, _, _ in rows if image.resolve().is_relative_to(out.resolve())), None)
    if inside is not None:
        raise DataError(f"--out {out} holds the image {inside}; import into another folder (replacing --out would lose it)")

    out.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        _refuse_existing(out, force)  # again: another run may have published while we read
        with staging_dir(out) as tmp:
            _write_layout(tmp, out, rows, split, copy)
            publish_dir(tmp, out)
    per_subset = {subset: sum(1 for r in rows if r[0] == subset) for subset in (OVERALL_SUBSET, EXPERT_SUBSET)}
    return {
        "out": str(out),
        "rows": len(rows),
        "source": source,
        "per_subset": {k: v for k, v in per_subset.items() if v},
        "split_file": str(out / f"{split}{SPLIT_SUFFIX}"),
        "images": "copied" if copy else "symlinked",
    }


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder for the HumanBeauty root")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"--out {out} is not empty; pass --force to replace it or choose a new folder")


def _json_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, object, error) of each non-blank line (the whole file is decoded first)."""
    try:
        with path.open("r", encoding="utf-8") as handle:
            lines = list(handle)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    return json_lines(lines)


def _write_layout(tmp: Path, final: Path, rows: list[tuple[str, Path, dict[str, Any], bool]], split: str, copy: bool) -> None:
    """Fill `tmp` (to be renamed to `final`): images, subset label files, the split file."""
    for subset, original, label, _ in rows:
        folder = tmp / subset / "images"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / label["image_name"]
        try:
            if copy:
                shutil.copy2(original, target)
            else:
                # Relative to where the link will live after publishing (tmp is final's sibling).
                link_dir = (final.parent.resolve() / final.name / subset / "images")
                target.symlink_to(os.path.relpath(original.resolve(), link_dir))
        except OSError as exc:
            hint = "" if copy else "; pass --copy to copy the images instead"
            raise DataError(f"cannot create {target} ({exc.strerror or exc}){hint}") from None
    for subset in sorted({r[0] for r in rows}):
        write_json_lines(tmp / subset / SUBSET_LABEL, (label for s, _, label, _ in rows if s == subset))
    write_json_lines(
        tmp / f"{split}{SPLIT_SUFFIX}",
        ({**label, "image_name": f"{subset}/images/{label['image_name']}", "is_expert": expert} for subset, _, label, expert in rows),
    )


__all__ = ["SWIFT_KEYS", "export_swift", "import_swift", "swift_row"]
