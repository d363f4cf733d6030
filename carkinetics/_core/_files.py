"""Writing files so that a reader never sees a partial one."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def atomic_write(path: str, write: Callable[[Any], Any]) -> None:
    """Write a file through `write(binary file handle)` to a temporary name, then rename it into place."""
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
