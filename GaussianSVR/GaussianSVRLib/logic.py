"""GaussianSVR logic: scene stacks -> engine process -> output nodes (no Qt; console API).

Console use (blocking)::

    from GaussianSVRLib import GaussianSVRLogic
    out = GaussianSVRLogic().run(stacks=[s1, s2, s3], masks=[m1, None, m3], motion="slice",
                                 preset="fast", maps=True)
    out.volume, out.table, out.tensor, ...
    # one mask for several stacks: the reference stack's (referenceStack, default the first),
    # propagated to the others through the stack alignment, as on the command line (--masks m.nii.gz)
    out = GaussianSVRLogic().run(stacks=[s1, s2, s3], masks=[m1])
    out.propagatedMasks     # the masks the engine used for s2 and s3 (labelmaps)

The widget uses :meth:`GaussianSVRLogic.prepare` + :meth:`GaussianSVRLogic.start` (non-blocking,
polled by a ``qt.QTimer``) and :meth:`GaussianSVRLogic.finish`. Nothing is added to the scene
before the engine succeeds, except the preview volume, which is removed at the end.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from GaussianMRILib import nodes as N
from GaussianMRILib.logic import EngineJob, EngineLogic, validateDevice
from GaussianMRILib.process import EngineCancelled, EngineError, JobState, ProgressEvent

from gaussian_mri.svr.files import OUTPUT_FILES, propagated_mask_file

__all__ = [
    "SVRParameters", "SVROutputs", "SVRJob", "GaussianSVRLogic", "buildSVRCommand", "MOTION_MODELS", "PRESETS",
    "ENGINE_OUTPUT_FILES", "panelMasks", "propagatedMaskKey",
]

MOTION_MODELS = ("none", "stack", "slice")
PRESETS = ("fast", "standard", "quality")

#: What ``gaussian_mri svr`` writes: ``{name in its "done" event: file name in --output-dir}``
#: (torch-free engine module, bundled with this module).
ENGINE_OUTPUT_FILES = OUTPUT_FILES


@dataclass
class SVRParameters:
    """Options of one reconstruction (names follow the engine CLI; 0 means 'preset default')."""

    resolutionMm: float = 0.8
    psfInPlane: float = 1.2
    psfThrough: float = 1.0
    motion: str = "slice"
    robust: bool = True
    stackAlignment: bool = True
    biasField: bool = False
    severeMotion: bool = False
    noiseAware: bool = True
    preset: str = "fast"
    nGaussians: int = 0
    iterations: int = 0
    device: str = "auto"
    referenceStack: int = -1
    maps: bool = False
    seed: int = 0
    loadGaussians: bool = False

    def validate(self) -> None:
        if not self.resolutionMm > 0:
            raise ValueError(f"Output resolution must be > 0 mm, got {self.resolutionMm}")
        if not (self.psfInPlane > 0 and self.psfThrough > 0):
            raise ValueError(f"PSF factors must be > 0, got in-plane {self.psfInPlane}, through-plane {self.psfThrough}")
        if self.motion not in MOTION_MODELS:
            raise ValueError(f"Motion model must be one of {MOTION_MODELS}, got '{self.motion}'")
        if self.preset not in PRESETS:
            raise ValueError(f"Preset must be one of {PRESETS}, got '{self.preset}'")
        validateDevice(self.device)
        if self.nGaussians < 0 or self.iterations < 0:
            raise ValueError("Number of Gaussians and iterations must be >= 0 (0 = preset default)")


def buildSVRCommand(
    stackPaths: Sequence[str | os.PathLike],
    outputDir: str | os.PathLike,
    parameters: SVRParameters,
    maskPaths: Sequence[str | os.PathLike | None] | None = None,
    thicknesses: Sequence[float] | None = None,
    enginePrefix: Sequence[str] | None = None,
) -> list[str]:
    """The engine command line for one SVR run.

    ``maskPaths`` has one entry per stack; ``None`` there lets the engine mask that stack
    automatically (``--masks ... none ...``), as it does for every stack when no mask is given. A
    single entry for several stacks is the reference stack's mask (``--masks m``), which the engine
    propagates to the other stacks.
    ``enginePrefix`` is how the engine is started, by default ``[PythonSlicer, "-m", "gaussian_mri"]``.
    """
    p = parameters
    prefix = list(enginePrefix) if enginePrefix else _defaultPrefix()
    cmd = [*prefix, "svr", "--stacks", *map(str, stackPaths)]
    if maskPaths and any(m is not None for m in maskPaths):
        cmd += ["--masks", *("none" if m is None else str(m) for m in maskPaths)]
    if thicknesses:
        cmd += ["--thickness", *(f"{t:g}" for t in thicknesses)]
    cmd += ["--output-dir", str(outputDir), "--resolution", f"{p.resolutionMm:g}", "--motion", p.motion]
    cmd += ["--psf-inplane", f"{p.psfInPlane:g}", "--psf-through", f"{p.psfThrough:g}"]
    if not p.robust:
        cmd.append("--no-robust")
    if not p.stackAlignment:
        cmd.append("--no-stack-alignment")
    if p.biasField:
        cmd.append("--bias-field")
    if p.severeMotion:
        cmd.append("--severe-motion")
    cmd += ["--smoothness", "auto" if p.noiseAware else "off"]
    cmd += ["--preset", p.preset]
    if p.nGaussians > 0:
        cmd += ["--n-gaussians", str(p.nGaussians)]
    if p.iterations > 0:
        cmd += ["--iterations", str(p.iterations)]
    cmd += ["--device", p.device]
    if p.referenceStack >= 0:
        cmd += ["--reference-stack", str(p.referenceStack)]
    cmd.append("--maps" if p.maps else "--no-maps")  # the engine computes maps unless told not to
    cmd.append("--no-qc-report")  # the work folder is removed once the outputs are loaded: no report to keep
    cmd += ["--seed", str(p.seed), "--progress-json"]
    return cmd


def propagatedMaskKey(index: int) -> str:
    """Name, in the engine's "done" event, of the reference mask propagated onto stack ``index`` (0-based)."""
    return propagated_mask_file(index).removesuffix(".nii.gz")


