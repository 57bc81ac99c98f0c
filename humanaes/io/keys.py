"""Image keys: the one text name every output row, resume and log uses for an input file.

The convention (documented in `humanaes.io`):

- The **key** of a file is its absolute path, made absolute against the working directory but
  NOT symlink-resolved (a link is its own item, keyed by its own path). It is normalised
  lexically like `os.path.abspath` (`.`, `..` and repeated slashes removed), so `photos/a.jpg`
  given in one folder and `../photos/a.jpg` in another give the same key.
- File names are bytes on POSIX. A path that is valid UTF-8 is its own key. A path that is not
  becomes `bytes:` followed by the path's bytes with every byte outside printable ASCII, and `%`
  itself, written as `%XX` (upper-case hex), e.g. `/data/l_\\xe9.jpg` -> `bytes:/data/l_%E9.jpg`.
  Absolute POSIX paths start with `/`, so no valid name can equal an encoded one: the mapping
  from byte paths to keys is injective and `key_to_path` reverses it.
- The **display** name is the path as the user gave it (relative stays relative), for tables
  and messages; bytes that are not UTF-8 are shown as `\\xNN`. It is not unique and is never
  used to match rows.
"""

from __future__ import annotations

import os
from urllib.parse import unquote_to_bytes

#: prefix of the key of a path that is not valid UTF-8
BYTES_KEY_PREFIX = "bytes:"
_KEEP = frozenset(range(0x20, 0x7F)) - {ord("%")}


def _path_bytes(path: str | os.PathLike[str] | bytes) -> bytes:
    raw = os.fspath(path)
    return raw if isinstance(raw, bytes) else os.fsencode(raw)


def encode_path_bytes(raw: bytes) -> str:
    """Text form of a path given as bytes: itself when UTF-8, else `bytes:` + percent-encoding."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return BYTES_KEY_PREFIX + "".join(chr(b) if b in _KEEP else f"%{b:02X}" for b in raw)


def image_key(path: str | os.PathLike[str] | bytes) -> str:
    """The stable resume key of `path`: absolute, not symlink-resolved, non-UTF-8 bytes encoded.

    `path` may be a str (undecodable bytes as surrogate escapes, as os.listdir returns them), a
    PathLike or bytes. See the module docstring for the convention.
    """
    if os.name == "nt":  # Windows names are text already; no byte encoding needed
        return os.path.abspath(os.fsdecode(os.fspath(path)))
    return encode_path_bytes(os.path.abspath(_path_bytes(path)))


def key_to_path(key: str) -> str:
    """The path (usable with open()) that `key` names: `image_key`'s inverse for encoded keys."""
    if key.startswith(BYTES_KEY_PREFIX):
        return os.fsdecode(unquote_to_bytes(key[len(BYTES_KEY_PREFIX):]))
    return key


def display_name(path: str | os.PathLike[str] | bytes) -> str:
    """`path` as text for people: as given, with undecodable bytes shown as `\\xNN`."""
    return _path_bytes(path).decode("utf-8", "backslashreplace")


def clean_text(text: str) -> str:
    """`text` made encodable as UTF-8 (lone surrogates from undecodable names become `\\xNN`)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escapes of bytes (e.g. from bad JSON)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def row_key(image: str) -> str:
    """The key written for a result's `image`: itself, unless it cannot be UTF-8 text.

    The CLI passes keys already; this guards API callers who pass raw names with surrogate
    escapes (e.g. from os.listdir), which would otherwise crash the writers.
    """
    try:
        image.encode("utf-8")
        return image
    except UnicodeEncodeError:
        try:
            return encode_path_bytes(image.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            return clean_text(image)
