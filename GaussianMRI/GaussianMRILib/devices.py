"""Compute devices for the panels' device selector, found by the engine process.

The GUI process never imports torch (importing it there initialises CUDA inside Slicer, costs seconds
and hundreds of MB, and ties the GUI to the installed torch build). The panels start
``python -m gaussian_mri devices --json`` once in the background and fill the selector when it
answers; until then (or when torch is not installed yet) they offer "Automatic" and "CPU".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from .engine import engineCommandPrefix, engineEnvironment
from .process import EngineProcess, JobState

__all__ = ["FALLBACK_DEVICES", "parseDevices", "DeviceDiscovery", "detectDevices"]

#: ``[(value, label)]`` before the engine answered.
FALLBACK_DEVICES = [("auto", "Automatic"), ("cpu", "CPU")]


def parseDevices(payload: dict) -> list[tuple[str, str]]:
    """``[(value, label)]`` from the JSON object of ``gaussian_mri devices --json``."""
    devices = payload.get("devices") if isinstance(payload, dict) else None
    if not isinstance(devices, list) or not devices:
        raise ValueError(f"Not a device list: {payload!r}")
    out = []
    for entry in devices:
        value, label = str(entry.get("value", "")), str(entry.get("label", ""))
        if not value or not label:
            raise ValueError(f"Device entry without value/label: {entry!r}")
        out.append((value, label))
    return out


class DeviceDiscovery:
    """One background run of ``gaussian_mri devices --json``; poll it from a timer (or :meth:`wait`).

    :param onDone: called once with ``[(value, label)]`` (the fallback list when the engine failed,
        e.g. torch not installed yet; ``error`` then says why).
    """

    def __init__(self, onDone: Callable[[list[tuple[str, str]]], None] | None = None,
                 enginePrefix: Sequence[str] | None = None):
        self.onDone = onDone
        self.devices: list[tuple[str, str]] | None = None
        self.error = ""
        self.payload: dict = {}
        self._lines: list[str] = []
        self.process = EngineProcess(
            command=[*engineCommandPrefix(enginePrefix), "devices", "--json"],
            onLog=self._lines.append, env=engineEnvironment(),
        )

    def start(self) -> DeviceDiscovery:
        self.process.start()
        return self

    def poll(self) -> bool:
        """Handle the output so far; ``True`` once finished (``devices`` is then set)."""
        if self.devices is not None:
            return True
        if self.process.poll() == JobState.RUNNING:
            return False
        self._finish()
        return True

    def wait(self, timeoutS: float = 120.0) -> list[tuple[str, str]]:
        try:
            self.process.wait(timeoutS=timeoutS)
        except TimeoutError as exc:
            self.error = str(exc)
        self._finish()
        return self.devices

    def cancel(self) -> None:
        self.process.cancel()

    def _finish(self) -> None:
        if self.devices is not None:
            return
        devices = None
        for line in self._lines:
            if line.startswith("{"):
                try:
                    self.payload = json.loads(line)
                    devices = parseDevices(self.payload)
                except ValueError:
                    continue
        if devices is None:
            self.error = self.error or self.process.errorMessage or "\n".join(self._lines[-5:])
            logging.info("GaussianMRI: device discovery failed (%s); offering CPU only", self.error.strip()[:300])
            devices = list(FALLBACK_DEVICES)
        self.devices = devices
        if self.onDone:
            self.onDone(devices)


def detectDevices(timeoutS: float = 120.0, enginePrefix: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Blocking device discovery (console, tests): ``[(value, label)]``, e.g. ``("cuda:0", "GPU 0: ...")``."""
    return DeviceDiscovery(enginePrefix=enginePrefix).start().wait(timeoutS)
