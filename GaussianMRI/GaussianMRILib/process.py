"""Run the engine in a separate process and follow its ``--progress-json`` events.

The engine (``python -m gaussian_mri svr|cine ... --progress-json``) prints one JSON object per
line on stdout::

    {"event": "progress", "stage": str, "iteration": int, "total": int, "loss": float,
     "elapsed_s": float, "eta_s": float}
    {"event": "preview", "path": str}
    {"event": "done", "outputs": {name: path}}
    {"event": "error", "message": str}

:class:`EngineProcess` starts the process, reads its output on a small reader thread that only
puts text lines into a queue (it never touches MRML), and turns the lines into callbacks when the
owner calls :meth:`EngineProcess.poll` on the main thread: from a ``qt.QTimer`` in the Slicer
widget (non-blocking), or from :meth:`EngineProcess.wait` (blocking, console and tests).
This module imports neither Qt nor Slicer.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "EngineProcess",
    "JobState",
    "ProgressEvent",
    "EngineError",
    "EngineCancelled",
]


class EngineError(RuntimeError):
    """The engine process failed (non-zero exit code or an ``error`` event)."""


class EngineCancelled(RuntimeError):
    """The run was cancelled by the user."""


class JobState(enum.Enum):
    """Life cycle of one engine run."""

    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class ProgressEvent:
    """One ``progress`` event of the engine (times in seconds)."""

    stage: str = ""
    iteration: int = 0
    total: int = 0
    loss: float = float("nan")
    elapsedS: float = 0.0
    etaS: float = float("nan")

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 when the total is unknown)."""
        return min(max(self.iteration / self.total, 0.0), 1.0) if self.total > 0 else 0.0

    def describe(self) -> str:
        """A short human-readable line: ``stage 120/400, loss 0.0123, 1 min 20 s left``."""
        text = f"{self.stage} {self.iteration}/{self.total}" if self.total else self.stage
        if self.loss == self.loss:  # not NaN
            text += f", loss {self.loss:.4g}"
        if self.etaS == self.etaS and self.etaS >= 0:
            from gaussian_mri._progress import format_duration  # the engine's (torch-free) formatting

            text += f", {format_duration(self.etaS)} left"
        return text


