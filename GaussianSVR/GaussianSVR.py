"""GaussianSVR: fetal slice-to-volume reconstruction with explicit 3D Gaussians (3D Slicer module).

The widget only binds the GUI; the work is in ``GaussianSVRLib`` (console API:
``GaussianSVRLogic().run(stacks=[...])``), and the fit runs in a separate ``PythonSlicer`` process
polled by a ``qt.QTimer``.
"""

import logging
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
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

from GaussianSVRLib import (
    EngineCancelled,
    GaussianSVRLogic as _Logic,
    JobState,
    SVRParameters,
    detectDevices,
)
from GaussianSVRLib import nodes as _nodes
from GaussianSVRLib.dependencies import DependencyError, installMissingPackages, missingPackages


class GaussianSVR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Gaussian SVR")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = []
        self.parent.contributors = ["GaussianMRI developers"]
        self.parent.helpText = _(
            "Reconstructs a 3D volume from several stacks of 2D slices (fetal MRI) with explicit 3D Gaussians, "
            "correcting motion per stack or per slice. Add the stacks (and optional brain masks), choose the "
            "options and click Apply; the fit runs in a separate process and can be cancelled. "
            "Outputs are created in a subject-hierarchy folder named after the inputs."
        )
        self.parent.acknowledgementText = _(
            "Based on Gaussian primitives for fast slice-to-volume reconstruction (Dannecker et al., MIDL 2026). "
            "Part of the GaussianMRI extension."
        )


@parameterNodeWrapper
class GaussianSVRParameterNode:
    """Options of the panel (the stack rows are kept by the widget)."""

    resolutionMm: Annotated[float, WithinRange(0.1, 5.0)] = 0.8
    psfInPlane: Annotated[float, WithinRange(0.1, 5.0)] = 1.2
    psfThrough: Annotated[float, WithinRange(0.1, 5.0)] = 1.0
    motion: Annotated[str, Choice(["none", "stack", "slice"])] = "slice"
    robust: bool = True
    stackAlignment: bool = True
    biasField: bool = False
    preset: Annotated[str, Choice(["fast", "standard", "quality"])] = "fast"
    nGaussians: Annotated[int, WithinRange(0, 50000000)] = 0
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    maps: bool = False
    loadGaussians: bool = False
    keepFiles: bool = False
    device: str = "auto"
    outputVolume: vtkMRMLScalarVolumeNode


class GaussianSVRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: stack table, options, Apply/Cancel with progress and a live preview."""

    POLL_INTERVAL_MS = 250

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._previewShown = False
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GaussianSVR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GaussianSVRLogic(logCallback=self.onEngineLog)

        self.ui.stacksTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.stacksTable.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.Stretch)
        self.ui.stacksTable.horizontalHeader().setSectionResizeMode(1, qt.QHeaderView.Stretch)
        self.ui.progressBar.hide()
        self.ui.deviceComboBox.clear()
        for value, label in detectDevices():
            self.ui.deviceComboBox.addItem(label, value)

        self.ui.addStackButton.connect("clicked(bool)", lambda _checked: self.addStackRow())
        self.ui.removeStackButton.connect("clicked(bool)", self.onRemoveStacks)
        self.ui.addAllStacksButton.connect("clicked(bool)", self.onAddAllStacks)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        if self.ui.stacksTable.rowCount == 0:
            self.addStackRow()

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
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
        self.updateApplyButton()

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # ------------------------------------------------------------------ stack rows
    def addStackRow(self, volumeNode=None) -> None:
        table = self.ui.stacksTable
        row = table.rowCount
        table.insertRow(row)
        stackSelector = slicer.qMRMLNodeComboBox()
        stackSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        stackSelector.hideChildNodeTypes = ["vtkMRMLLabelMapVolumeNode", "vtkMRMLDiffusionTensorVolumeNode"]
        stackSelector.noneEnabled = True
        stackSelector.addEnabled = False
        stackSelector.removeEnabled = False
        stackSelector.setMRMLScene(slicer.mrmlScene)
        stackSelector.setCurrentNode(volumeNode)
        maskSelector = slicer.qMRMLNodeComboBox()
        maskSelector.nodeTypes = ["vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode"]
        maskSelector.noneEnabled = True
        maskSelector.addEnabled = False
        maskSelector.removeEnabled = False
        maskSelector.setMRMLScene(slicer.mrmlScene)
        maskSelector.setCurrentNode(None)
        thickness = qt.QDoubleSpinBox()
        thickness.setRange(0.1, 20.0)
        thickness.setDecimals(2)
        thickness.setSuffix(" mm")
        table.setCellWidget(row, 0, stackSelector)
        table.setCellWidget(row, 1, maskSelector)
        table.setCellWidget(row, 2, thickness)
        stackSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node, spin=thickness: self.onStackChanged(node, spin))
        self.onStackChanged(volumeNode, thickness)

    def onStackChanged(self, node, thicknessSpinBox) -> None:
        if node is not None:
            thicknessSpinBox.setValue(_nodes.sliceThicknessMm(node))
        self.updateReferenceChoices()
        self.updateApplyButton()

    def onRemoveStacks(self) -> None:
        rows = sorted({index.row() for index in self.ui.stacksTable.selectedIndexes()}, reverse=True)
        if not rows and self.ui.stacksTable.rowCount:
            rows = [self.ui.stacksTable.rowCount - 1]
        for row in rows:
            self.ui.stacksTable.removeRow(row)
        self.updateReferenceChoices()
        self.updateApplyButton()

    def onAddAllStacks(self) -> None:
        listed = {node.GetID() for node, _mask, _t in self.stackRows() if node is not None}
        for row in reversed(range(self.ui.stacksTable.rowCount)):
            if self.ui.stacksTable.cellWidget(row, 0).currentNode() is None:
                self.ui.stacksTable.removeRow(row)
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLDiffusionTensorVolumeNode"):
                continue
            if node.GetID() not in listed and node.GetAttribute("GaussianMRI.Preview") is None:
                self.addStackRow(node)

    def stackRows(self) -> list:
        """``[(stackNode, maskNode or None, thickness mm)]`` for every row."""
        rows = []
        for row in range(self.ui.stacksTable.rowCount):
            rows.append((
                self.ui.stacksTable.cellWidget(row, 0).currentNode(),
                self.ui.stacksTable.cellWidget(row, 1).currentNode(),
                self.ui.stacksTable.cellWidget(row, 2).value,
            ))
        return rows

    def updateReferenceChoices(self) -> None:
        combo = self.ui.referenceStackComboBox
        current = combo.currentIndex
        combo.clear()
        combo.addItem(_("Automatic"), -1)
        for index, (node, _mask, _t) in enumerate(self.stackRows()):
            if node is not None:
                combo.addItem(f"{index + 1}: {node.GetName()}", index)
        combo.setCurrentIndex(current if 0 <= current < combo.count else 0)

    def updateApplyButton(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the reconstruction; the scene is left as it was")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        hasStack = any(node is not None for node, _mask, _t in self.stackRows())
        self.ui.applyButton.enabled = hasStack
        self.ui.applyButton.toolTip = _("Reconstruct") if hasStack else _("Select at least one input stack")

    # ------------------------------------------------------------------ running
    def parameters(self) -> SVRParameters:
        p = self._parameterNode
        return SVRParameters(
            resolutionMm=p.resolutionMm, psfInPlane=p.psfInPlane, psfThrough=p.psfThrough, motion=p.motion,
            robust=p.robust, stackAlignment=p.stackAlignment, biasField=p.biasField, preset=p.preset, nGaussians=p.nGaussians,
            iterations=p.iterations, device=p.device, seed=p.seed, maps=p.maps, loadGaussians=p.loadGaussians,
            referenceStack=-1,
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
            rows = [(node, mask, t) for node, mask, t in self.stackRows() if node is not None]
            parameters = self.parameters()
            chosen = self.ui.referenceStackComboBox.currentData
            if chosen is not None and chosen >= 0:
                listed = [r for r, (node, _m, _t) in enumerate(self.stackRows()) if node is not None]
                parameters.referenceStack = listed.index(chosen) if chosen in listed else -1
            job = self.logic.prepare(
                stacks=[r[0] for r in rows], masks=[r[1] for r in rows], thicknesses=[r[2] for r in rows],
                parameters=parameters,
            )
            job.keepFiles = self._parameterNode.keepFiles
            self._job = job
            self._previewShown = False
            self.logic.start(job, onProgress=self.onProgress)
            self._timer.start()
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting the engine...")
            self.updateApplyButton()

    def onProgress(self, progress) -> None:
        self.ui.progressBar.setValue(int(round(100 * progress.fraction)))
        self.ui.statusLabel.text = progress.describe()

    def onEngineLog(self, line: str) -> None:
        logging.info("GaussianSVR engine: %s", line)

    def onPollTimer(self) -> None:
        job = self._job
        if job is None or job.process is None:
            self._timer.stop()
            return
        state = job.process.poll()
        if job.previewNode is not None and not self._previewShown:
            slicer.util.setSliceViewerLayers(background=job.previewNode, fit=True)
            self._previewShown = True
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
            self._parameterNode.outputVolume = outputs.volume
            slicer.util.setSliceViewerLayers(background=outputs.volume, fit=True)
            elapsed = job.process.elapsedS
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s: {name}").format(seconds=elapsed, name=outputs.volume.GetName())
        self.updateApplyButton()

    def cancelRun(self) -> None:
        if self._job is not None:
            self.logic.cancel(self._job)
            self.onPollTimer()


class GaussianSVRLogic(ScriptedLoadableModuleLogic, _Logic):
    """Module logic = the console API of ``GaussianSVRLib`` plus the parameter node."""

    def __init__(self, enginePrefix=None, logCallback=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _Logic.__init__(self, enginePrefix=enginePrefix, logCallback=logCallback)

    def getParameterNode(self):
        return GaussianSVRParameterNode(super().getParameterNode())


class GaussianSVRTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: a tiny real reconstruction from two synthetic stacks (CPU, fast preset)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GaussianSVR_small()

    def _stack(self, name, axis):
        import numpy as np

        z, y, x = np.mgrid[-1:1:24j, -1:1:24j, -1:1:24j]
        phantom = (100.0 * ((x**2 + y**2 / 0.8 + z**2 / 0.6) < 0.5)).astype(np.float32)
        spacing = [2.0, 2.0, 2.0]
        spacing[axis] = 6.0
        step = 3
        slicing = [slice(None)] * 3
        slicing[2 - axis] = slice(None, None, step)
        data = np.ascontiguousarray(phantom[tuple(slicing)])
        ijkToRas = np.diag(spacing + [1.0])
        ijkToRas[:3, 3] = -24.0
        return slicer.util.addVolumeFromArray(data, ijkToRas, name)

    def test_GaussianSVR_small(self):
        self.delayDisplay("Starting a small GaussianSVR reconstruction")
        stacks = [self._stack("axial", 2), self._stack("coronal", 1)]
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        logic = GaussianSVRLogic()
        outputs = logic.run(stacks=stacks, preset="fast", iterations=20, resolutionMm=2.0, device="cpu",
                            motion="none", timeoutS=600)
        self.assertIsNotNone(outputs.volume)
        # one row per slice the engine used (slices outside the automatic mask are left out)
        self.assertGreater(outputs.table.GetNumberOfRows(), 0)
        self.assertLessEqual(outputs.table.GetNumberOfRows(), sum(s.GetImageData().GetDimensions()[2] for s in stacks))
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        array = slicer.util.arrayFromVolume(outputs.volume)
        self.assertGreater(float(array.max()), 10.0)
        with self.assertRaises(ValueError):
            logic.run(stacks=[])
        self.delayDisplay("Test passed")
