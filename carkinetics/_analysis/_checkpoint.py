"""Checkpoints of chunked runs: a manifest keyed on everything that determines the result, and atomic chunk files.

A long run (sweep, Sobol analysis, population) writes each finished chunk as `chunk_<6 digits>.npz` next to a
`manifest.json` that holds a fingerprint of the member function (model, regimen, save times, tolerances, metric
function and any other setting it carries), of the inputs and of the layout. A rerun with the same fingerprint loads
the finished chunks and computes only the missing ones; a rerun with anything different refuses to resume and names
what differs. Files are written to a temporary name and renamed, so a chunk file is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from .._core._files import atomic_write
from ._interrupt import Interrupted, StopRequest

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _feed(h: Any, obj: Any, seen: set[int]) -> None:
    """Feed a canonical description of `obj` into the hash `h` (values, not identities)."""
    if id(obj) in seen and not isinstance(obj, (int, float, str, bool, type(None))):
        h.update(b"<cycle>")
        return
    seen = seen | {id(obj)}
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        a = np.asarray(obj)
        h.update(f"array:{a.dtype.str}{a.shape};".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__qualname__}[{len(obj)}](".encode())
        for x in obj:
            _feed(h, x, seen)
        h.update(b")")
    elif isinstance(obj, dict):
        h.update(f"dict[{len(obj)}](".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k, seen)
            _feed(h, obj[k], seen)
        h.update(b")")
    elif isinstance(obj, type):
        h.update(f"type:{obj.__module__}.{obj.__qualname__};".encode())
    elif isinstance(obj, types.FunctionType):
        code = obj.__code__
        h.update(f"function:{obj.__module__}.{obj.__qualname__}:".encode())
        _feed_code(h, code, seen)
        _feed(h, obj.__defaults__, seen)
        for cell in obj.__closure__ or ():
            try:
                _feed(h, cell.cell_contents, seen)
            except ValueError:  # an empty cell
                h.update(b"<empty>")
    elif isinstance(obj, (types.MethodType, types.BuiltinFunctionType)):
        h.update(f"method:{getattr(obj, '__qualname__', repr(obj))};".encode())
        _feed(
            h,
            getattr(obj, "__self__", None)
            if not isinstance(getattr(obj, "__self__", None), types.ModuleType)
            else None,
            seen,
        )
    elif dataclasses.is_dataclass(obj):  # equinox modules and other dataclasses: by their fields
        h.update(f"{type(obj).__module__}.{type(obj).__qualname__}(".encode())
        for f in dataclasses.fields(obj):
            h.update(f"{f.name}=".encode())
            _feed(h, getattr(obj, f.name, None), seen)
        h.update(b")")
    elif hasattr(obj, "_fields") and isinstance(obj, tuple):
        _feed(h, tuple(obj), seen)
    else:
        leaves, treedef = jax.tree_util.tree_flatten(obj)
        if len(leaves) == 1 and leaves[0] is obj:
            h.update(_ADDRESS.sub("", repr(obj)).encode())
        else:
            h.update(_ADDRESS.sub("", str(treedef)).encode())
            for x in leaves:
                _feed(h, x, seen)


def _feed_code(h: Any, code: types.CodeType, seen: set[int]) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _feed_code(h, c, seen)
        else:
            _feed(h, c, seen)


def fingerprint(*objs: Any) -> str:
    """A SHA-256 of the values of `objs` (arrays by content, modules by their fields, functions by their code,
    defaults and closure values), stable across processes: what a checkpoint is keyed on."""
    h = hashlib.sha256()
    for obj in objs:
        _feed(h, obj, set())
    return h.hexdigest()


class Checkpoint:
    """A checkpoint directory: its manifest and chunk files (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], meaning: dict[str, str] | None = None):
        self.path = os.fspath(path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise ValueError(f"The checkpoint directory {self.path!r} cannot be created: {e.strerror}.") from None
        if not os.access(self.path, os.W_OK):
            raise ValueError(f"The checkpoint directory {self.path!r} is not writable.")
        mpath = os.path.join(self.path, MANIFEST)
        if os.path.exists(mpath):
            try:
                with open(mpath, encoding="utf-8") as fh:
                    old = json.load(fh)
                if not isinstance(old, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                raise ValueError(
                    f"The checkpoint manifest {mpath!r} is corrupt ({e}); delete the directory "
                    f"{self.path!r} to start afresh."
                ) from None
            if old != manifest:
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise ValueError(
                    f"The checkpoint directory {self.path!r} belongs to a different run: it differs in {diff} "
                    f"({_explain(diff, meaning)}). Resuming would mix results; use a new directory or delete this "
                    "one to start afresh."
                )
        else:
            atomic_write(mpath, lambda fh: fh.write(json.dumps(manifest, indent=1, sort_keys=True).encode()))

    def file(self, i: int) -> str:
        return os.path.join(self.path, f"chunk_{i:06d}.npz")

    def load(self, i: int, n_leaves: int) -> tuple[list[np.ndarray], np.ndarray] | None:
        """The outputs and `ok` flags of chunk `i`, or `None` if it was not written."""
        path = self.file(i)
        if not os.path.exists(path):
            return None
        try:
            # The file is opened here, not by np.load: np.load leaks its handle when a truncated archive fails.
            with open(path, "rb") as fh, np.load(fh) as z:
                leaves = [z[f"leaf_{k}"] for k in range(n_leaves)]
                ok = z["ok"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"The checkpoint chunk {path!r} is truncated or corrupt ({type(e).__name__}); delete "
                "that file and run again to recompute it."
            ) from None
        return leaves, ok

    def save(self, i: int, leaves: Sequence[np.ndarray], ok: np.ndarray) -> None:
        arrays = {f"leaf_{k}": leaf for k, leaf in enumerate(leaves)}
        # numpy's stubs match `**arrays` against `allow_pickle`; every entry is an array.
        atomic_write(self.file(i), lambda fh: np.savez(fh, ok=ok, **arrays))  # pyright: ignore[reportArgumentType]

    def save_state(self, name: str, arrays: dict[str, Any]) -> None:
        """Write the named arrays as `<name>.npz` (atomically: a reader sees the previous state or this one)."""
        data = {k: np.asarray(v) for k, v in arrays.items()}
        atomic_write(os.path.join(self.path, f"{name}.npz"), lambda fh: np.savez(fh, **data))  # pyright: ignore[reportArgumentType]

    def load_state(self, name: str, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
        """The arrays `keys` of `<name>.npz`, or `None` if it was not written (`ValueError` naming the file to delete
        when it is truncated, corrupt or lacks one of `keys`)."""
        path = os.path.join(self.path, f"{name}.npz")
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as fh, np.load(fh) as z:
                return {k: z[k] for k in keys}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"The checkpoint file {path!r} is truncated or corrupt ({type(e).__name__}); delete that file "
                "and run again to recompute what it held."
            ) from None


class IterationStore:
    """The state of an iterative fit after its last finished iteration, and a clean stop between iterations.

    `after(k, state if due(k) else None)` writes `state` (a dict of arrays, plus `iteration = k`) to `state.npz` of
    the checkpoint every `every` iterations and whenever a stop was requested, then raises
    [`carkinetics.Interrupted`][] if one was (and `k < total`). `load(keys)` returns the last state written, or
    `None`. Without a checkpoint only the clean stop remains.
    """

    def __init__(self, checkpoint: Checkpoint | None, stop: StopRequest, total: int, every: int = 1):
        self.checkpoint, self.stop, self.total, self.every = checkpoint, stop, int(total), max(1, int(every))

    def load(self, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
        if self.checkpoint is None:
            return None
        return self.checkpoint.load_state("state", ["iteration", *keys])

    def due(self, k: int) -> bool:
        """Whether the state after iteration `k` is to be written (pass it to `after` then)."""
        return self.checkpoint is not None and (self.stop.signum is not None or k % self.every == 0)

    def after(self, k: int, state: dict[str, Any] | None) -> None:
        """Write `state` (if given, see `due`) as the state after iteration `k`; raise [`carkinetics.Interrupted`][]
        if a stop was requested and iterations remain."""
        if self.checkpoint is not None and state is not None:
            self.checkpoint.save_state("state", {"iteration": np.asarray(k), **state})
        if self.stop.signum is not None and k < self.total:
            path = None if self.checkpoint is None else self.checkpoint.path
            raise Interrupted(self.stop.signum, k, self.total, path, "iterations")


_MEANING = {
    "function_sha256": "the member function: model, regimen, save times, tolerances, metrics or other settings",
    "inputs_sha256": "the swept inputs",
    "chunk_size": "the chunk size",
    "n_chunks": "the number of chunks",
    "n_members": "the number of members",
    "outputs": "the output structure",
    "output_shapes": "the output shapes",
    "format": "the checkpoint format",
}


def _explain(keys: Sequence[str], meaning: dict[str, str] | None = None) -> str:
    table = {**_MEANING, **(meaning or {})}
    return "; ".join(table.get(k, k) for k in keys)


def package_version() -> str:
    """The installed carkinetics version (a checkpoint written by another version is not resumed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("carkinetics")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"
