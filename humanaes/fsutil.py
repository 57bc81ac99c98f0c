"""File-system helpers shared by everything that writes outputs, data sets and checkpoints.

Two rules hold for every file humanaes writes:

- **Atomic, private temp files** (`atomic_write`, `private_temp_file`): new content goes to a
  temporary file created with O_EXCL in the target's own folder under a random name (so a
  planted symlink or a file of another run is never followed or reused), is fsynced, and is
  renamed over the target. The rename is the only visible change: readers see the old or the
  new file, never half of one.
- **One writer per output** (`output_lock`): a run that writes an output holds an OS-level lock
  (`fcntl.flock`) on `<output>.lock` beside it. A second run on the same output is refused at
  once, naming the process that holds it. The kernel drops the lock when the holder exits, so a
  killed run never leaves a stuck lock (the lock file itself may remain; it is harmless).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from humanaes.errors import HumanAesError


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces (weights and tables may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_within(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies below it, compared as strings: the caller normalises or
    resolves both first (`/data/imagesX` is not below `/data/images`)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def fsync_dir(path: Path) -> None:
    """Make the directory entries of folder `path` durable (a no-op where the OS cannot)."""
    try:
        fd = os.open(path if str(path) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def private_temp_file(target: Path, *, mode: str = "wb", encoding: str | None = None) -> Iterator[tuple[IO[Any], Path]]:
    """An exclusive, randomly named temp file beside `target`, removed unless renamed.

    Yields (file object, its path). `tempfile.mkstemp` opens with O_CREAT | O_EXCL, so it never
    follows a symlink planted at the name and never shares a file with another run.
    """
    folder = target.parent
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline="" if "b" not in mode else None) as fh:
            yield fh, tmp
    finally:
        # Still there means it was not renamed into place: the write failed or was abandoned.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(
    target: str | os.PathLike[str],
    content: bytes | str | Callable[[Path], None],
    *,
    encoding: str = "utf-8",
) -> Path:
    """Replace `target` atomically with `content` (bytes, text, or a function that writes a path).

    A function is handed the private temp file's path and must write it completely (pyarrow's
    writers take a path); bytes and text are written directly. The temp file is fsynced, renamed
    over `target` (never following a symlink at `target`: the link itself is replaced) and the
    folder entry is fsynced.
    """
    target = Path(target)
    with private_temp_file(target, mode="wb") as (fh, tmp):
        if callable(content):
            fh.close()
            content(tmp)
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        else:
            fh.write(content.encode(encoding) if isinstance(content, str) else content)
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        os.chmod(tmp, _default_mode(0o666))  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp, target)
    fsync_dir(target.parent)
    return target


def lock_path(output: Path) -> Path:
    """The lock file that guards `output` while a run writes it."""
    return output.with_name(output.name + ".lock")


class OutputLock:
    """An exclusive, non-blocking `fcntl.flock` on `<output>.lock` (see the module docstring)."""

    def __init__(self, output: str | os.PathLike[str], *, what: str = "--out"):
        self.output = Path(output)
        self.path = lock_path(self.output)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        if self._fd is not None:
            # Already held (`with output_lock(x):` enters a lock that output_lock acquired): a
            # second flock on a new descriptor would refuse this very process.
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no flock; one writer is the user's job there
            return self
        # O_NOFOLLOW: a symlink planted at the lock's name is refused, not followed.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise HumanAesError(f"{self.what} {self.output}: the lock file {self.path} is a symlink; remove it") from None
            raise HumanAesError(f"{self.what} {self.output}: cannot create the lock file {self.path} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f"process {holder}" if holder else "another process"
                raise HumanAesError(
                    f"{self.what} {self.output} is being written by {who}; wait for it to finish or choose another {self.what}"
                ) from None
            raise HumanAesError(f"{self.what} {self.output}: cannot lock {self.path} ({exc.strerror or exc})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: unlinking it would let a third run lock a new inode while a second
            # still waits on the old one. An unlocked lock file means nothing.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def output_lock(output: str | os.PathLike[str], *, what: str = "--out") -> OutputLock:
    """Lock `output` for this process (use as a context manager); HumanAesError when taken."""
    return OutputLock(output, what=what).acquire()


def _default_mode(base: int) -> int:
    """`base` (0o666 for files, 0o777 for folders) under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


@contextlib.contextmanager
def staging_dir(final: Path, *, label: str = "", mode: int | None = None) -> Iterator[Path]:
    """A new folder beside `final` to build it in, then `publish_dir(staging, final)` it.

    Created with a random name (`.<final's name>.<label>XXXX`, like `private_temp_file`) so that
    no other run's folder or a planted link is reused; `mode` sets its permissions (default: a
    new folder's under the umask, not mkdtemp's private 0700, since it becomes `final`). Whatever
    is left of it on exit (an error, or nothing published) is removed.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{label}", dir=final.parent))
    try:
        os.chmod(tmp, _default_mode(0o777) if mode is None else mode)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a fully written folder `tmp` to `final`, replacing any previous one.

    Writers fill a temporary folder and publish it last, so a folder under its final name is
    always complete: an interrupted save leaves only a stray temporary folder behind.
    """
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


class NotRegularFileError(OSError):
    """A path names a folder, FIFO, socket or device where a regular file is needed.

    `st_mode` is the opened file's mode, so a caller can say which kind it was."""

    st_mode: int = 0


def open_regular(path: str | os.PathLike[str] | bytes, *, follow_symlinks: bool = True) -> int:
    """A read-only binary fd on a regular file, never blocking: a FIFO is opened non-blocking and,
    like a folder, socket or device, refused (`NotRegularFileError`) without a byte being read. With
    `follow_symlinks=False` a symlink as the last component is refused (ELOOP) instead of followed.
    Other failures raise the usual OSError subclasses (FileNotFoundError, PermissionError ...)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        import stat

        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            error = NotRegularFileError(errno.EINVAL, "not a regular file (a folder, FIFO, socket or device)",
                                        os.fsdecode(path))
            error.st_mode = mode
            raise error
        # Back to blocking reads: O_NONBLOCK was only there so that opening a FIFO cannot hang.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
