"""Progress of long command-line work for a person: a bar in a terminal, a line now and then in a log.

``gaussian-mri svr`` and ``gaussian-mri cine`` feed :class:`TerminalProgress` the status dicts of their
fit callbacks (``stage``, ``iteration``, ``total``, ``loss``, ``elapsed_s``, ``eta_s``). On a terminal
(stderr is a TTY) it redraws one line in place::

    fit [##########--------------------]  120/400  loss 0.01234  1 min 20 s left

Elsewhere (stderr redirected to a file or a pipe) it writes one plain line at most every
``interval_s`` seconds and at the end of a stage, so a log stays readable. With ``--progress-json``
the commands do not create it: stdout carries only the JSON events for programs.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO

__all__ = ["TerminalProgress", "format_duration"]


def format_duration(seconds: float | None) -> str:
    """``75.2`` -> ``'1 min 15 s'``; ``None``/NaN -> ``'?'``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class TerminalProgress:
    """Draws fit progress on ``stream`` (default stderr); see the module docstring."""

    def __init__(self, stream: IO[str] | None = None, width: int = 30, interval_s: float = 10.0,
                 tty: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval_s = interval_s
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if tty is None and isatty is not None else bool(tty)
        self._last_plain = -math.inf
        self._open_line = False
        self._stage = None

    def line(self, status: dict) -> str:
        stage = str(status.get("stage", ""))
        it, total = int(status.get("iteration") or 0), int(status.get("total") or 0)
        parts = [stage]
        if total > 0:
            done = min(max(it / total, 0.0), 1.0)
            filled = int(round(done * self.width))
            parts = [f"{stage} [" + "#" * filled + "-" * (self.width - filled) + "]", f"{it:>{len(str(total))}}/{total}"]
        loss = status.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            parts.append(f"loss {loss:.4g}")
        eta = status.get("eta_s")
        if isinstance(eta, (int, float)) and math.isfinite(eta):
            parts.append(f"{format_duration(eta)} left")
        elif isinstance(status.get("elapsed_s"), (int, float)):
            parts.append(f"{format_duration(status['elapsed_s'])} elapsed")
        return "  ".join(parts)

    def __call__(self, status: dict) -> None:
        text = self.line(status)
        stage_changed = self._stage is not None and status.get("stage") != self._stage
        finished = int(status.get("total") or 0) > 0 and int(status.get("iteration") or 0) >= int(status["total"])
        if self.tty:
            if stage_changed and self._open_line:
                self.stream.write("\n")
            self.stream.write("\r" + text + "\033[K")
            self._open_line = True
            if finished:
                self.stream.write("\n")
                self._open_line = False
        else:
            now = time.monotonic()
            if stage_changed or finished or now - self._last_plain >= self.interval_s:
                self.stream.write(text + "\n")
                self._last_plain = now
        self._stage = status.get("stage")
        self.stream.flush()

    def close(self) -> None:
        """End an open terminal line (call when the work ends early, e.g. on an error)."""
        if self.tty and self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
