"""File helpers for media I/O: input checks and atomic output (temporary name in the target folder, then rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "require_file"]


def _umask() -> int:
    """The process umask (read by setting it and putting it back; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and `os.replace` it onto `path`.

    On any exception (encoder error, full disk, Ctrl-C) the temporary file is removed and `path` is left as it
    was (absent, or the previous complete file). The temporary name starts with a dot and ends in `.tmp`. The file
    gets the mode a plain `open` would give it (0666 less the umask: 0644 under the default umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual mode (0644)
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def require_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path; FileNotFoundError naming it when it does not exist or is a folder, ValueError if empty."""
    path = Path(path)
    if not path.is_file():
        reason = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{what} file {str(path)!r} {reason}; check the path")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} file {str(path)!r} is empty (0 bytes); check that it was copied completely")
    return path
