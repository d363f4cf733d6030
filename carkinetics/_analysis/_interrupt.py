"""Clean stops of long runs on SIGINT (Ctrl-C) and SIGTERM.

During a chunked run the first signal only asks the run to stop: the chunk being computed finishes, is written to
the checkpoint (if any), and the run raises [`carkinetics.Interrupted`][] between chunks, never inside compiled
code. A second SIGINT aborts at once. The handlers are installed only for the duration of the run and only in the
main thread; the previous handlers are restored afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """A long run stopped cleanly after a signal, between two chunks.

    **Attributes:** `signum` (the signal: `signal.SIGINT` or `signal.SIGTERM`), `done` and `total` (chunks finished
    and planned), `checkpoint` (the checkpoint directory, or `None`), `unit` (what was counted: `"chunks"`, `"starts"`
    of a multistart fit, `"iterations"` of an iterative fit). Rerunning the same call with the same
    checkpoint resumes from the finished chunks. The conventional exit code of a command stopped this way is
    `128 + signum` (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int, done: int, total: int, checkpoint: str | None, unit: str = "chunks"):
        self.signum, self.done, self.total, self.checkpoint = int(signum), int(done), int(total), checkpoint
        self.unit = unit
        name = signal.Signals(signum).name
        how = (
            f"rerun the same command with the same checkpoint {checkpoint!r} to resume"
            if checkpoint
            else "no checkpoint was given, so a rerun starts afresh (pass a checkpoint directory to resume)"
        )
        super().__init__(f"Stopped by {name} after {done} of {total} {unit}; {how}.")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Set by the signal handlers of `stop_on_signals`: `signum` of the first signal, or `None`."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextlib.contextmanager
def stop_on_signals(label: str = "run", stream=None, unit: str = "chunk") -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set `request.signum` instead of interrupting; a second SIGINT raises
    `KeyboardInterrupt` at once. Outside the main thread nothing is installed."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    out = sys.stderr if stream is None else stream
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if request.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
            raise KeyboardInterrupt
        request.signum = signum
        out.write(
            f"\n{label}: {signal.Signals(signum).name} received; stopping after the current {unit} "
            "(press Ctrl-C again to abort at once)\n"
        )
        out.flush()

    try:
        for s in previous:
            signal.signal(s, handler)
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
