"""A progress line for long runs: done/total, rate, elapsed time, ETA and failures, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """`label: 120/400 members (30%), 95.2/s, 1s elapsed, ETA 3s, 0 failed`, redrawn in place on a terminal and
    printed every `every_s` seconds otherwise. Disabled with `enabled=False`."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "members",
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = 5.0,
    ):
        self.label, self.total, self.unit, self.enabled = label, int(total), unit, bool(enabled)
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self._last = -1e9
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        computed = self.done - self.skipped
        rate = computed / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        text = (
            f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.3g}/s, "
            f"{_duration(elapsed)} elapsed"
        )
        if self.done < self.total and eta == eta:
            text += f", ETA {_duration(eta)}"
        if self.skipped:
            text += f", {self.skipped} resumed"
        return text + f", {self.failed} failed"

    def update(self, n: int, failed: int = 0, *, resumed: bool = False) -> None:
        """Count `n` more finished units (`failed` of them failed; `resumed`: loaded from a checkpoint)."""
        self.done += int(n)
        self.failed += int(failed)
        if resumed:
            self.skipped += int(n)
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
        elif now - self._last >= self.every_s or self.done >= self.total:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last = now

    def close(self) -> None:
        """Finish the line (a final summary)."""
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\n")
        if self.done < self.total:
            self.stream.write(
                f"{self.label}: stopped after {self.done}/{self.total} {self.unit}, {self.failed} failed\n"
            )
        self.stream.flush()
