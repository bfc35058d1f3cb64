"""``--output FILE`` of ``rnnkit evaluate`` and ``rnnkit predict``: opened before any work, written atomically.

The temporary file beside FILE is created first, so that an output that cannot be written (its directory missing,
a file where a directory should be, no permission) is a one-line error before minutes of loading and predicting,
and FILE appears, complete, only when the command succeeds: a failure on the way leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from rnnkit.cli._errors import CLIError
from rnnkit.trainer.files import atomic_open

__all__ = ["open_output"]


@contextlib.contextmanager
def open_output(path: str) -> Iterator[TextIO]:
    """A UTF-8 text file that becomes ``path`` when the ``with`` block ends without an exception; CLIError naming
    ``path`` when it cannot be written. The directory must exist (as for a shell redirection)."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{path}: is a directory; --output must name a file")
    parent = target.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise CLIError(f"{path}: cannot write the output: {parent} {problem}")
    with contextlib.ExitStack() as stack:
        try:
            binary = stack.enter_context(atomic_open(target))
        except OSError as err:  # no write permission, a read-only filesystem
            raise CLIError(f"{path}: cannot write the output ({err.strerror or err})") from None
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        try:
            yield text
        finally:
            text.detach()  # flushes into the file, which atomic_open syncs, closes and renames or removes