def panelMasks(masks: list, referenceStack: int = -1) -> list:
    """The masks argument of the logic for the panel's mask column (one entry per listed stack).

    A mask on the reference stack only (``referenceStack``, -1 = the first), with several stacks, is
    passed alone: the engine propagates it to the other stacks through the stack alignment, as the
    command line does with one ``--masks`` file. Anything else is passed per stack (``None`` = automatic).
    """
    reference = referenceStack if referenceStack >= 0 else 0
    given = [index for index, mask in enumerate(masks) if mask is not None]
    if len(masks) > 1 and given == [reference]:
        return [masks[reference]]
    return list(masks)


def _defaultPrefix() -> list[str]:
    from GaussianMRILib.engine import engineCommandPrefix

    return engineCommandPrefix()


@dataclass
class SVROutputs:
    """Nodes created by one reconstruction (``None`` where not requested / not produced)."""

    volume: object = None
    mask: object = None
    scaleMap: object = None
    anisotropyMap: object = None
    tensor: object = None
    table: object = None
    gaussians: object = None
    propagatedMasks: list = field(default_factory=list)  #: with one mask for several stacks: the labelmaps
    #: the engine propagated it to, one per other stack (in stack order)
    folderItemId: int = 0

    def nodes(self) -> list:
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "folderItemId" or value is None:
                continue
            out.extend(value if isinstance(value, list) else [value])
        return out


@dataclass(kw_only=True)
class SVRJob(EngineJob):
    """One SVR run: the stacks and parameters, plus the common job state (:class:`EngineJob`)."""

    stacks: list
    parameters: SVRParameters


