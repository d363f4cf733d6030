"""Test helpers."""

import numpy as np


def rel_err(a, b, floor: float = 0.0) -> float:
    """Max relative error of `a` against reference `b` (with an absolute floor in the denominator)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / (np.abs(b) + floor)))


def central_fd(f, x: float, h: float) -> float:
    """Central finite difference of scalar `f` at `x` with step `h`."""
    return (f(x + h) - f(x - h)) / (2 * h)


class TraceCounter:
    """Counts JAX traces by function name inside a `with` block (from `jax.log_compiles` messages), e.g.
    `with TraceCounter() as tc: ...; tc["_run_multistart"]` is the number of times it was traced."""

    def __enter__(self):
        import logging

        import jax

        self.records: list[str] = []
        handler = logging.Handler(level=logging.DEBUG)
        handler.emit = lambda record: self.records.append(record.getMessage())
        self._handler = handler
        self._logger = logging.getLogger("jax")
        self._old_level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(handler)
        self._ctx = jax.log_compiles()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old_level)
        return False

    def __getitem__(self, name: str) -> int:
        return sum(1 for m in self.records if "Finished tracing" in m and f" {name} " in f" {m} ")


def signal_on_call(monkeypatch, module, name, k, signum):
    """Patch `module.name` so that its k-th call first sends `signum` to this process (a deterministic stand-in
    for Ctrl-C / `kill` arriving while that call runs); returns the list that counts the calls."""
    import os

    calls = []
    real = getattr(module, name)

    def run(*args, **kwargs):
        calls.append(1)
        if len(calls) == k:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, run)
    return calls
