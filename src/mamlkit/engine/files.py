"""Every file a run writes goes through here: atomically, and with I/O failures as one-line errors.

A file is written to a temporary name beside it, fsynced and renamed, so a reader (or a process
killed at any instant) sees either the old file or the new one. A failed write removes its
temporary and raises a MamlkitError naming the path and the fix, so a full disk, a read-only folder
or a file-size limit never leaves a traceback, a ``.tmp`` or a damaged earlier file behind.
"""

import contextlib
import errno
import io
import os
from pathlib import Path

from mamlkit.errors import MamlkitError

TEMPORARY_SUFFIX = ".tmp"

_FIXES = {
    errno.ENOSPC: "free space on that disk (or choose another --out), then continue with --resume",
    errno.EDQUOT: "free space within your disk quota (or choose another --out), then continue with --resume",
    errno.EFBIG: "raise the file-size limit (ulimit -f unlimited), then continue with --resume",
    errno.EACCES: "make it writable (chmod u+w) or choose another --out",
    errno.EPERM: "make it writable (chmod u+w) or choose another --out",
    errno.EROFS: "the disk is read-only; choose an --out on a writable disk",
}


def io_error(path: Path, error: OSError) -> MamlkitError:
    """The one-line error for an OSError met while writing or reading ``path``."""
    reason = error.strerror or os.strerror(error.errno or 0) or type(error).__name__
    fix = _FIXES.get(error.errno, "check that the folder exists and is writable, then retry")
    return MamlkitError(f"cannot write {path} ({reason}); {fix}")


@contextlib.contextmanager
def writing(path: Path):
    """Turn an OSError raised inside the block into the one-line error for ``path``."""
    try:
        yield
    except OSError as error:
        raise io_error(Path(path), error) from None


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")


def write_all(handle, data: bytes | str) -> None:
    """Write, flush and fsync: every byte any run writes passes here (the fault tests patch it)."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    temporary = temporary_path(path)
    with writing(path):
        try:
            with open(temporary, "wb") as handle:
                write_all(handle, data)
            os.replace(temporary, path)
        except Exception:
            temporary.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (whole lines) to ``path``; a kill may cut only the last line short."""
    with writing(path), open(path, "a") as handle:
        write_all(handle, text)


def save_figure(figure, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically (a full disk leaves the old figure)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: raises the one-line error a later write would meet."""
    probe = temporary_path(Path(folder) / "write-probe")
    with writing(folder):
        try:
            with open(probe, "wb") as handle:
                write_all(handle, b"")
        finally:
            probe.unlink(missing_ok=True)


def remove_temporaries(directory: Path) -> None:
    """Delete ``.*.tmp`` files a killed process left in ``directory`` and its subfolders."""
    for leftover in Path(directory).rglob(f".*{TEMPORARY_SUFFIX}"):
        with writing(leftover):
            leftover.unlink()
