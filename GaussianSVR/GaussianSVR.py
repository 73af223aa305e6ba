"""GaussianSVR: fetal slice-to-volume reconstruction with explicit 3D Gaussians (3D Slicer module).

The widget only binds the GUI; the work is in ``GaussianSVRLib`` (console API:
``GaussianSVRLogic().run(stacks=[...])``), and the fit runs in a separate ``PythonSlicer`` process
polled by a ``qt.QTimer``. The shared panel life cycle, engine process and node helpers are in the
hidden GaussianMRI module (``GaussianMRILib``).
"""

import logging
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)

from GaussianMRILib import nodes as _nodes
from GaussianMRILib.widget import EngineModuleWidget
from GaussianSVRLib import GaussianSVRLogic as _Logic
from GaussianSVRLib import SVRParameters, panelMasks


#: how the panel names the source of each slice thickness (GaussianMRILib.nodes.THICKNESS_SOURCES)
THICKNESS_LABELS = {"attribute": "node attribute", "DICOM": "DICOM", "header": "file header", "spacing": "slice spacing"}


class GaussianSVR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Gaussian SVR")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = ["GaussianMRI"]  # the shared library and the bundled engine
        self.parent.contributors = ["GaussianMRI developers"]
        self.parent.helpText = _(
            "Reconstructs a 3D volume from several stacks of 2D slices (fetal MRI) with explicit 3D Gaussians, "
            "correcting motion per stack or per slice. Add the stacks (volumes from files or from the DICOM "
            "database) and optional brain masks: one per stack, or only one on the reference stack, which is "
            "propagated to the other stacks through the stack alignment (as SVRTK's -mask). Choose the "
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
    severeMotion: bool = False
    noiseAware: bool = True
    preset: Annotated[str, Choice(["fast", "standard", "quality"])] = "fast"
    nGaussians: Annotated[int, WithinRange(0, 50000000)] = 0
    iterations: Annotated[int, WithinRange(0, 1000000)] = 0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    maps: bool = False
    loadGaussians: bool = False
    keepFiles: bool = False
    device: str = "auto"  # filled from the engine's device list, not bound to the .ui (set by the widget)
    outputVolume: vtkMRMLScalarVolumeNode


class GaussianSVRWidget(EngineModuleWidget):
    """Panel: stack table, options, Apply/Cancel with progress and a live preview."""

    def __init__(self, parent=None) -> None:
        EngineModuleWidget.__init__(self, parent)
        self._previewShown = False

    def createLogic(self):
        return GaussianSVRLogic(logCallback=lambda line: logging.info("GaussianSVR engine: %s", line))

    def setup(self) -> None:
        self.setupCommon("GaussianSVR.ui")
        self.ui.stacksTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.stacksTable.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.Stretch)
        self.ui.stacksTable.horizontalHeader().setSectionResizeMode(1, qt.QHeaderView.Stretch)
        self.ui.addStackButton.connect("clicked(bool)", lambda _checked: self.addStackRow())
        self.ui.removeStackButton.connect("clicked(bool)", self.onRemoveStacks)
        self.ui.addAllStacksButton.connect("clicked(bool)", self.onAddAllStacks)
        self.initializeParameterNode()
        if self.ui.stacksTable.rowCount == 0:
            self.addStackRow()

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
        source = qt.QTableWidgetItem("")
        source.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable)  # shown, not edited
        table.setCellWidget(row, 0, stackSelector)
        table.setCellWidget(row, 1, maskSelector)
        table.setCellWidget(row, 2, thickness)
        table.setItem(row, 3, source)
        stackSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                              lambda node, spin=thickness, item=source: self.onStackChanged(node, spin, item))
        thickness.connect("valueChanged(double)", lambda _value, spin=thickness, item=source: self.onThicknessEdited(spin, item))
        self.onStackChanged(volumeNode, thickness, source)

    def onStackChanged(self, node, thicknessSpinBox, sourceItem) -> None:
        if node is not None:
            value, source = _nodes.sliceThicknessWithSource(node)
            wasBlocked = thicknessSpinBox.blockSignals(True)
            thicknessSpinBox.setValue(value)
            thicknessSpinBox.blockSignals(wasBlocked)
            sourceItem.setText(_(THICKNESS_LABELS[source]))
            sourceItem.setToolTip(_nodes.THICKNESS_SOURCES[source])
            thicknessSpinBox.toolTip = _("Slice thickness, from: {source}").format(source=_nodes.THICKNESS_SOURCES[source])
        else:
            sourceItem.setText("")
        self.updateReferenceChoices()
        self.updateApplyButton()

    def onThicknessEdited(self, thicknessSpinBox, sourceItem) -> None:
        sourceItem.setText(_("edited"))
        sourceItem.setToolTip(_("Set in this panel"))

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

    def rowThicknesses(self) -> list:
        """Per listed stack: the thickness edited in the panel, else ``None`` (read again from the stack by
        the logic, e.g. after Apply installed pynrrd, without which a NRRD ``thicknesses`` field is unread)."""
        out = []
        for row in range(self.ui.stacksTable.rowCount):
            if self.ui.stacksTable.cellWidget(row, 0).currentNode() is None:
                continue
            edited = self.ui.stacksTable.item(row, 3).text() == _("edited")
            out.append(self.ui.stacksTable.cellWidget(row, 2).value if edited else None)
        return out

    def updateReferenceChoices(self) -> None:
        combo = self.ui.referenceStackComboBox
        current = combo.currentIndex
        combo.clear()
        combo.addItem(_("Automatic"), -1)
        for index, (node, _mask, _t) in enumerate(self.stackRows()):
            if node is not None:
                combo.addItem(f"{index + 1}: {node.GetName()}", index)
        combo.setCurrentIndex(current if 0 <= current < combo.count else 0)

    # ------------------------------------------------------------------ EngineModuleWidget
    def inputProblem(self):
        if any(node is not None for node, _mask, _t in self.stackRows()):
            return None
        return _("Select at least one input stack")

    def parameters(self) -> SVRParameters:
        p = self._parameterNode
        return SVRParameters(
            resolutionMm=p.resolutionMm, psfInPlane=p.psfInPlane, psfThrough=p.psfThrough, motion=p.motion,
            robust=p.robust, stackAlignment=p.stackAlignment, biasField=p.biasField, severeMotion=p.severeMotion, noiseAware=p.noiseAware, preset=p.preset, nGaussians=p.nGaussians,
            iterations=p.iterations, device=p.device, seed=p.seed, maps=p.maps, loadGaussians=p.loadGaussians,
            referenceStack=-1,
        )

    def prepareJob(self):
        rows = [(node, mask, t) for node, mask, t in self.stackRows() if node is not None]
        parameters = self.parameters()
        chosen = self.ui.referenceStackComboBox.currentData
        if chosen is not None and chosen >= 0:
            listed = [r for r, (node, _m, _t) in enumerate(self.stackRows()) if node is not None]
            parameters.referenceStack = listed.index(chosen) if chosen in listed else -1
        job = self.logic.prepare(
            stacks=[r[0] for r in rows], masks=panelMasks([r[1] for r in rows], parameters.referenceStack),
            thicknesses=self.rowThicknesses(), parameters=parameters,
        )
        job.keepFiles = self._parameterNode.keepFiles
        self._previewShown = False
        return job

    def onJobPolled(self, job) -> None:
        if job.previewNode is not None and not self._previewShown:
            slicer.util.setSliceViewerLayers(background=job.previewNode, fit=True)
            self._previewShown = True

    def showOutputs(self, job, outputs) -> str:
        self._parameterNode.outputVolume = outputs.volume
        slicer.util.setSliceViewerLayers(background=outputs.volume, fit=True)
        return _("Done in {seconds:.0f} s: {name}").format(seconds=job.process.elapsedS, name=outputs.volume.GetName())


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
