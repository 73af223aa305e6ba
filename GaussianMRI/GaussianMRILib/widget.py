"""Panel base class shared by the GaussianSVR and GaussianCine widgets (Qt: Slicer application only).

A module widget subclasses :class:`EngineModuleWidget` and implements:

* ``createLogic()``: the module logic (an :class:`GaussianMRILib.logic.EngineLogic` with a parameter node);
* ``inputProblem()``: ``None`` when Apply can run, else the tooltip that says what is missing;
* ``prepareJob()``: the prepared job (inputs checked and written, command built);
* ``showOutputs(job, outputs)``: what to show when the run succeeded (returns a status text).

The base class binds the parameter node to the ``.ui`` (``SlicerParameterName`` properties), runs
one job at a time with a progress bar and a Cancel button (a ``qt.QTimer`` polls the engine process,
so the GUI never blocks), fills the device selector from the engine process (no torch in the GUI),
and installs missing packages after asking. The ``.ui`` of each module must have ``applyButton``,
``progressBar``, ``statusLabel`` and ``deviceComboBox``.
"""

from __future__ import annotations

import logging
import shutil

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from .dependencies import DependencyError, checkSlicerVersion, installMissingPackages, missingRequirements
from .devices import FALLBACK_DEVICES, DeviceDiscovery
from .process import EngineCancelled, JobState

__all__ = ["EngineModuleWidget"]


class EngineModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Common life cycle of the GaussianMRI panels (see the module docstring)."""

    POLL_INTERVAL_MS = 250

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._deviceDiscovery = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollTimer)

    # ------------------------------------------------------------------ to implement
    def createLogic(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def inputProblem(self) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepareJob(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def showOutputs(self, job, outputs) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ set-up
    def setupCommon(self, uiFileName: str) -> None:
        """Load the ``.ui``, create the logic, start device discovery, connect Apply and the scene."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{uiFileName}"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        self.ui.progressBar.hide()
        self.setDevices([(value, label + (_(" (looking for GPUs...)") if value == "auto" else ""))
                         for value, label in FALLBACK_DEVICES])
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.startDeviceDiscovery()

    def startDeviceDiscovery(self) -> None:
        """Ask the engine process for the devices (torch is imported there, never in the GUI).

        Without torch the engine still answers (Automatic and CPU); it is asked again after an install.
        """
        if self._deviceDiscovery is not None and not self._deviceDiscovery.poll():
            self._deviceDiscovery.cancel()
        try:
            self._deviceDiscovery = DeviceDiscovery(onDone=lambda devices: self.setDevices(devices, final=True)).start()
        except Exception as exc:  # the engine could not start: keep the fallback list
            logging.warning("GaussianMRI: device discovery could not start: %s", exc)
            return
        if getattr(self, "_deviceTimer", None) is None:  # one timer, restarted by a later discovery
            self._deviceTimer = qt.QTimer()
            self._deviceTimer.setInterval(self.POLL_INTERVAL_MS)
            self._deviceTimer.connect("timeout()", self._pollDeviceDiscovery)
        self._deviceTimer.start()

    def _pollDeviceDiscovery(self) -> None:
        if self._deviceDiscovery is None or self._deviceDiscovery.poll():
            self._deviceTimer.stop()

    def setDevices(self, devices, final: bool = False) -> None:
        """Fill the device selector with ``[(value, label)]`` and keep the parameter node's choice.

        ``final``: the list comes from device discovery. Only then does a saved device that is not
        offered (e.g. ``cuda:1`` in a scene from another machine) become the first entry, Automatic, in
        the parameter node too; the placeholder list shown while discovery runs never overwrites it.
        """
        self._devicesFinal = final
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for value, label in devices:
            combo.addItem(label, value)
        combo.blockSignals(wasBlocked)
        self._selectParameterNodeDevice()

    def _selectParameterNodeDevice(self) -> None:
        if not self._parameterNode:
            return
        combo = self.ui.deviceComboBox
        index = combo.findData(self._parameterNode.device)
        combo.setCurrentIndex(max(index, 0))
        if index < 0 and combo.count > 0 and getattr(self, "_devicesFinal", False):
            self._parameterNode.device = combo.itemData(0) or "auto"

    def cleanup(self) -> None:
        self.cancelRun()
        if getattr(self, "_deviceTimer", None) is not None:
            self._deviceTimer.stop()
        if self._deviceDiscovery is not None:
            self._deviceDiscovery.onDone = None
            self._deviceDiscovery.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateApplyButton)
            self._selectParameterNodeDevice()
        self.updateApplyButton()

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # ------------------------------------------------------------------ running
    def updateApplyButton(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the reconstruction; the scene is left as it was")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        problem = self.inputProblem() if self._parameterNode is not None else _("No parameter node")
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = _("Reconstruct") if problem is None else problem

    def onApplyButton(self) -> None:
        if self._job is not None:
            self.cancelRun()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the reconstruction."), waitCursor=True):
            checkSlicerVersion()
            if missingRequirements():
                try:
                    installMissingPackages(interactive=True)
                except DependencyError as exc:
                    if exc.restartRequired:
                        slicer.util.infoDisplay(_("Please restart Slicer to finish the installation."))
                    raise
                self.startDeviceDiscovery()
            job = self.prepareJob()
            try:
                self.logic.start(job, onProgress=self.onProgress)
            except BaseException:
                self.logic.cancel(job)
                shutil.rmtree(job.workDir, ignore_errors=True)
                raise
            self._job = job
            self._timer.start()
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting the engine...")
            self.updateApplyButton()

    def onProgress(self, progress) -> None:
        self.ui.progressBar.setValue(int(round(100 * progress.fraction)))
        self.ui.statusLabel.text = progress.describe()

    def onJobPolled(self, job) -> None:
        """Called on every poll while the job runs (e.g. to show a preview)."""

    def onPollTimer(self) -> None:
        job = self._job
        if job is None or job.process is None:
            self._timer.stop()
            return
        state = job.process.poll()
        self.onJobPolled(job)
        if state == JobState.RUNNING:
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.hide()
        try:
            outputs = self.logic.finish(job)
        except EngineCancelled:
            self.ui.statusLabel.text = _("Cancelled: the scene was left unchanged.")
        except Exception as exc:
            self.ui.statusLabel.text = _("Failed: the scene was left unchanged.")
            slicer.util.errorDisplay(_("Reconstruction failed: {error}").format(error=exc), detailedText="\n".join(job.log[-50:]))
        else:
            self.ui.statusLabel.text = self.showOutputs(job, outputs)
        self.updateApplyButton()

    def cancelRun(self) -> None:
        if self._job is not None:
            self.logic.cancel(self._job)
            self.onPollTimer()
