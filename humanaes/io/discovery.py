"""Input discovery: files, folders and manifests -> one `DiscoveredImage` per input item.

Nothing here opens an image, and nothing blocks: every item is classified with `stat` only.
FIFOs, sockets and devices, symlink loops, dangling links, unreadable folders and manifest
entries that do not exist become items with an `error` (the caller writes them as error rows
without opening them), so one odd file never hangs or aborts a long run. Every item is keyed by
the path as discovered (a link by its own path, never its target; see `humanaes.io.keys`).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from humanaes.errors import DataError, HumanAesError
from humanaes.io.keys import display_name, image_key

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
MANIFEST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".jsonl"})
#: fields of a JSONL manifest row that name the image, in order of preference
MANIFEST_KEYS: tuple[str, ...] = ("image", "image_name", "path")

PathArg = str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class DiscoveredImage:
    """One input item.

    key      the stable resume key (`image_key`: absolute, not symlink-resolved, text)
    display  the path as the user gave it (relative stays relative), for tables and messages
    path     the path to open (str; undecodable bytes as surrogate escapes, as os functions want)
    error    None, or why the item is not opened (FIFO, loop, dangling link, missing entry, ...)
    """

    key: str
    display: str
    path: str
    error: str | None = None


def enable_optional_decoders() -> None:
    """Register the HEIF/HEIC opener when pillow-heif is installed (Pillow lacks HEIF itself)."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return
    pillow_heif.register_heif_opener()