@dataclass
class EngineProcess:
    """One engine run in a child process, followed by polling (no Qt needed).

    Parameters
    ----------
    command : list of str
        Full argument list (interpreter first), e.g. from ``buildSVRCommand``.
    onProgress, onPreview, onLog, onFinished : callables, optional
        Called from :meth:`poll` (so on the caller's thread): ``onProgress(ProgressEvent)``,
        ``onPreview(path)``, ``onLog(text line)`` for every non-JSON line (stderr included),
        ``onFinished(JobState)`` once at the end.
    """

    command: list[str]
    onProgress: Callable[[ProgressEvent], None] | None = None
    onPreview: Callable[[str], None] | None = None
    onLog: Callable[[str], None] | None = None
    onFinished: Callable[[JobState], None] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    state: JobState = JobState.NOT_STARTED
    outputs: dict[str, str] = field(default_factory=dict)
    errorMessage: str = ""
    lastProgress: ProgressEvent | None = None
    returnCode: int | None = None
    logLines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._startTime = 0.0

    # ---------------------------------------------------------------- control
    def start(self) -> EngineProcess:
        """Start the child process (returns at once)."""
        if self.state != JobState.NOT_STARTED:
            raise RuntimeError(f"EngineProcess already {self.state.value}")
        logging.info("GaussianMRI: starting %s", " ".join(self.command))
        creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self._proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            creationflags=creationflags,
            start_new_session=(os.name != "nt"),
        )
        self._startTime = time.monotonic()
        self.state = JobState.RUNNING
        for stream, name in ((self._proc.stdout, "stdout"), (self._proc.stderr, "stderr")):
            thread = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            thread.start()
            self._readers.append(thread)
        return self

    def cancel(self) -> None:
        """Stop the child (terminate, then kill after 5 s). The state becomes CANCELLED."""
        if self.state != JobState.RUNNING or self._proc is None:
            return
        self._terminate()
        self._drain()
        self._finish(JobState.CANCELLED)

    @property
    def running(self) -> bool:
        return self.state == JobState.RUNNING

    @property
    def elapsedS(self) -> float:
        return time.monotonic() - self._startTime if self._startTime else 0.0

    def poll(self) -> JobState:
        """Handle the lines received so far; detect the end of the process. Call on the main thread."""
        if self.state != JobState.RUNNING or self._proc is None:
            return self.state
        self._drain()
        if self.state != JobState.RUNNING:
            return self.state
        code = self._proc.poll()
        if code is None:
            return self.state
        for thread in self._readers:
            thread.join(timeout=5)
        self._drain()
        self.returnCode = code
        if self.state != JobState.RUNNING:
            return self.state
        if code == 0 and not self.errorMessage:
            self._finish(JobState.SUCCEEDED)
        else:
            if not self.errorMessage:
                tail = "\n".join(self.logLines[-15:])
                self.errorMessage = f"The engine stopped with exit code {code}." + (f"\n{tail}" if tail else "")
            self._finish(JobState.FAILED)
        return self.state

    def wait(self, timeoutS: float | None = None, pollIntervalS: float = 0.1) -> JobState:
        """Block until the end (blocking mode); on timeout cancel and raise ``TimeoutError``."""
        if self.state == JobState.NOT_STARTED:
            self.start()
        deadline = None if timeoutS is None else time.monotonic() + timeoutS
        while self.poll() == JobState.RUNNING:
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"The engine did not finish within {timeoutS} s; it was stopped.")
            time.sleep(pollIntervalS)
        return self.state

    def raiseForState(self) -> None:
        """Raise :class:`EngineCancelled` or :class:`EngineError` unless the run succeeded."""
        if self.state == JobState.CANCELLED:
            raise EngineCancelled("The reconstruction was cancelled.")
        if self.state == JobState.FAILED:
            raise EngineError(self.errorMessage or "The engine failed.")
        if self.state != JobState.SUCCEEDED:
            raise EngineError(f"The engine run is {self.state.value}.")

    # --------------------------------------------------------------- internals
    def _read(self, stream, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._lines.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    def _drain(self) -> None:
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                return
            self._handleLine(name, line)

    def _handleLine(self, streamName: str, line: str) -> None:
        event = None
        if streamName == "stdout" and line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
        if not isinstance(event, dict) or "event" not in event:
            if line.strip():
                self.logLines.append(line)
                if self.onLog:
                    self.onLog(line)
            return
        kind = event.get("event")
        if kind == "progress":
            progress = ProgressEvent(
                stage=str(event.get("stage", "")),
                iteration=int(event.get("iteration", 0) or 0),
                total=int(event.get("total", 0) or 0),
                loss=_float(event.get("loss")),
                elapsedS=_float(event.get("elapsed_s"), 0.0),
                etaS=_float(event.get("eta_s")),
            )
            self.lastProgress = progress
            if self.onProgress:
                self.onProgress(progress)
        elif kind == "preview":
            path = str(event.get("path", ""))
            if path and self.onPreview and self.state == JobState.RUNNING:
                self.onPreview(path)
        elif kind == "done":
            outputs = event.get("outputs") or {}
            self.outputs = {str(k): str(v) for k, v in outputs.items()}
        elif kind == "error":
            self.errorMessage = str(event.get("message", "unknown engine error"))
        elif self.onLog:
            self.onLog(line)

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name != "nt":
                import signal

                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
            proc.wait(timeout=5)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            try:
                if os.name != "nt":
                    import signal

                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                proc.wait(timeout=5)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                logging.warning("GaussianMRI: could not stop engine process %s", proc.pid)
        self.returnCode = proc.returncode

    def _finish(self, state: JobState) -> None:
        self.state = state
        logging.info("GaussianMRI: engine %s after %.1f s", state.value, self.elapsedS)
        if self.onFinished:
            self.onFinished(state)


def _float(value, default: float = float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