def _baseName(names: Sequence[str]) -> str:
    prefix = os.path.commonprefix(list(names)).rstrip("_- .")
    if len(names) == 1:
        return names[0]
    if len(prefix) >= 3:
        return prefix
    return f"{names[0]}+{len(names) - 1}"


class GaussianSVRLogic(EngineLogic):
    """Slice-to-volume reconstruction of scene stacks with the GaussianMRI engine.

    :param enginePrefix: how to start the engine (default ``[PythonSlicer, "-m", "gaussian_mri"]``).
    :param logCallback: receives engine log lines (default: ``logging.info``).
    """

    engineName = "GaussianSVR"

    # ------------------------------------------------------------ validation
    @staticmethod
    def validateInputs(stacks, masks=None, thicknesses=None, referenceStack: int = -1) -> None:
        """Raise ``ValueError`` with a clear message for unusable inputs."""
        stacks = list(stacks or [])
        if not stacks or all(s is None for s in stacks):
            raise ValueError("No stack selected: add at least one input stack (a scalar volume).")
        for index, stack in enumerate(stacks):
            N._requireVolume(stack, f"Stack {index + 1}")
            dims = stack.GetImageData().GetDimensions()
            if min(dims) < 2 or sorted(dims)[1] < 8:
                raise ValueError(f"Stack {index + 1} '{stack.GetName()}' has dimensions {dims}; a 3D stack of 2D slices was expected")
        if masks is not None and len(masks) != len(stacks) and not (len(masks) == 1 and masks[0] is not None):
            raise ValueError(f"{len(masks)} masks for {len(stacks)} stacks: give one mask (or None) per stack, "
                             "or a single mask for the reference stack")
        if thicknesses is not None:
            if len(thicknesses) != len(stacks):
                raise ValueError(f"{len(thicknesses)} thicknesses for {len(stacks)} stacks")
            for index, t in enumerate(thicknesses):
                if t is not None and not t > 0:
                    raise ValueError(f"Slice thickness of stack {index + 1} must be > 0 mm, got {t}")
        if referenceStack >= len(stacks):
            raise ValueError(f"Reference stack {referenceStack + 1} does not exist ({len(stacks)} stacks)")

    # ------------------------------------------------------------ preparing
    def prepare(self, stacks, masks=None, thicknesses=None, parameters: SVRParameters | None = None, **overrides) -> SVRJob:
        """Check inputs, write them (in world coordinates) to a temporary folder, build the command (scene unchanged).

        A thickness of ``None`` is read from the stack (:func:`GaussianMRILib.nodes.sliceThicknessWithSource`).
        ``masks``: one per stack (``None``: automatic), or a single mask for several stacks, which is the
        mask of the reference stack (``referenceStack``, default the first) and which the engine propagates
        to the other stacks through the stack alignment (``--masks <one file>``, as SVRTK's ``-mask``).
        """
        parameters = replace(parameters or SVRParameters(), **overrides)
        parameters.validate()
        stacks = list(stacks or [])
        masks = list(masks) if masks is not None else None
        self.validateInputs(stacks, masks, thicknesses, parameters.referenceStack)
        if thicknesses is None:
            thicknesses = [None] * len(stacks)
        thicknesses = [N.sliceThicknessMm(s) if t is None else float(t) for s, t in zip(stacks, thicknesses)]
        images = [N.volumeNodeToImage(stack, thickness) for stack, thickness in zip(stacks, thicknesses)]
        maskImages = None
        if masks is not None and len(masks) == 1 and len(stacks) > 1:  # the reference stack's mask only
            reference = parameters.referenceStack if parameters.referenceStack >= 0 else 0
            maskImages = [N.maskImage(masks[0], stacks[reference])]
        elif masks is not None and any(m is not None for m in masks):
            maskImages = [None if m is None else N.maskImage(m, s) for s, m in zip(stacks, masks)]

        workDir, outputDir = self.makeWorkDirectory()
        try:
            from gaussian_mri.image import write_image

            stackPaths = [write_image(image, workDir / f"stack_{i:02d}.nii.gz") for i, image in enumerate(images)]
            maskPaths = None
            if maskImages is not None:  # None for a stack: the engine masks it automatically
                maskPaths = [None if m is None else write_image(m, workDir / f"mask_{i:02d}.nii.gz") for i, m in enumerate(maskImages)]
            command = buildSVRCommand(stackPaths, outputDir, parameters, maskPaths, thicknesses, enginePrefix=self.enginePrefix)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return SVRJob(
            stacks=stacks, parameters=parameters, workDir=workDir, outputDir=outputDir, command=command,
            baseName=_baseName([s.GetName() for s in stacks]),
        )

    # ------------------------------------------------------------ running
    def onPreview(self, job: SVRJob, path: str) -> None:
        """Create or refresh the preview volume from an engine preview file (main thread only)."""
        from gaussian_mri.image import read_image

        try:
            image = read_image(path)
        except (OSError, ValueError) as exc:
            logging.debug("GaussianSVR: preview %s not readable yet (%s)", path, exc)
            return
        if job.previewNode is None or N._scene().GetNodeByID(job.previewNode.GetID()) is None:
            job.previewNode = N.addVolumeNodeFromArray(image.data, image.affine, f"{job.baseName} SVR preview")
            job.previewNode.SetAttribute("GaussianMRI.Preview", "1")
        else:
            N.updateVolumeNodeFromArray(job.previewNode, image.data, image.affine)

    def run(self, stacks, masks=None, thicknesses=None, parameters: SVRParameters | None = None, timeoutS: float | None = None,
            onProgress: Callable[[ProgressEvent], None] | None = None, **overrides) -> SVROutputs:
        """Reconstruct (blocking) and return the output nodes. Raises ``ValueError`` for bad inputs,
        ``EngineError`` when the engine fails, ``EngineCancelled`` when stopped."""
        job = self.prepare(stacks, masks, thicknesses, parameters, **overrides)
        return self.runJob(job, timeoutS=timeoutS, onProgress=onProgress)

    # ------------------------------------------------------------ outputs
    def _outputPath(self, job: SVRJob, key: str) -> Path | None:
        """Path of engine output ``key`` (see :data:`ENGINE_OUTPUT_FILES`), ``None`` when not written."""
        return self.outputPath(job, key, ENGINE_OUTPUT_FILES[key])

    def loadOutputs(self, job: SVRJob, loadGaussians: bool | None = None) -> SVROutputs:
        """Create output nodes from the engine files (all or nothing) in one subject-hierarchy folder."""
        from gaussian_mri.image import read_image

        loadGaussians = job.parameters.loadGaussians if loadGaussians is None else loadGaussians
        before = N.nodeIds()
        out = SVROutputs()
        name = f"{job.baseName} SVR"
        try:
            reconPath = self._outputPath(job, "volume")
            if reconPath is None:
                raise EngineError(f"The engine finished without writing {ENGINE_OUTPUT_FILES['volume']} in {job.outputDir}")
            recon = read_image(reconPath)
            out.volume = N.addVolumeNodeFromArray(recon.data, recon.affine, name)
            path = self._outputPath(job, "mask")
            if path is not None:
                mask = read_image(path)
                out.mask = N.addVolumeNodeFromArray(mask.data.astype(np.uint8), mask.affine, f"{name} mask", "vtkMRMLLabelMapVolumeNode")
            if job.parameters.maps:
                path = self._outputPath(job, "scale")
                if path is not None:
                    image = read_image(path)
                    out.scaleMap = N.addVolumeNodeFromArray(image.data, image.affine, f"{name} Gaussian scale")
                path = self._outputPath(job, "anisotropy")
                if path is not None:
                    image = read_image(path)
                    out.anisotropyMap = N.addVolumeNodeFromArray(image.data, image.affine, f"{name} anisotropy")
                path = self._outputPath(job, "tensor")
                if path is not None:
                    out.tensor = N.readTensorVolumeNode(path, f"{name} covariance tensor")
            for index, stack in enumerate(job.stacks):  # one mask given for several stacks: where it went
                path = self.outputPath(job, propagatedMaskKey(index), propagated_mask_file(index))
                if path is not None:
                    mask = read_image(path)
                    out.propagatedMasks.append(N.addVolumeNodeFromArray(
                        mask.data.astype(np.uint8), mask.affine, f"{stack.GetName()} mask (propagated)", "vtkMRMLLabelMapVolumeNode"))
            path = self._outputPath(job, "slices")
            if path is not None:
                out.table = N.addTableNode(readSlicesTable(path, [s.GetName() for s in job.stacks]), f"{name} slices")
            if loadGaussians:
                path = self._outputPath(job, "gaussians")
                if path is not None:
                    out.gaussians = gaussiansModelNode(path, f"{name} Gaussians")
            out.folderItemId = N.createOutputFolder(f"GaussianSVR {job.baseName}", besideNode=job.stacks[0])
            N.moveToFolder(out.nodes(), out.folderItemId)
        except BaseException:
            N.removeNodesAddedSince(before)
            raise
        self._logReportWarnings(job)
        return out

    def _logReportWarnings(self, job: SVRJob) -> None:
        """Pass the warnings of the engine's ``report.json`` (e.g. a stack rejected) to the log."""
        path = self._outputPath(job, "report")
        if path is None:
            return
        try:
            warnings = json.loads(path.read_text()).get("warnings") or []
        except (OSError, ValueError, AttributeError):
            return
        for warning in warnings:
            self.logCallback(f"warning: {warning}")


