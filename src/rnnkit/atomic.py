"""Files that are either absent, the old version or the complete new one: atomic writes.

A run directory or a vocabulary is written while work goes on, and an interrupted process (Ctrl-C, a killed
job, a full disk) must never leave a half-written file where a later run would read it. A process killed
outright (SIGKILL, power loss) can still leave its temporary file behind: those are named
``.{name}.{random}.rnnkit.tmp``, so that :func:`remove_temporaries` removes ours and nothing else.

Files get the mode a plain ``open()`` would give them (``0o666`` less the umask, usually ``0o644``), not the
``0o600`` of :func:`tempfile.mkstemp`, so that what is written can be shared read-only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_SUFFIX", "atomic_open", "atomic_write_bytes", "file_mode", "remove_temporaries"]

TEMP_SUFFIX = ".rnnkit.tmp"


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: ``0o666`` less the process umask."""
    umask = os.umask(0)  # the only portable way to read the umask is to set it, then put it back
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that appears at ``path`` only once the ``with`` block ends without an exception.

    The bytes go to a temporary file in the same directory (same filesystem, so the rename is atomic), are
    flushed to disk, then the temporary file replaces ``path``; on an exception it is removed and ``path`` is
    left as it was. Missing parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    with atomic_open(path) as f:
        f.write(data)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed atomic writes left in ``directory`` and its subdirectories, and
    return their paths. Only names of the form :func:`atomic_open` gives are touched; no-op for a missing
    directory."""
    removed = sorted(Path(directory).rglob(f".*{TEMP_SUFFIX}"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
