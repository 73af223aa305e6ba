"""GaussianCine: undersampled cardiac cine reconstruction with dynamic 2D Gaussians (3D Slicer module).

The widget only binds the GUI; the work is in ``GaussianCineLib`` (console API:
``GaussianCineLogic().run(cine=..., maskType="gro", acceleration=8)``); the fit runs in a separate
``PythonSlicer`` process polled by a ``qt.QTimer``.
"""

import logging
from typing import Annotated, Union

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSequenceBrowserNode, vtkMRMLSequenceNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from GaussianMRILib.widget import EngineModuleWidget
from GaussianCineLib import CineParameters
from GaussianCineLib import GaussianCineLogic as _Logic


class GaussianCine(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Gaussian Cine")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = ["GaussianMRI", "Sequences"]  # the shared library and the bundled engine
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
    # the node types of the input selector (the parameter-node connector sets them from this annotation):
    # a Sequence of 2D frames or its browser, or a 2D+t volume (vector volume, or scalar with frames along k)
    cine: Union[vtkMRMLSequenceNode, vtkMRMLSequenceBrowserNode, vtkMRMLScalarVolumeNode]
    framesAlongK: bool = False
    axes: str = "frames,coils,ky,kx"
    maskType: Annotated[str, Choice(["gro", "uniform", "random"])] = "gro"
    acceleration: Annotated[float, WithinRange(1.0, 32.0)] = 8.0
    nGaussians: Annotated[int, WithinRange(0, 10000000)] = 0
    steps: Annotated[int, WithinRange(0, 1000000)] = 0
    lambdaMu: Annotated[float, WithinRange(0.0, 1.0)] = 2e-3
    lambdaC: Annotated[float, WithinRange(0.0, 1.0)] = 2e-3
    srFactor: Annotated[int, WithinRange(1, 4)] = 1
    baselines: bool = True
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    device: str = "auto"  # filled from the engine's device list, not bound to the .ui (set by the widget)


class GaussianCineWidget(EngineModuleWidget):
    """Panel: k-space file or scene cine, options, Apply/Cancel with progress."""

    def createLogic(self):
        return GaussianCineLogic(logCallback=lambda line: logging.info("GaussianCine engine: %s", line))

    def setup(self) -> None:
        self.setupCommon("GaussianCine.ui")
        self.ui.kspacePathLineEdit.settingKey = "GaussianCine/kspaceFile"
        self.ui.coilMapsPathLineEdit.settingKey = "GaussianCine/coilMapsFile"
        self.ui.kspaceRadioButton.connect("toggled(bool)", self.updateInputMode)
        self.ui.sceneCineRadioButton.connect("toggled(bool)", self.updateInputMode)
        self.ui.kspacePathLineEdit.connect("currentPathChanged(QString)", lambda _path: self.updateApplyButton())
        self.initializeParameterNode()
        self.updateInputMode()

    def updateInputMode(self, _checked=None) -> None:
        prospective = self.ui.kspaceRadioButton.checked
        for widget in (self.ui.kspacePathLineEdit, self.ui.axesLineEdit):
            widget.enabled = prospective
        for widget in (self.ui.cineNodeComboBox, self.ui.framesAlongKCheckBox, self.ui.maskTypeComboBox,
                       self.ui.accelerationSpinBox, self.ui.baselinesCheckBox):
            widget.enabled = not prospective
        self.updateApplyButton()

    def inputProblem(self):
        if self.ui.kspaceRadioButton.checked:
            ready = bool(self.ui.kspacePathLineEdit.currentPath)
        else:
            ready = self._parameterNode.cine is not None
        return None if ready else _("Select the input k-space file or cine")

    def parameters(self) -> CineParameters:
        p = self._parameterNode
        return CineParameters(
            maskType=p.maskType, acceleration=p.acceleration, axes=p.axes, nGaussians=p.nGaussians, steps=p.steps,
            lambdaMu=p.lambdaMu, lambdaC=p.lambdaC, srFactor=p.srFactor, device=p.device, seed=p.seed,
            baselines=p.baselines,
        )

    def prepareJob(self):
        coilMaps = self.ui.coilMapsPathLineEdit.currentPath or None
        if self.ui.kspaceRadioButton.checked:
            self.ui.kspacePathLineEdit.addCurrentPathToHistory()
            return self.logic.prepare(kspaceFile=self.ui.kspacePathLineEdit.currentPath, coilMapsFile=coilMaps,
                                      parameters=self.parameters())
        return self.logic.prepare(cine=self._parameterNode.cine, framesAlongK=self._parameterNode.framesAlongK,
                                  coilMapsFile=coilMaps, parameters=self.parameters())

    def showOutputs(self, job, outputs) -> str:
        proxy = outputs.browser.GetProxyNode(outputs.recon)
        if proxy is not None:
            slicer.util.setSliceViewerLayers(background=proxy, fit=True)
        slicer.modules.sequences.toolBar().setActiveBrowserNode(outputs.browser)
        return _("Done in {seconds:.0f} s").format(seconds=job.process.elapsedS)


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