def classify_file(path: str) -> str | None:
    """Why `path` cannot be read as an image file without opening it, or None for a regular file.

    Uses stat only (follows links): never opens, so a FIFO or device cannot block or be disturbed.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself); not opened"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            try:
                target = display_name(os.readlink(path))
            except OSError:
                target = "?"
            return f"dangling symlink (its target {target} does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "file not found"
        if exc.errno == errno.EACCES:
            return "permission denied reading the file"
        return f"cannot read the file ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    return f"is a {special_file_kind(mode)}, not a regular file; not opened"


def special_file_kind(mode: int) -> str:
    """A word for a non-regular file type (for error messages)."""
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _item(path: str, display: str, error: str | None = None) -> DiscoveredImage:
    return DiscoveredImage(key=image_key(path), display=display_name(display), path=path, error=error)


def discover_inputs(paths: Iterable[PathArg]) -> list[DiscoveredImage]:
    """Expand files, folders and manifests into input items (see the module docstring).

    Order: the order of `paths`; within a folder, sorted by relative path (deterministic across
    machines). An item reached twice (same key) is kept once, at its first place. Hidden files
    and folders (names starting with ".", e.g. macOS "._x.jpg" forks) are skipped when scanning
    folders, and symlinked subfolders are not followed (no cycles); symlinked files are. An
    explicitly named file is used whatever its extension.

    Raises HumanAesError for an argument that does not exist at all, a folder without images and
    an empty or malformed manifest; everything item-level is an item with `error` instead.
    """
    found: list[DiscoveredImage] = []
    seen: set[str] = set()
    for raw in paths:
        given = os.fsdecode(os.fspath(raw))
        path = os.path.expanduser(given)
        try:
            os.lstat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise HumanAesError(f"{display_name(given)}: no such file or folder") from None
            raise HumanAesError(f"{display_name(given)}: cannot read it ({exc.strerror or exc})") from None
        problem = classify_file(path)
        if problem == "is a folder, not an image file":
            items = scan_folder_items(path, given)
            if not items:
                exts = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
                raise HumanAesError(f"{display_name(given)}: no images in this folder (looked for {exts})")
        elif problem is None and os.path.splitext(path)[1].lower() in MANIFEST_EXTENSIONS:
            items = read_manifest_items(path, given)
        else:
            items = [_item(path, given, problem)]
        for item in items:
            if item.key not in seen:
                seen.add(item.key)
                found.append(item)
    return found


def discover_images(paths: Iterable[PathArg]) -> list[Path]:
    """The paths of `discover_inputs(paths)` (absolute, not resolved), for older callers.

    Items with an error are included: opening them through `load_image` reports the same error.
    """
    return [Path(os.path.abspath(item.path)) for item in discover_inputs(paths)]


def scan_folder_items(folder: str, given: str | None = None) -> list[DiscoveredImage]:
    """Items for the image files under `folder`, recursively, sorted by relative path parts.

    Symlinks to files are items (keyed by the link), symlinked folders are not entered. A
    subfolder that cannot be read becomes an error item, so its images are not silently lost.
    """
    given = folder if given is None else given
    entries: list[tuple[tuple[str, ...], DiscoveredImage]] = []

    def unreadable(exc: OSError) -> None:
        where = exc.filename if isinstance(exc.filename, str) else folder
        rel = os.path.relpath(where, folder)
        item = _item(where, os.path.normpath(os.path.join(given, rel)),
                     f"cannot read this folder ({exc.strerror or exc}); the images in it are not scored")
        entries.append((tuple(rel.split(os.sep)), item))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = os.path.relpath(root, folder)
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            rel = name if rel_root == "." else os.path.join(rel_root, name)
            path = os.path.join(root, name)
            entries.append((tuple(rel.split(os.sep)), _item(path, os.path.join(given, rel), classify_file(path))))
    entries.sort(key=lambda e: e[0])
    return [item for _, item in entries]


def scan_folder(folder: Path) -> list[Path]:
    """All image files under `folder`, recursively, sorted by their relative path parts."""
    return [Path(item.path) for item in scan_folder_items(os.fspath(folder))]


def _read_manifest_text(path: str, shown: str) -> str:
    try:
        with open(path, "rb") as fh:  # classified as a regular file by the caller: cannot block
            data = fh.read()
    except OSError as exc:
        raise HumanAesError(f"{shown}: cannot read manifest ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{shown}: manifest is not UTF-8 text") from None


def read_manifest_items(manifest: str, given: str | None = None) -> list[DiscoveredImage]:
    """Items listed by a `.txt` or `.jsonl` manifest; relative entries are relative to its folder.

    `.txt`: one path per line; blank lines and lines starting with "#" are ignored.
    `.jsonl`: one JSON object per line with an "image", "image_name" or "path" field. When the
    path does not exist next to the manifest but does under its `images/` folder it is taken from
    there, so HumanBeauty's `<subset>/label.jsonl` (bare file names) works as a manifest too.
    Entries that do not exist (or are FIFOs, loops, ...) are items with an error naming the
    manifest line, so a long run still scores the rest.
    """
    given = manifest if given is None else given
    shown = display_name(given)
    text = _read_manifest_text(manifest, shown)
    base, base_given = os.path.dirname(manifest), os.path.dirname(given)
    is_jsonl = os.path.splitext(manifest)[1].lower() == ".jsonl"
    items: list[DiscoveredImage] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or (not is_jsonl and line.startswith("#")):
            continue
        entry = _manifest_row_path(shown, lineno, line) if is_jsonl else line
        entry = os.path.expanduser(entry)
        path, display = os.path.join(base, entry), os.path.join(base_given, entry)
        if is_jsonl and not os.path.isabs(entry) and not os.path.lexists(path):
            fallback = os.path.join(base, "images", entry)
            if os.path.lexists(fallback):
                path, display = fallback, os.path.join(base_given, "images", entry)
        problem = classify_file(path)
        if problem:
            problem = f"{problem} (listed in {shown}, line {lineno})"
        items.append(_item(path, display, problem))
    if not items:
        raise HumanAesError(f"{shown}: the manifest lists no images")
    return items


def read_manifest(manifest: Path) -> list[Path]:
    """Paths listed by a manifest (see `read_manifest_items`)."""
    return [Path(item.path) for item in read_manifest_items(os.fspath(manifest))]


def _manifest_row_path(shown: str, lineno: int, line: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{shown}, line {lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(row, dict):
        for key in MANIFEST_KEYS:
            value = row.get(key)
            if isinstance(value, str) and value:
                return value
    raise DataError(f"{shown}, line {lineno}: no 'image', 'image_name' or 'path' field naming the image")
