"""`humanaes data import`: a plain CSV/TSV/JSONL of image scores into the HumanBeauty layout."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from humanaes.data.labels import (
    EXPERT_SUBSET,
    OVERALL_SUBSET,
    SUBSET_LABEL,
    _iter_json_lines,
    _read_subset_rows,
    split_files,
    subset_label_files,
)
from humanaes.errors import DataError
from humanaes.fsutil import (
    NotRegularFileError,
    OutputLock,
    atomic_write,
    is_within,
    open_regular,
    publish_dir,
    staging_dir,
)
from humanaes.io.jsonl import write_json_lines
from humanaes.schema import DIMENSIONS, NUM_DIMENSIONS, OVERALL, score_to_level

_IMAGE_COLUMNS = ("image", "image_name", "image_path", "file", "filename", "path")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: How many bad rows an import error lists before "... and N more".
SHOWN_PROBLEMS = 20


def problems_error(problems: list[str], what: str) -> DataError:
    """One DataError listing the first SHOWN_PROBLEMS problems (each `file:line: cause`) and how
    many more there are; `what` names the file and what did not happen."""
    shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
    more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    return DataError(f"{len(problems)} problem(s) in {what}:\n  {shown}{more}")


def _slug(text: str) -> str:
    return _SAFE.sub("_", text).strip("_") or "x"


def _norm_header(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _read_table(path: Path) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """Yield (line, row dict, error) from a CSV (header required) or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for number, obj, err in _iter_json_lines(path, objects=True):
            yield number, obj or {}, err
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


def parse_number(value: Any, what: str) -> float:
    """A raw score cell as a finite float (JSON number or text, surrounding spaces ignored; a
    boolean is not a number); ValueError naming `what` and the value otherwise."""
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
        values = [parse_number(v, DIMENSIONS[i]) for i, v in enumerate(dims)]
        if score not in (None, ""):
            overall = parse_number(score, "score")
            if abs(overall - values[OVERALL]) > 1e-6 * max(1.0, abs(overall)):
                raise ValueError(
                    f"score {overall} disagrees with the Comprehensive Aesthetic Score {values[OVERALL]}; "
                    "give one or make them equal"
                )
        return image.strip(), values[OVERALL], values
    if score in (None, ""):
        raise ValueError("no score")
    return image.strip(), parse_number(score, "score"), None


# -- confinement: every image read lies under --images, every write and removal under --out ----

# Formats a photo data set holds; Pillow also recognises odd ones (XBM is C source text, TGA has
# almost no magic) that would let a text file pass as an image.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "JPEG2000", "PPM")  # JPEG covers MPO


def _show(name: str) -> str:
    """A name for a one-line message: as is when printable, else its repr (newlines, escapes)."""
    return name if name.isprintable() else repr(name)


def _confined_image(name: str, images: Path, images_real: str) -> tuple[str, str]:
    """(real path, path relative to --images) of row image `name`; ValueError naming the cause.

    The name is joined to --images and normalised first (`../` and absolute names that leave it
    are refused), then every symlink is resolved and the result must still lie under --images.
    """
    if "\0" in name:
        raise ValueError(f"image name {_show(name)} contains a NUL byte")
    lexical = os.path.normpath(os.path.join(os.path.abspath(images), name))
    root = os.path.normpath(os.path.abspath(images))
    if not is_within(lexical, root):
        raise ValueError(f"image {_show(name)} lies outside --images {images}; only files under --images are imported")
    real = os.path.realpath(lexical)
    if not is_within(real, images_real):
        raise ValueError(f"image {_show(name)} is a symlink leading outside --images {images} (to {_show(real)}); not imported")
    return real, os.path.relpath(lexical, root)


def _open_regular(path: str, what: str) -> int:
    """An fd on a regular file, opened without following a last symlink and without blocking on
    a FIFO; ValueError if it is anything else."""
    try:
        return open_regular(path, follow_symlinks=False)
    except FileNotFoundError:
        raise ValueError(f"{what} not found") from None
    except NotRegularFileError:
        raise ValueError(f"{what} is not a regular file (a folder, FIFO, socket or device)") from None
    except OSError as exc:
        raise ValueError(f"{what} cannot be read ({exc.strerror or exc})") from None


