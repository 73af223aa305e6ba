"""The life cycle shared by the module logics: one engine run per job, nothing in the scene until it succeeded.

A module logic subclasses :class:`EngineLogic` and implements ``prepare(...)`` (check inputs, write
them to ``job.workDir``, build the command) and ``loadOutputs(job)`` (create the output nodes, all
or nothing). This class starts the engine process, cancels it, and cleans up: a failed or cancelled
run leaves the scene as it was and deletes its temporary files.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .engine import engineEnvironment
from .process import EngineError, EngineProcess, JobState, ProgressEvent

__all__ = ["EngineJob", "EngineLogic", "DEVICE_HELP", "validateDevice"]

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def validateDevice(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``ValueError`` otherwise."""
    text = str(device)
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return
    raise ValueError(f"Device must be one of {DEVICE_HELP}, got '{device}'")


@dataclass(kw_only=True)
class EngineJob:
    """One run: inputs written to ``workDir``, the engine writes into ``outputDir``."""

    workDir: Path
    outputDir: Path
    command: list[str]
    baseName: str
    process: EngineProcess | None = None
    previewNode: object = None
    keepFiles: bool = False
    log: list[str] = field(default_factory=list)


class EngineLogic:
    """Base of the module logics (no Qt): start / cancel / finish one engine job.

    :param enginePrefix: how to start the engine (default ``[PythonSlicer, "-m", "gaussian_mri"]``).
    :param logCallback: receives engine log lines (default: ``logging.info``).
    """

    #: name used in log lines and temporary folder names
    engineName = "GaussianMRI"

    def __init__(self, enginePrefix: Sequence[str] | None = None, logCallback: Callable[[str], None] | None = None):
        self.enginePrefix = list(enginePrefix) if enginePrefix else None
        self.logCallback = logCallback or (lambda line: logging.info("%s: %s", self.engineName, line))
        self.temporaryRoot: str | None = None

    # ------------------------------------------------------------ to implement
    def prepare(self, *args, **kwargs) -> EngineJob:  # pragma: no cover - abstract
        raise NotImplementedError

    def loadOutputs(self, job: EngineJob):  # pragma: no cover - abstract
        raise NotImplementedError

    def onPreview(self, job: EngineJob, path: str) -> None:
        """Engine preview file written (main thread); default: ignored."""

    # ------------------------------------------------------------ helpers for prepare()
    def makeWorkDirectory(self) -> tuple[Path, Path]:
        """A new temporary ``(workDir, workDir/output)`` in Slicer's temporary folder."""
        root = self.temporaryRoot
        if not root:
            import slicer

            app = getattr(slicer, "app", None)
            root = app.temporaryPath if app is not None else None
        workDir = Path(tempfile.mkdtemp(prefix=f"{self.engineName}-", dir=root))
        outputDir = workDir / "output"
        outputDir.mkdir()
        return workDir, outputDir

    # ------------------------------------------------------------ running
    def start(self, job: EngineJob, onProgress: Callable[[ProgressEvent], None] | None = None,
              onFinished: Callable[[JobState], None] | None = None, showPreview: bool = True) -> EngineProcess:
        """Start the engine (non-blocking); call ``job.process.poll()`` regularly, then :meth:`finish`."""

        def onLog(line: str) -> None:
            job.log.append(line)
            self.logCallback(line)

        job.process = EngineProcess(
            command=job.command, onProgress=onProgress, onLog=onLog, onFinished=onFinished,
            onPreview=(lambda path: self.onPreview(job, path)) if showPreview else None, env=engineEnvironment(),
        )
        return job.process.start()

    def removePreview(self, job: EngineJob) -> None:
        if job.previewNode is not None:
            from . import nodes

            nodes.removeNodes([job.previewNode])
            job.previewNode = None

    def cancel(self, job: EngineJob) -> None:
        """Stop a running job; the scene is left as before the run."""
        if job.process is not None:
            job.process.cancel()
        self.removePreview(job)

    def finish(self, job: EngineJob):
        """After the process ended: raise on failure/cancel, else create the outputs.

        Temporary files are deleted in all cases (unless ``job.keepFiles``).
        """
        try:
            self.removePreview(job)
            if job.process is None:
                raise EngineError("The engine was not started")
            job.process.raiseForState()
            return self.loadOutputs(job)
        finally:
            if not job.keepFiles:
                shutil.rmtree(job.workDir, ignore_errors=True)

    def runJob(self, job: EngineJob, timeoutS: float | None = None,
               onProgress: Callable[[ProgressEvent], None] | None = None):
        """Run a prepared job to the end (blocking) and return its outputs."""
        try:
            self.start(job, onProgress=onProgress)
            job.process.wait(timeoutS=timeoutS)
        except BaseException:
            self.cancel(job)
            shutil.rmtree(job.workDir, ignore_errors=True)
            raise
        return self.finish(job)

    @staticmethod
    def outputPath(job: EngineJob, key: str, fileName: str) -> Path | None:
        """Engine output ``key`` of its ``done`` event, else ``fileName`` in the output folder, else ``None``."""
        outputs = job.process.outputs if job.process is not None else {}
        if key in outputs and Path(outputs[key]).is_file():
            return Path(outputs[key])
        path = job.outputDir / fileName
        return path if path.is_file() else None