def readSlicesTable(path: str | os.PathLike, stackNames: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Columns of the engine's ``slices.tsv`` (numbers), plus ``stack name`` when names are given."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows:
        raise EngineError(f"{path} is empty")
    header, body = rows[0], [r for r in rows[1:] if r]
    columns: dict[str, np.ndarray] = {}
    for index, columnName in enumerate(header):
        values = [r[index] if index < len(r) else "" for r in body]
        try:
            array = np.array([float(v) for v in values])
            if columnName in ("stack", "slice") and np.all(array == np.round(array)):
                array = array.astype(np.int32)
        except ValueError:
            array = np.array(values)
        columns[columnName] = array
    if stackNames and "stack" in columns and columns["stack"].dtype.kind == "i":
        names = [stackNames[i] if 0 <= i < len(stackNames) else str(i) for i in columns["stack"]]
        columns = {"stack": columns["stack"], "stack name": np.array(names), **{k: v for k, v in columns.items() if k != "stack"}}
    return columns


def gaussiansModelNode(path: str | os.PathLike, name: str):
    """Gaussian centres of the engine's ``gaussians.npz`` (key ``means_mm``, RAS mm) as a point-cloud model.

    The other per-Gaussian arrays of the file (``scales_mm``, ``quats_wxyz``, ``amplitudes``; see
    ``gaussian_mri.svr.model``) become point data arrays of the same names.
    """
    with np.load(path) as data:
        if "means_mm" not in data:
            raise EngineError(f"{path} has no Gaussian centres ('means_mm'); keys: {sorted(data.keys())}")
        means = np.asarray(data["means_mm"], dtype=np.float32).reshape(-1, 3)
        arrays = {
            k: np.asarray(data[k]) for k in data.keys()
            if k != "means_mm" and data[k].ndim >= 1 and data[k].shape[0] == len(means) and data[k].dtype.kind in "fiu"
        }
    return N.addPointCloudModelNode(means, name, arrays)


__all__ += ["readSlicesTable", "gaussiansModelNode", "EngineCancelled", "EngineError", "JobState"]