def _check_image_content(real: str, what: str) -> None:
    """ValueError unless the file's bytes are an image (its header; the extension means nothing)."""
    from PIL import Image, UnidentifiedImageError

    Image.init()  # register every plugin, so `formats` below can name them
    fd = _open_regular(real, what)
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(16)
        if not head:
            raise ValueError(f"{what} is an empty file (0 bytes), not an image")
        handle.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(handle, formats=IMAGE_FORMATS):
                    pass
        except Image.DecompressionBombError:
            return  # an image, only a huge one: `data validate` and scoring apply their own limit
        except UnidentifiedImageError:
            looks = "looks like text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else f"starts with {head[:8].hex(' ')}"
            raise ValueError(
                f"{what} is not an image (its content {looks}; accepted: {', '.join(IMAGE_FORMATS)})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise assorted types on bad headers
            raise ValueError(f"{what} has a corrupt image header ({type(exc).__name__}: {exc})") from None


def _plain_relative(name: str) -> str | None:
    """`name` as a '/'-joined path inside its folder, or None if it could leave it."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts)


def _require_folder(path: Path, display: Path) -> None:
    """DataError unless `path` is absent or a real folder (not a file, not a symlink)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a symlink" if path.is_symlink() else "a file"
        raise DataError(f"{display} is {kind}, not a folder; move it away or choose another --out")


def _carry_over(src: Path, dst: Path, skip: set[str], prefix: str = "") -> None:
    """Rebuild folder `src` under `dst` without following any symlink: folders are recreated,
    files hard-linked (copied where linking is refused), links recreated with the same target.
    Entries whose path relative to the root is in `skip` are left out."""
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        rel = prefix + entry.name
        if rel in skip:
            continue
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir(follow_symlinks=False):
            target.mkdir()
            _carry_over(Path(entry.path), target, skip, rel + "/")
            shutil.copystat(entry.path, target, follow_symlinks=False)
        elif entry.is_file(follow_symlinks=False):
            try:
                os.link(entry.path, target, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry.path, target, follow_symlinks=False)
        else:
            raise DataError(f"{entry.path} is not a file, folder or link; move it out of --out")


def _prune_split_file(path: Path, removed: set[str]) -> tuple[list[str], int]:
    """(kept lines, dropped count) of a split file: rows naming a removed image are dropped,
    every other line is kept verbatim (even ones this tool cannot parse)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot rewrite split file {path} ({exc}); fix or remove it, then import again") from None
    kept: list[str] = []
    dropped = 0
    # Split on "\n" only: str.splitlines() would also cut at U+2028, U+0085 ..., which JSON
    # strings may hold raw, and so break a row in two.
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("image_name") in removed:
            dropped += 1
        else:
            kept.append(line + "\n")
    return kept, dropped


def _resolve_out(out: Path) -> Path:
    """The real folder --out names (created later if absent); DataError if it cannot be one."""
    if out.is_symlink() and not out.exists():
        raise DataError(f"--out {out} is a symlink to a missing folder; pass a folder")
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; pass a folder (it is created if absent)")
    return real


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
    needs `force`, which replaces that source's rows.

    Confinement: an image is read only if its path, symlinks resolved, lies under `images`
    (relative, `../`, absolute and linked names alike), is a regular file and its content is an
    image; every row is checked before anything is written. The new state of the whole OUT is
    built in a temporary folder beside it and swapped in complete (`fsutil.publish_dir`), so a
    failure leaves the old data set as it was, and nothing outside OUT is ever written or removed.
    Split files that name replaced rows are rewritten without them (or removed if left empty);
    the returned `messages` say so. One import per OUT at a time (`fsutil.output_lock`).
    """
    table, images, out = Path(table), Path(images), Path(out)
    lo, hi = (float(scale[0]), float(scale[1]))
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise DataError(f"bad --scale {scale[0]} {scale[1]}: MIN must be a number below MAX (e.g. --scale 1 10)")
    if not table.is_file():
        raise DataError(f"input file {table} does not exist or is not a file; check the path")
    if not images.is_dir():
        raise DataError(f"--images {images} is not a folder; pass the folder the image names are relative to")
    source = source or table.stem
    if not source.strip():
        raise DataError("--source must not be empty")
    out_real = _resolve_out(out)
    try:
        out_real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the folder of --out {out} ({exc.strerror or exc})") from None
    with OutputLock(out_real, what="--out"):  # acquired on entry; the kernel drops it if we are killed
        planned = _plan_rows(table, images, source, lo, hi)
        return _build(planned, out, out_real, source, copy=copy, force=force) | {"scale": [lo, hi]}


def _plan_rows(table: Path, images: Path, source: str, lo: float, hi: float) -> list[tuple[str, dict[str, Any], str]]:
    """(subset, label row, real image path) of every table row; DataError listing every bad row."""

    def norm(v: float) -> float:
        return round((v - lo) / (hi - lo), 6)

    images_real = os.path.realpath(images)
    problems: list[str] = []
    planned: list[tuple[str, dict[str, Any], str]] = []
    taken: dict[str, int] = {}
    for number, raw, err in _read_table(table):
        where = f"{table}:{number}"
        if err:
            problems.append(f"{where}: {err}")
            continue
        try:
            image, overall, dims = _parse_import_row(raw)
            values = dims if dims is not None else [overall]
            outside = [v for v in values if not (lo - 1e-9 <= v <= hi + 1e-9)]  # type: ignore[operator]
            if outside:
                raise ValueError(f"score {outside[0]} is outside the declared scale [{lo:g}, {hi:g}]")
            real, relative = _confined_image(image, images, images_real)
            _check_image_content(real, f"image {_show(image)}")
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        name = _slug(source.lower()) + "_" + _slug(relative.replace("\\", "/").replace("/", "_"))
        if name in taken:
            problems.append(f"{where}: image {_show(image)} gives the same file name as line {taken[name]} ({name})")
            continue
        taken[name] = number
        subset = EXPERT_SUBSET if dims is not None else OVERALL_SUBSET
        score_out: float | list[float] = [norm(v) for v in dims] if dims is not None else norm(overall)  # type: ignore[arg-type]
        row = {
            "image_name": name,
            "source": source,
            "score": score_out,
            "text_level": score_to_level(norm(overall)),  # type: ignore[arg-type]
            "raw_score": dims if dims is not None else overall,
            "raw_scale": [lo, hi],
        }
        planned.append((subset, row, real))
    if problems:
        raise problems_error(problems, f"{table}, nothing imported")
    if not planned:
        raise DataError(f"{table} has no data rows; nothing imported")
    return planned


def _build(
    planned: list[tuple[str, dict[str, Any], str]], out: Path, out_real: Path, source: str, *, copy: bool, force: bool
) -> dict[str, Any]:
    """Write the new state of OUT into a temporary folder beside it and swap it in."""
    old_labels = subset_label_files(out_real) if out_real.is_dir() else {}
    subsets = sorted({s for s, _, _ in planned} | set(old_labels))
    kept: dict[str, list[dict[str, Any]]] = {}
    removed: dict[str, set[str]] = {}  # subset -> image names of the replaced rows
    for subset in subsets:
        for folder in (out_real / subset, out_real / subset / "images"):
            _require_folder(folder, out / folder.relative_to(out_real))
        label_file = out_real / subset / SUBSET_LABEL
        if label_file.is_symlink() or (label_file.exists() and not label_file.is_file()):
            raise DataError(f"{out / subset / SUBSET_LABEL} is not a plain file; move it away or choose another --out")
        old = [obj for obj, _ in _read_subset_rows(label_file)] if label_file.is_file() else []
        if any(r.get("source") == source for r in old) and not force:
            raise DataError(
                f"{label_file} already has rows of source {source!r}; pass --force to replace them "
                "or choose another --source"
            )
        kept[subset] = [r for r in old if r.get("source") != source]
        removed[subset] = {str(r.get("image_name")) for r in old if r.get("source") == source}
        clash = {r["image_name"] for r in kept[subset]} & {row["image_name"] for s, row, _ in planned if s == subset}
        if clash:
            raise DataError(f"{out / subset / SUBSET_LABEL} already has image {sorted(clash)[0]} of another source; choose another --source")

    # Left out of the copy: files rewritten below, and the replaced rows' images (named plainly
    # inside their folder and not used by a kept row; a hostile name simply matches nothing).
    skip = {f"{subset}/{SUBSET_LABEL}" for subset in subsets}
    for subset, names in removed.items():
        in_use = {r["image_name"] for r in kept[subset]}
        skip |= {f"{subset}/images/{rel}" for rel in map(_plain_relative, names - in_use) if rel}
    removed_in_splits = {f"{subset}/images/{name}" for subset, names in removed.items() for name in names}
    messages: list[str] = []
    splits: dict[str, list[str] | None] = {}  # split file name -> new lines, or None to remove it
    if out_real.is_dir():
        for split in sorted(split_files(out_real).values()):
            if split.is_symlink():  # not ours to read or rewrite: carried over as the link it is
                messages.append(f"{out / split.name} is a symlink; left as it is, check that it still fits")
                continue
            lines, dropped = _prune_split_file(split, removed_in_splits) if removed_in_splits else ([], 0)
            if not dropped:
                messages.append(
                    f"{out / split.name} does not hold the new rows; run `humanaes data split {out} --force` to include them"
                )
            else:
                splits[split.name] = lines if any(line.strip() for line in lines) else None
                skip.add(split.name)
                done = "rewrote it" if splits[split.name] else "removed it (no rows left)"
                messages.append(
                    f"{out / split.name} named {dropped} replaced row(s) of source {source!r}: {done}; "
                    f"run `humanaes data split {out} --force` for new splits"
                )

    # The new tree keeps the old one's permissions (a new folder's under the umask otherwise).
    mode = stat.S_IMODE(out_real.stat().st_mode) if out_real.is_dir() else None
    try:
        with staging_dir(out_real, label="import-", mode=mode) as tmp:
            if out_real.is_dir():
                _carry_over(out_real, tmp, skip)
            for subset, row, original in planned:
                folder = tmp / subset / "images"
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / row["image_name"]
                if target.is_symlink() or target.exists():
                    target.unlink()  # a stray file of the old tree under our name, in our own copy
                try:
                    if copy:
                        _copy_regular(original, target)
                    else:
                        final_folder = out_real / subset / "images"
                        target.symlink_to(os.path.relpath(original, final_folder))
                except OSError as exc:
                    hint = "" if copy else "; pass --copy to copy the images instead"
                    raise DataError(f"cannot create {out / subset / 'images' / row['image_name']} ({exc.strerror or exc}){hint}") from None
            written: dict[str, int] = {}
            for subset in subsets:
                new_rows = [row for s, row, _ in planned if s == subset]
                if new_rows or kept[subset]:
                    (tmp / subset).mkdir(exist_ok=True)
                    write_json_lines(tmp / subset / SUBSET_LABEL, kept[subset] + new_rows)
                    written[subset] = len(new_rows)
            for name, lines in splits.items():
                if lines is not None:
                    atomic_write(tmp / name, "".join(lines))
            publish_dir(tmp, out_real)
    except DataError as exc:
        raise DataError(f"{exc}; nothing imported, the old data set is unchanged") from None
    except OSError as exc:
        raise DataError(f"cannot write --out {out} ({exc.strerror or exc}: {exc.filename}); nothing imported, the old data set is unchanged") from None
    return {
        "out": str(out),
        "source": source,
        "rows": len(planned),
        "per_subset": written,
        "images": "copied" if copy else "symlinked",
        "messages": messages,
    }


def _copy_regular(original: str, target: Path) -> None:
    """Copy a checked image into a new file (never through a link; the source must still be a
    regular file, so a swap after the check cannot make the copy read a FIFO or a device)."""
    try:
        fd = _open_regular(original, f"image {original}")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    with os.fdopen(fd, "rb") as src:
        out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(out_fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        shutil.copystat(original, target)
