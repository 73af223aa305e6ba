"""GaussianCine: undersampled cardiac cine reconstruction with dynamic 2D Gaussians (3D Slicer module).

The widget only binds the GUI; the work is in ``GaussianCineLib`` (console API:
``GaussianCineLogic().run(cine=..., maskType="gro", acceleration=8)``); the fit runs in a separate
``PythonSlicer`` process polled by a ``qt.QTimer``.
"""

import logging
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from GaussianCineLib import CineParameters, GaussianCineLogic as _Logic
from GaussianSVRLib import EngineCancelled, JobState, detectDevices
from GaussianSVRLib.dependencies import DependencyError, installMissingPackages, missingPackages


class GaussianCine(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Gaussian Cine")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = ["GaussianSVR", "Sequences"]  # shares GaussianSVRLib and the bundled engine
        self.parent.contributors = ["GaussianMRI developers"]
        self.parent.helpText = _(
            "Reconstructs an undersampled 2D cardiac cine with dynamic 2D Gaussians. Input: a k-space file, or a "
            "cine in the scene (Sequence of 2D frames or a 2D+t volume) undersampled retrospectively with the chosen "
            "mask and acceleration, which also gives L+S and zero-filled baselines, error sequences and SSIM/PSNR/NRMSE. "
            "Outputs are Sequences with one Sequence Browser, in a subject-hierarchy folder."
        )
        self.parent.acknowledgementText = _("Part of the GaussianMRI extension.")


@parameterNodeWrapper
class GaussianCineParameterNode:
    cine: vtkMRMLNode
    framesAlongK: bool = False
    axes: str = "frames,coils,ky,kx"
    maskType: Annotated[str, Choice(["gro", "uniform", "random"])] = "gro"
    acceleration: Annotated[float, WithinRange(1.0, 32.0)] = 8.0
    nGaussians: Annotated[int, WithinRange(0, 10000000)] = 0
    steps: Annotated[int, WithinRange(0, 1000000)] = 0
    lambdaMu: Annotated[float, WithinRange(0.0, 1.0)] = 1e-3
    lambdaC: Annotated[float, WithinRange(0.0, 1.0)] = 1e-3
    srFactor: Annotated[int, WithinRange(1, 4)] = 1
    baselines: bool = True
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: str = "auto"


class GaussianCineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_INTERVAL_MS = 250

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GaussianCine.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GaussianCineLogic(logCallback=lambda line: logging.info("GaussianCine engine: %s", line))
        self.ui.progressBar.hide()
        self.ui.deviceComboBox.clear()
        for value, label in detectDevices():
            self.ui.deviceComboBox.addItem(label, value)
        self.ui.kspacePathLineEdit.settingKey = "GaussianCine/kspaceFile"
        self.ui.coilMapsPathLineEdit.settingKey = "GaussianCine/coilMapsFile"

        self.ui.kspaceRadioButton.connect("toggled(bool)", self.updateInputMode)
        self.ui.sceneCineRadioButton.connect("toggled(bool)", self.updateInputMode)
        self.ui.kspacePathLineEdit.connect("currentPathChanged(QString)", lambda _path: self.updateApplyButton())
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.updateInputMode()

    def cleanup(self) -> None:
        self.cancelRun()
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
            self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(self._parameterNode.device), 0))
        self.updateApplyButton()

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def updateInputMode(self, _checked=None) -> None:
        prospective = self.ui.kspaceRadioButton.checked
        for widget in (self.ui.kspacePathLineEdit, self.ui.axesLineEdit):
            widget.enabled = prospective
        for widget in (self.ui.cineNodeComboBox, self.ui.framesAlongKCheckBox, self.ui.maskTypeComboBox,
                       self.ui.accelerationSpinBox, self.ui.baselinesCheckBox):
            widget.enabled = not prospective
        self.updateApplyButton()

    def updateApplyButton(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        if self.ui.kspaceRadioButton.checked:
            ready = bool(self.ui.kspacePathLineEdit.currentPath)
        else:
            ready = self._parameterNode is not None and self._parameterNode.cine is not None
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Reconstruct") if ready else _("Select the input k-space file or cine")

    def parameters(self) -> CineParameters:
        p = self._parameterNode
        return CineParameters(
            maskType=p.maskType, acceleration=p.acceleration, axes=p.axes, nGaussians=p.nGaussians, steps=p.steps,
            lambdaMu=p.lambdaMu, lambdaC=p.lambdaC, srFactor=p.srFactor, device=p.device, seed=p.seed,
            baselines=p.baselines,
        )

    def onApplyButton(self) -> None:
        if self._job is not None:
            self.cancelRun()
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the reconstruction."), waitCursor=True):
            if missingPackages():
                try:
                    installMissingPackages(interactive=True)
                except DependencyError as exc:
                    if exc.restartRequired:
                        slicer.util.infoDisplay(_("Please restart Slicer to finish the installation."))
                    raise
            coilMaps = self.ui.coilMapsPathLineEdit.currentPath or None
            if self.ui.kspaceRadioButton.checked:
                self.ui.kspacePathLineEdit.addCurrentPathToHistory()
                job = self.logic.prepare(kspaceFile=self.ui.kspacePathLineEdit.currentPath, coilMapsFile=coilMaps,
                                         parameters=self.parameters())
            else:
                job = self.logic.prepare(cine=self._parameterNode.cine, framesAlongK=self._parameterNode.framesAlongK,
                                         coilMapsFile=coilMaps, parameters=self.parameters())
            self._job = job
            self.logic.start(job, onProgress=self.onProgress)
            self._timer.start()
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting the engine...")
            self.updateApplyButton()

    def onProgress(self, progress) -> None:
        self.ui.progressBar.setValue(int(round(100 * progress.fraction)))
        self.ui.statusLabel.text = progress.describe()

    def onPollTimer(self) -> None:
        job = self._job
        if job is None or job.process is None:
            self._timer.stop()
            return
        if job.process.poll() == JobState.RUNNING:
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
            proxy = outputs.browser.GetProxyNode(outputs.recon)
            if proxy is not None:
                slicer.util.setSliceViewerLayers(background=proxy, fit=True)
            slicer.modules.sequences.toolBar().setActiveBrowserNode(outputs.browser)
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s").format(seconds=job.process.elapsedS)
        self.updateApplyButton()

    def cancelRun(self) -> None:
        if self._job is not None:
            self.logic.cancel(self._job)
            self.onPollTimer()


class GaussianCineLogic(ScriptedLoadableModuleLogic, _Logic):
    """Module logic = the console API of ``GaussianCineLib`` plus the parameter node."""

    def __init__(self, enginePrefix=None, logCallback=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _Logic.__init__(self, enginePrefix=enginePrefix, logCallback=logCallback)

    def getParameterNode(self):
        return GaussianCineParameterNode(super().getParameterNode())


class GaussianCineTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: retrospective reconstruction of a tiny synthetic cine (CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GaussianCine_small()

    def test_GaussianCine_small(self):
        import numpy as np

        from GaussianCineLib import addCineSequence

        self.delayDisplay("Starting a small GaussianCine reconstruction")
        t, y, x = np.meshgrid(np.arange(8), np.arange(32), np.arange(32), indexing="ij")
        radius = 8 + 2 * np.sin(2 * np.pi * t / 8)
        frames = (100.0 * (((x - 16) ** 2 + (y - 16) ** 2) < radius**2)).astype(np.float32)
        cine = addCineSequence(frames, np.diag([1.5, 1.5, 8.0, 1.0]), "phantom cine", frameMs=40.0)
        outputs = GaussianCineLogic().run(cine=cine, maskType="uniform", acceleration=2, steps=50, device="cpu",
                                          timeoutS=600)
        self.assertEqual(outputs.recon.GetNumberOfDataNodes(), 8)
        self.assertIsNotNone(outputs.browser.GetProxyNode(outputs.recon))
        with self.assertRaises(ValueError):
            GaussianCineLogic().run(cine=slicer.util.addVolumeFromArray(frames))  # 3D volume, not a cine
        self.delayDisplay("Test passed")
