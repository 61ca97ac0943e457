"""One way to write a file so that a crash never leaves half of it: :func:`atomic_write`.

Every writer of the project goes through it: checkpoints, safetensors, exports, shipped weights,
the decoded-image cache, downloads and figures. The file is written under a temporary name beside
its destination, flushed to disk (fsync), given the permissions a plain ``open()`` would give it,
and renamed over the destination; the folder is fsynced so the rename itself survives a power
loss. If the body raises, the destination is untouched and the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and /proc-like mounts) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on a clean exit it replaces ``path`` durably.

    ``suffix`` is the temporary file's extension, for writers that pick a format by it
    (``savefig`` of ``x.png`` wants ``.png``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)`` through :func:`atomic_write` (a reader never sees half a JSON file)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
