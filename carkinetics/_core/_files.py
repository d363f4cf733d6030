"""Writing files so that a reader never sees a partial one: write a temporary file next to the target, then rename."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
    """Write a file through `write(binary file handle)` to a temporary name, then rename it into place."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (temporary file + rename)."""
    atomic_write(os.fspath(path), lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file + rename), e.g. a PNG or NPZ rendered into memory."""
    atomic_write(os.fspath(path), lambda fh: fh.write(data))


@contextlib.contextmanager
def atomic_text_file(path: str | os.PathLike, *, newline: str | None = None) -> Iterator[IO[str]]:
    """A text handle (UTF-8) whose content replaces `path` atomically when the `with` block ends without an error
    (nothing is written if it raises): `with atomic_text_file(p, newline="") as fh: csv.writer(fh)...`."""
    buf = io.StringIO(newline=newline)
    yield buf
    atomic_write_text(path, buf.getvalue())
