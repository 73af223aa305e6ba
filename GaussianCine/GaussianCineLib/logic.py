"""GaussianCine logic: k-space file or scene cine -> engine process -> sequences (no Qt; console API).

Console use (blocking)::

    from GaussianCineLib import GaussianCineLogic
    out = GaussianCineLogic().run(cine=sequenceNode, maskType="gro", acceleration=8)   # retrospective
    out = GaussianCineLogic().run(kspaceFile="/data/cine_kspace.npy")                   # prospective
    out.recon, out.browser, out.metricsTable, out.errors["lps"], ...

A cine in the scene is a Sequence of single-slice volumes (or its Sequence Browser), a single-slice
vector volume whose components are frames, or a scalar volume whose slices are frames
(``framesAlongK=True``: what a 2D+t file loaded as a 3D volume looks like).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

import slicer
import vtk
from GaussianMRILib import nodes as N
from GaussianMRILib.engine import engineCommandPrefix
from GaussianMRILib.logic import EngineJob, EngineLogic, validateDevice
from GaussianMRILib.process import EngineError, ProgressEvent

__all__ = [
    "CineParameters",
    "CineOutputs",
    "CineJob",
    "GaussianCineLogic",
    "buildCineCommand",
    "cineFromNode",
    "writeCineNifti",
    "addCineSequence",
    "MASK_TYPES",
]

MASK_TYPES = ("gro", "uniform", "random")
KSPACE_SUFFIXES = (".npy", ".npz", ".h5", ".mat", ".cfl", ".hdr", ".mrd")


@dataclass
class CineParameters:
    """Options of one cine reconstruction (names follow the engine CLI; 0 = engine default)."""

    maskType: str = "gro"
    acceleration: float = 8.0
    axes: str = "frames,coils,ky,kx"
    nGaussians: int = 0
    steps: int = 0
    lambdaMu: float = 2e-3
    lambdaC: float = 2e-3
    srFactor: int = 1
    device: str = "auto"
    seed: int = 0
    baselines: bool = True

    def validate(self) -> None:
        if self.maskType not in MASK_TYPES:
            raise ValueError(f"Mask type must be one of {MASK_TYPES}, got '{self.maskType}'")
        if not self.acceleration >= 1:
            raise ValueError(f"Acceleration R must be >= 1, got {self.acceleration}")
        if self.srFactor < 1:
            raise ValueError(f"Super-resolution factor must be >= 1, got {self.srFactor}")
        if self.lambdaMu < 0 or self.lambdaC < 0:
            raise ValueError("Regularisation weights must be >= 0")
        if self.nGaussians < 0 or self.steps < 0:
            raise ValueError("Number of Gaussians and steps must be >= 0 (0 = engine default)")
        validateDevice(self.device)
        axes = [a.strip() for a in self.axes.split(",")]
        if sorted(axes) != sorted(["frames", "coils", "ky", "kx"]):
            raise ValueError(f"k-space axes must name frames, coils, ky, kx once each, got '{self.axes}'")


def buildCineCommand(
    outputDir: str | os.PathLike,
    parameters: CineParameters,
    kspacePath: str | os.PathLike | None = None,
    imageCinePath: str | os.PathLike | None = None,
    coilMapsPath: str | os.PathLike | None = None,
    enginePrefix: Sequence[str] | None = None,
) -> list[str]:
    """The engine command line for one cine run (exactly one of ``kspacePath`` / ``imageCinePath``)."""
    if (kspacePath is None) == (imageCinePath is None):
        raise ValueError("Give either a k-space file or an image cine, not both / neither")
    p = parameters
    prefix = engineCommandPrefix(enginePrefix)
    cmd = [*prefix, "cine"]
    if kspacePath is not None:
        cmd += ["--kspace", str(kspacePath), "--axes", p.axes.replace(" ", "")]
    else:
        cmd += ["--image-cine", str(imageCinePath), "--mask-type", p.maskType, "--acceleration", f"{p.acceleration:g}"]
    cmd += ["--output-dir", str(outputDir)]
    if p.nGaussians > 0:
        cmd += ["--n-gaussians", str(p.nGaussians)]
    if p.steps > 0:
        cmd += ["--steps", str(p.steps)]
    cmd += ["--lambda-mu", f"{p.lambdaMu:g}", "--lambda-c", f"{p.lambdaC:g}", "--sr-factor", str(p.srFactor)]
    if coilMapsPath is not None:
        cmd += ["--coil-maps", str(coilMapsPath)]
    cmd += ["--device", p.device, "--seed", str(p.seed)]
    if p.baselines and imageCinePath is not None:
        cmd.append("--baselines")
    cmd.append("--progress-json")
    return cmd


# ---------------------------------------------------------------------- scene cine -> arrays
def _singleSlice(array: np.ndarray, name: str) -> np.ndarray:
    """``[k, j, i]`` with one slice along any axis -> 2D ``[rows, cols]``."""
    if array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    raise ValueError(
        f"'{name}' has {array.shape[0]} slices ({array.shape}); each cine frame must be a single 2D slice"
    )


def cineFromNode(node, framesAlongK: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """A scene cine as ``(frames[T, ny, nx] float32, IJKToRAS of one frame (4x4), frame duration ms)``.

    :raises ValueError: for a 3D volume not marked as 2D+t, multi-slice frames, fewer than 2 frames.
    """
    if node is None:
        raise ValueError("No cine selected")
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        node = node.GetMasterSequenceNode()
        if node is None:
            raise ValueError("The sequence browser has no sequence")
    if node.IsA("vtkMRMLSequenceNode"):
        count = node.GetNumberOfDataNodes()
        if count < 2:
            raise ValueError(f"Sequence '{node.GetName()}' has {count} item(s); a cine needs at least 2 frames")
        frames, geometry = [], None
        for index in range(count):
            item = node.GetNthDataNode(index)
            if (item is None or not item.IsA("vtkMRMLScalarVolumeNode") or item.IsA("vtkMRMLVectorVolumeNode")
                    or item.GetImageData() is None or item.GetImageData().GetNumberOfScalarComponents() != 1):
                kind = item.GetClassName() if item is not None else "nothing"
                raise ValueError(f"Sequence '{node.GetName()}' item {index} is {kind}; a cine needs scalar volumes")
            frames.append(_singleSlice(slicer.util.arrayFromVolume(item), f"{node.GetName()}[{index}]"))
            geometry = N.ijkToRasArray(item) if geometry is None else geometry
        if len({f.shape for f in frames}) != 1:
            raise ValueError(f"Frames of sequence '{node.GetName()}' have different sizes")
        frameMs = _frameDurationMs(node)
        return np.stack(frames).astype(np.float32), geometry, frameMs
    if node.IsA("vtkMRMLVectorVolumeNode") and node.GetImageData() is not None:
        array = slicer.util.arrayFromVolume(node)  # [k, j, i, components]
        if array.shape[0] != 1:
            raise ValueError(f"Vector volume '{node.GetName()}' has {array.shape[0]} slices; a 2D+t cine has one")
        return np.moveaxis(array[0], -1, 0).astype(np.float32), N.ijkToRasArray(node), _attributeMs(node)
    if node.IsA("vtkMRMLScalarVolumeNode") and node.GetImageData() is not None:
        array = slicer.util.arrayFromVolume(node)
        if not framesAlongK:
            raise ValueError(
                f"'{node.GetName()}' is a 3D volume {tuple(reversed(array.shape))}, not a cine. Select a Sequence of 2D "
                "frames, or tick 'slices are time frames' if this volume is a 2D+t image loaded as 3D."
            )
        if array.shape[0] < 2:
            raise ValueError(f"'{node.GetName()}' has a single slice: no time frames")
        geometry = N.ijkToRasArray(node)
        frameMs = _attributeMs(node)
        return array.astype(np.float32), geometry, frameMs
    raise ValueError(
        f"'{node.GetName()}' is a {node.GetClassName()}; a cine must be a Sequence of 2D volumes or a 2D+t volume"
    )


def _attributeMs(node) -> float:
    value = node.GetAttribute("GaussianMRI.FrameDurationMs")
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _frameDurationMs(sequence) -> float:
    if sequence.GetNumberOfDataNodes() >= 2 and sequence.GetIndexType() == sequence.NumericIndex:
        try:
            t0, t1 = float(sequence.GetNthIndexValue(0)), float(sequence.GetNthIndexValue(1))
            unit = (sequence.GetIndexUnit() or "").strip().lower()
            scale = {"s": 1000.0, "sec": 1000.0, "ms": 1.0, "msec": 1.0}.get(unit, 1.0)
            return abs(t1 - t0) * scale
        except ValueError:
            pass
    return 0.0


def writeCineNifti(frames: np.ndarray, ijkToRas: np.ndarray, frameMs: float, path: str | os.PathLike) -> Path:
    """Write ``frames[T, ny, nx]`` as a 2D+t NIfTI ``(nx, ny, 1, T)`` with RAS affine and TR = frame ms."""
    import nibabel as nib

    data = np.asarray(frames, dtype=np.float32).transpose(2, 1, 0)[:, :, None, :]
    image = nib.Nifti1Image(data, np.asarray(ijkToRas, dtype=np.float64))
    image.set_qform(ijkToRas, code=1)
    image.set_sform(ijkToRas, code=1)
    zooms = list(np.linalg.norm(np.asarray(ijkToRas)[:3, :3], axis=0)) + [float(frameMs) if frameMs > 0 else 1.0]
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, str(path))
    return Path(path)


# ---------------------------------------------------------------------- arrays -> sequences
def _frameVolume(frame: np.ndarray, ijkToRas: np.ndarray, vector: bool = False):
    node = slicer.vtkMRMLVectorVolumeNode() if vector else slicer.vtkMRMLScalarVolumeNode()
    N.updateVolumeNodeFromArray(node, np.ascontiguousarray(frame[None].astype(np.float32)), ijkToRas)
    return node


def addCineSequence(frames: np.ndarray, ijkToRas: np.ndarray, name: str, frameMs: float, vector: bool = False):
    """New Sequence node of single-slice volumes: ``frames[T, ny, nx]`` (or ``[T, ny, nx, C]`` vectors).

    The index is the time in ms (``frame * frameMs``; frame numbers when ``frameMs`` is 0).
    """
    frames = np.asarray(frames)
    sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", N.uniqueNodeName(name))
    sequence.SetIndexName("time" if frameMs > 0 else "frame")
    sequence.SetIndexUnit("ms" if frameMs > 0 else "")
    sequence.SetIndexType(sequence.NumericIndex)
    for index, frame in enumerate(frames):
        value = index * frameMs if frameMs > 0 else index
        sequence.SetDataNodeAtValue(_frameVolume(frame, ijkToRas, vector), f"{value:g}")
    return sequence


def _outputGeometry(inputGeometry: np.ndarray, spacingMm: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """IJKToRAS of a grid ``shape`` = ``(rows, cols)`` with ``spacingMm`` = ``(row, col)`` spacing that covers
    the field of view of ``inputGeometry`` (same directions, same outer corner, same slice spacing).

    The engine's super-resolved grid subdivides the input pixels (fine pixel centres at
    ``(coarse + 0.5) * s - 0.5``, ``gaussian_mri.render.splat2d.sr_grid``), so it shares the outer
    corner of the field of view with the 1x grid; with ``spacingMm`` equal to the input spacing this
    returns ``inputGeometry`` itself.
    """
    dy, dx = (float(v) for v in np.asarray(spacingMm, dtype=np.float64).reshape(-1)[:2])
    old = np.linalg.norm(inputGeometry[:3, :3], axis=0)
    directions = inputGeometry[:3, :3] / old
    new = np.array([dx, dy, old[2]])
    out = np.eye(4)
    out[:3, :3] = directions * new
    # keep the corner of the field of view where it was: origin - d*old/2 == origin' - d*new/2
    out[:3, 3] = inputGeometry[:3, 3] + directions[:, :2] @ ((new[:2] - old[:2]) / 2)
    return out


@dataclass
class CineOutputs:
    """Nodes created by one cine reconstruction."""

    recon: object = None
    browser: object = None
    eigenRatio: object = None
    detRatio: object = None
    displacement: object = None
    reference: object = None
    baselines: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    metricsTable: object = None
    folderItemId: int = 0

    def nodes(self) -> list:
        single = [self.recon, self.eigenRatio, self.detRatio, self.displacement, self.reference, self.metricsTable, self.browser]
        return [n for n in single + list(self.baselines.values()) + list(self.errors.values()) if n is not None]


@dataclass(kw_only=True)
class CineJob(EngineJob):
    """One cine run: parameters and input geometry, plus the common job state (:class:`EngineJob`)."""

    parameters: CineParameters
    inputGeometry: np.ndarray | None = None
    frameMs: float = 0.0
    retrospective: bool = False
    inputNode: object = None


class GaussianCineLogic(EngineLogic):
    """Cardiac cine reconstruction with the GaussianMRI engine.

    :param enginePrefix: how to start the engine (default ``[PythonSlicer, "-m", "gaussian_mri"]``).
    :param logCallback: receives engine log lines (default: ``logging.info``).
    """

    engineName = "GaussianCine"

    def prepare(self, kspaceFile=None, cine=None, framesAlongK: bool = False, coilMapsFile=None,
                parameters: CineParameters | None = None, **overrides) -> CineJob:
        """Check inputs, write the scene cine to a temporary NIfTI, build the command (scene unchanged)."""
        parameters = replace(parameters or CineParameters(), **overrides)
        parameters.validate()
        if (kspaceFile is None) == (cine is None):
            raise ValueError("Select either a k-space file (prospective) or a cine in the scene (retrospective undersampling)")
        for label, path in (("k-space file", kspaceFile), ("coil-map file", coilMapsFile)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"The {label} does not exist: {path}")
        if kspaceFile is not None and not str(kspaceFile).lower().endswith(KSPACE_SUFFIXES):
            raise ValueError(f"Unknown k-space file type: {kspaceFile} (expected one of {', '.join(KSPACE_SUFFIXES)})")
        frames = geometry = None
        frameMs = 0.0
        if cine is not None:
            frames, geometry, frameMs = cineFromNode(cine, framesAlongK)
        workDir, outputDir = self.makeWorkDirectory()
        try:
            imagePath = None
            if frames is not None:
                imagePath = writeCineNifti(frames, geometry, frameMs, workDir / "cine.nii.gz")
            command = buildCineCommand(outputDir, parameters, kspacePath=kspaceFile, imageCinePath=imagePath,
                                       coilMapsPath=coilMapsFile, enginePrefix=self.enginePrefix)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        if cine is not None:
            baseName = cine.GetName()
        else:
            baseName = Path(kspaceFile).name.split(".")[0]
        return CineJob(parameters=parameters, workDir=workDir, outputDir=outputDir, command=command, baseName=baseName,
                       inputGeometry=geometry, frameMs=frameMs, retrospective=cine is not None, inputNode=cine)

    def run(self, kspaceFile=None, cine=None, framesAlongK: bool = False, coilMapsFile=None,
            parameters: CineParameters | None = None, timeoutS: float | None = None,
            onProgress: Callable[[ProgressEvent], None] | None = None, **overrides) -> CineOutputs:
        """Reconstruct (blocking) and return the output nodes."""
        job = self.prepare(kspaceFile, cine, framesAlongK, coilMapsFile, parameters, **overrides)
        return self.runJob(job, timeoutS=timeoutS, onProgress=onProgress)

    def loadOutputs(self, job: CineJob) -> CineOutputs:
        """Sequences (one browser), error sequences and the metrics table, all or nothing.

        ``result.npz`` of ``gaussian_mri cine``: ``recon``, ``eigen_ratio``, ``det_ratio`` and
        ``displacement`` are on the super-resolved grid (``--sr-factor`` s, pixel size ``spacing_mm``);
        ``reference``, ``lps``, ``zero_filled`` and ``recon_1x`` (s != 1) on the input grid, whose
        IJKToRAS is the scene cine's, else the engine's ``ijk_to_ras`` (for a k-space file: where it was
        acquired, from the ISMRMRD acquisition headers). Error maps
        compare each method at 1x with the reference, after the least-squares gain the engine used for
        ``metrics.json``.
        """
        resultPath = self.outputPath(job, "result", "result.npz")
        if resultPath is None:
            raise EngineError(f"The engine finished without writing result.npz in {job.outputDir}")
        before = N.nodeIds()
        out = CineOutputs()
        name = f"{job.baseName} GaussianCine"
        try:
            with np.load(resultPath) as result:
                data = {k: result[k] for k in result.keys()}
            if "recon" not in data or "spacing_mm" not in data:
                raise EngineError(f"{resultPath} has no 'recon' / 'spacing_mm'; keys: {sorted(data)}")
            recon = np.abs(data["recon"]).astype(np.float32)
            recon1x = np.abs(data["recon_1x"]).astype(np.float32) if "recon_1x" in data else recon
            spacing = np.asarray(data["spacing_mm"], dtype=np.float64).reshape(2)
            frameMs = float(data["frame_ms"]) if "frame_ms" in data else 0.0
            frameMs = frameMs if frameMs > 0 else job.frameMs
            geometry1x = job.inputGeometry  # a scene cine: exactly its geometry
            if geometry1x is None:  # the engine's: the file's acquisition geometry (bundled engines write it)
                if "ijk_to_ras" not in data:
                    raise EngineError(f"{resultPath} has no 'ijk_to_ras'; keys: {sorted(data)}")
                geometry1x = np.asarray(data["ijk_to_ras"], dtype=np.float64).reshape(4, 4)
            geometry = _outputGeometry(geometry1x, spacing, recon.shape[1:])
            out.recon = addCineSequence(recon, geometry, name, frameMs)
            synchronized = []
            for key, attr, label in (("eigen_ratio", "eigenRatio", "eigenvalue ratio"), ("det_ratio", "detRatio", "determinant ratio")):
                if key in data:
                    setattr(out, attr, addCineSequence(np.asarray(data[key], np.float32), geometry, f"{name} {label}", frameMs))
                    synchronized.append(getattr(out, attr))
            if "displacement" in data:
                d = np.asarray(data["displacement"], np.float32)  # (T, ny, nx, 2): (x=col, y=row) in mm
                directions = geometry[:3, :3] / np.linalg.norm(geometry[:3, :3], axis=0)
                ras = d[..., 0:1] * directions[:, 0] + d[..., 1:2] * directions[:, 1]
                out.displacement = addCineSequence(ras, geometry, f"{name} displacement", frameMs, vector=True)
                synchronized.append(out.displacement)
            reference = np.abs(data["reference"]).astype(np.float32) if "reference" in data else None
            if reference is not None:
                out.reference = addCineSequence(reference, geometry1x, f"{job.baseName} reference", frameMs)
                synchronized.append(out.reference)
            methods = {"gaussian": recon1x}
            for key, label in (("lps", "L+S"), ("zero_filled", "zero-filled")):
                if key in data:
                    image = np.abs(data[key]).astype(np.float32)
                    out.baselines[key] = addCineSequence(image, geometry1x, f"{job.baseName} {label}", frameMs)
                    synchronized.append(out.baselines[key])
                    methods[key] = image
            metricsPath = self.outputPath(job, "metrics", "metrics.json")
            metrics = json.loads(metricsPath.read_text()) if metricsPath is not None else {}
            if reference is not None:
                for key, image in methods.items():
                    if image.shape != reference.shape:
                        raise EngineError(f"'{key}' {image.shape} and 'reference' {reference.shape} in {resultPath} differ in size")
                    gain = float(metrics.get(key, {}).get("gain", 1.0))
                    label = {"gaussian": "GaussianCine", "lps": "L+S", "zero_filled": "zero-filled"}[key]
                    out.errors[key] = addCineSequence(gain * image - reference, geometry1x, f"{job.baseName} {label} error", frameMs)
                    synchronized.append(out.errors[key])
            if metrics:
                out.metricsTable = N.addTableNode({
                    "method": np.array(list(metrics)),
                    "SSIM": np.array([float(m.get("ssim", np.nan)) for m in metrics.values()]),
                    "PSNR (dB)": np.array([float(m.get("psnr", np.nan)) for m in metrics.values()]),
                    "NRMSE": np.array([float(m.get("nrmse", np.nan)) for m in metrics.values()]),
                }, f"{name} metrics")
            out.browser = self._addBrowser(out.recon, synchronized, f"{name} browser", frameMs)
            out.folderItemId = N.createOutputFolder(f"GaussianCine {job.baseName}", besideNode=job.inputNode)
            N.moveToFolder(out.nodes() + _proxies(out.browser), out.folderItemId)
        except BaseException:
            N.removeNodesAddedSince(before)
            raise
        return out

    @staticmethod
    def _addBrowser(master, synchronized: Sequence, name: str, frameMs: float = 0.0):
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", N.uniqueNodeName(name))
        browser.SetAndObserveMasterSequenceNodeID(master.GetID())
        for sequence in synchronized:
            browser.AddSynchronizedSequenceNodeID(sequence.GetID())
        browser.SetPlaybackRateFps(1000.0 / frameMs if frameMs > 0 else 10.0)  # real time
        browser.SetPlaybackLooped(True)
        sequencesLogic = N.moduleLogic("Sequences")
        if sequencesLogic is not None:
            sequencesLogic.UpdateProxyNodesFromSequences(browser)
        return browser


def _proxies(browser) -> list:
    if browser is None:
        return []
    collection = vtk.vtkCollection()
    browser.GetAllProxyNodes(collection)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
