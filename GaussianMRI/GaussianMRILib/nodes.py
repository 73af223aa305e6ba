"""MRML node helpers shared by GaussianSVR and GaussianCine (no Qt: they run on slicer-core too).

* node <-> engine conversion: a volume node becomes a :class:`gaussian_mri.image.Image` with
  ``data`` = ``arrayFromVolume`` (``[k, j, i]``) and ``affine`` = its IJKToRAS in world coordinates
  (a linear parent transform applied, as Slicer displays the node); results go back the same way,
  so the IJKToRAS of an output equals the engine's affine exactly;
* slice thickness: DICOM Slice Thickness of the source series, else the file header, else spacing;
* masks: a labelmap on any grid (the engine resamples it onto its stack), or a segmentation exported
  onto the stack through the Segmentations logic;
* outputs: unique names, tensor volumes, tables, point clouds, and one subject-hierarchy folder;
* scene bookkeeping: remove what a failed or cancelled run created (nodes + display/storage nodes).

Module logics are reached with :func:`moduleLogic`: ``slicer.modules.<name>.logic()`` inside Slicer;
outside (slicer-core, tests) register the application logic once with :func:`useApplicationLogic`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

import slicer
import vtk

__all__ = [
    "useApplicationLogic",
    "moduleLogic",
    "nodeIds",
    "removeNodes",
    "removeNodesAddedSince",
    "uniqueNodeName",
    "ijkToRasArray",
    "worldIjkToRasArray",
    "parentToWorldArray",
    "volumeNodeToImage",
    "writeVolumeNode",
    "addVolumeNodeFromArray",
    "updateVolumeNodeFromArray",
    "sliceThicknessMm",
    "sliceThicknessWithSource",
    "THICKNESS_SOURCES",
    "dicomSliceThicknessMm",
    "maskImage",
    "addTensorVolumeNode",
    "readTensorVolumeNode",
    "tensorArrayRas",
    "addTableNode",
    "addPointCloudModelNode",
    "createOutputFolder",
    "moveToFolder",
]

_APPLICATION_LOGIC = None


def useApplicationLogic(applicationLogic) -> None:
    """Register the ``vtkSlicerApplicationLogic`` to use outside the Slicer application."""
    global _APPLICATION_LOGIC
    _APPLICATION_LOGIC = applicationLogic


def moduleLogic(name: str):
    """The logic of a loadable module (``"Sequences"``, ``"Volumes"``, ...), or ``None``."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, name.lower()):
        return getattr(modules, name.lower()).logic()
    app = getattr(slicer, "app", None)
    appLogic = app.applicationLogic() if app is not None else _APPLICATION_LOGIC
    return appLogic.GetModuleLogic(name) if appLogic is not None else None


def _scene():
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise RuntimeError("No MRML scene: run inside Slicer, or create one and assign slicer.mrmlScene")
    return scene


# ------------------------------------------------------------------ bookkeeping
def nodeIds() -> set[str]:
    """IDs of all nodes in the scene (to compare before/after)."""
    scene = _scene()
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _dependents(node) -> list:
    """Display, storage and (for a browser) proxy nodes that belong to ``node``."""
    out = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        out += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetNumberOfStorageNodes"):
        out += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        proxies = vtk.vtkCollection()
        node.GetAllProxyNodes(proxies)
        for i in range(proxies.GetNumberOfItems()):
            proxy = proxies.GetItemAsObject(i)
            out += [proxy] + _dependents(proxy)
    return [n for n in out if n is not None]


def removeNodes(nodes: Iterable) -> None:
    """Remove nodes with their display/storage nodes (and a browser's proxy nodes)."""
    scene = _scene()
    for node in list(nodes):
        if node is None or scene.GetNodeByID(node.GetID()) is None:
            continue
        for dep in _dependents(node):
            if scene.GetNodeByID(dep.GetID()) is not None:
                scene.RemoveNode(dep)
        if scene.GetNodeByID(node.GetID()) is not None:
            scene.RemoveNode(node)


def removeNodesAddedSince(before: set[str]) -> None:
    """Remove every node whose ID is not in ``before`` (and their subject-hierarchy items)."""
    scene = _scene()
    added = [scene.GetNodeByID(i) for i in sorted(nodeIds() - before)]
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    removeNodes(n for n in added if n is not None and n is not shNode)


def uniqueNodeName(baseName: str) -> str:
    """``baseName`` if no node has it yet, else ``baseName_1``, ``baseName_2`` ... (never overwrite)."""
    scene = _scene()
    if scene.GetFirstNodeByName(baseName) is None:
        return baseName
    return scene.GenerateUniqueName(baseName)


# ------------------------------------------------------------------ geometry
def ijkToRasArray(volumeNode) -> np.ndarray:
    """The node's IJKToRAS matrix as a 4x4 float64 array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtkMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _requireVolume(node, what: str) -> None:
    if node is None:
        raise ValueError(f"{what}: no node given")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLDiffusionTensorVolumeNode"):
        raise ValueError(
            f"{what}: '{node.GetName()}' is a {node.GetClassName()}; a scalar volume "
            "(vtkMRMLScalarVolumeNode) was expected"
        )
    if node.GetImageData() is None:
        raise ValueError(f"{what}: volume '{node.GetName()}' has no voxels")


def parentToWorldArray(node) -> np.ndarray:
    """4x4 matrix from the node's coordinates to world (RAS) through its parent transforms (identity if none).

    :raises ValueError: for a non-linear (grid, B-spline, thin-plate) transform, which cannot move a
        slice stack rigidly: harden it into the volume (resampling) or remove it.
    """
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise ValueError(
            f"'{node.GetName()}' is under the non-linear transform '{transformNode.GetName()}'. Slices can only be "
            "moved rigidly: harden the transform into the volume (Data module, right-click > Harden transform) or "
            "remove it."
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def worldIjkToRasArray(volumeNode) -> np.ndarray:
    """IJK to world RAS of a volume node: its parent transform (linear) times its IJKToRAS."""
    world = parentToWorldArray(volumeNode) @ ijkToRasArray(volumeNode)
    linear = world[:3, :3]
    if abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError(f"'{volumeNode.GetName()}': its transform makes the voxel grid degenerate")
    return world


#: where :func:`sliceThicknessWithSource` found the thickness (shown in the SVR panel)
THICKNESS_SOURCES = {
    "attribute": "set on the node (GaussianMRI.SliceThickness)",
    "DICOM": "DICOM Slice Thickness (0018,0050) of the source series",
    "header": "file header (NIfTI descrip, NRRD thicknesses, BIDS sidecar)",
    "spacing": "slice spacing (no thickness recorded)",
}


def sliceThicknessMm(volumeNode) -> float:
    """Acquired slice thickness of a stack in mm (see :func:`sliceThicknessWithSource`)."""
    return sliceThicknessWithSource(volumeNode)[0]


def sliceThicknessWithSource(volumeNode, dicomDatabase=None) -> tuple[float, str]:
    """``(thickness mm, source)``; ``source`` is a key of :data:`THICKNESS_SOURCES`.

    In order: the node attribute ``GaussianMRI.SliceThickness``; for a volume loaded from Slicer's
    DICOM database (node attribute ``DICOM.instanceUIDs``), the Slice Thickness of its instances
    (:func:`dicomSliceThicknessMm`); for a node loaded from a file, what the engine reads from that
    file (``gaussian_mri.image.read_image``): the NIfTI ``descrip`` tag ``slice_thickness=<mm>``, the
    NRRD ``thicknesses`` field, else ``SliceThickness`` of a BIDS JSON sidecar; last the spacing along
    ``k`` of the volume's own grid (a rigid parent transform does not change it).
    """
    value = volumeNode.GetAttribute("GaussianMRI.SliceThickness")
    if value:
        try:
            thickness = float(value)
            if thickness > 0:
                return thickness, "attribute"
        except ValueError:
            pass
    thickness = dicomSliceThicknessMm(volumeNode, dicomDatabase)
    if thickness is not None:
        return thickness, "DICOM"
    storage = volumeNode.GetStorageNode()
    fileName = storage.GetFileName() if storage is not None else None
    if fileName:
        path = Path(fileName)
        thickness = _fileHeaderThicknessMm(path)
        if thickness is not None:
            return thickness, "header"
        from gaussian_mri.image import sidecar_path  # numpy only, no torch

        sidecar = sidecar_path(path)
        if sidecar.is_file():
            try:
                thickness = json.loads(sidecar.read_text()).get("SliceThickness")
                if isinstance(thickness, (int, float)) and thickness > 0:
                    return float(thickness), "header"
            except (OSError, ValueError, AttributeError):
                pass
    return float(np.linalg.norm(ijkToRasArray(volumeNode)[:3, 2])), "spacing"


def dicomSliceThicknessMm(volumeNode, dicomDatabase=None) -> float | None:
    """Slice Thickness (0018,0050) of the DICOM instances a volume was loaded from, or ``None``.

    Slicer's DICOM scalar-volume plugin stores the SOP Instance UIDs of a loaded series in the node
    attribute ``DICOM.instanceUIDs`` (space separated); ``slicer.dicomDatabase.fileForInstance(uid)``
    gives each file (``""`` when the database does not know it). The headers of the first, middle and
    last instances (a long series is not opened file by file each time the panel asks) are read and
    their thickness taken as the engine does for a DICOM folder (``gaussian_mri.dicom_io``:
    instances that disagree give their median and a log line).
    """
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if len(uids) > 3:
        uids = [uids[0], uids[len(uids) // 2], uids[-1]]
    if not uids:
        return None
    database = dicomDatabase if dicomDatabase is not None else getattr(slicer, "dicomDatabase", None)
    if database is None:
        return None
    try:
        from gaussian_mri.dicom_io import dicom_headers, slice_thickness_of

        paths = [path for path in (database.fileForInstance(uid) for uid in uids) if path]
        return slice_thickness_of((ds for _path, ds in dicom_headers(paths)), f"'{volumeNode.GetName()}'")
    except ImportError:  # pydicom missing (Slicer bundles it)
        return None


_warnedNoPynrrd = False


def _fileHeaderThicknessMm(path: Path) -> float | None:
    """Slice thickness stored in an image header, as the engine reads it (``None`` when absent)."""
    global _warnedNoPynrrd
    import re

    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")) and path.is_file():
            import nibabel

            descrip = bytes(nibabel.load(str(path)).header.get("descrip", b"")).decode("latin-1", errors="ignore")
            match = re.search(r"slice_thickness=([0-9.eE+-]+)", descrip)
            thickness = float(match.group(1)) if match else None
            return thickness if thickness is not None and np.isfinite(thickness) and thickness > 0 else None
        if name.endswith((".nrrd", ".nhdr")) and path.is_file():
            from gaussian_mri.nrrd_io import nrrd_thickness  # the engine's NRRD reader (pynrrd)

            return nrrd_thickness(path)
    except ImportError as exc:
        if "nrrd" in str(exc) and not _warnedNoPynrrd:
            _warnedNoPynrrd = True
            logging.warning("GaussianMRI: pynrrd is not installed yet, so the NRRD 'thicknesses' field cannot be read; "
                            "Apply installs it, and the thickness of a stack is read again then (%s)", exc)
        return None
    except (OSError, ValueError):
        return None
    return None


def volumeNodeToImage(volumeNode, sliceThickness: float | None = None):
    """A scalar volume node as an engine :class:`gaussian_mri.image.Image` (copy of the voxels) in world
    coordinates: a linear parent transform is applied to the geometry (:func:`worldIjkToRasArray`)."""
    from gaussian_mri.image import Image

    _requireVolume(volumeNode, "Volume")
    data = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    return Image(data=data, affine=worldIjkToRasArray(volumeNode), slice_thickness=sliceThickness)


def writeVolumeNode(volumeNode, path: str | os.PathLike, sliceThickness: float | None = None) -> Path:
    """Write a scalar volume node to NIfTI/NRRD with its exact IJKToRAS (engine writer)."""
    from gaussian_mri.image import write_image

    return Path(write_image(volumeNodeToImage(volumeNode, sliceThickness), path))


def addVolumeNodeFromArray(
    array: np.ndarray, ijkToRas: np.ndarray, name: str, nodeClassName: str = "vtkMRMLScalarVolumeNode"
):
    """New volume node (unique name) with voxels ``array[k, j, i]`` and IJKToRAS ``ijkToRas``."""
    node = _scene().AddNewNodeByClass(nodeClassName, uniqueNodeName(name))
    updateVolumeNodeFromArray(node, array, ijkToRas)
    node.CreateDefaultDisplayNodes()
    return node


def updateVolumeNodeFromArray(node, array: np.ndarray, ijkToRas: np.ndarray) -> None:
    """Replace the voxels and geometry of an existing volume node."""
    array = np.asarray(array)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    elif array.dtype == bool:
        array = array.astype(np.uint8)
    node.SetIJKToRASMatrix(_vtkMatrix(np.asarray(ijkToRas, dtype=np.float64)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))


# ------------------------------------------------------------------ masks
def _overlaps(maskArray: np.ndarray, maskAffine: np.ndarray, stackNode) -> bool:
    """Does the bounding box of the mask's non-zero voxels meet the stack's voxel grid (world coordinates)?"""
    k, j, i = np.nonzero(maskArray)
    lo, hi = np.array([i.min(), j.min(), k.min()]) - 0.5, np.array([i.max(), j.max(), k.max()]) + 0.5
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    inStack = (np.linalg.inv(worldIjkToRasArray(stackNode)) @ maskAffine @ corners.T)[:3]
    dims = np.array(stackNode.GetImageData().GetDimensions(), dtype=float)
    return bool(np.all(inStack.max(axis=1) >= -0.5) and np.all(inStack.min(axis=1) <= dims - 0.5))


def maskImage(maskNode, stackNode):
    """A mask node as an engine :class:`gaussian_mri.image.Image` (uint8) for ``stackNode``, in world coordinates.

    A labelmap (or scalar) volume keeps its own grid, with its parent transform applied (the engine
    resamples each mask onto its stack). A segmentation is exported (visible segments) through the
    Segmentations logic onto the stack's grid, which accounts for the parent transforms of both;
    the temporary labelmap is removed afterwards.
    """
    from gaussian_mri.image import Image

    ref = stackNode.GetName()
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        before = nodeIds()
        try:
            labelmap = _scene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__GaussianMRI_temp_mask__")
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(maskNode, labelmap, stackNode)
            if not ok:
                raise ValueError(f"Mask '{maskNode.GetName()}': export of its segments onto '{ref}' failed")
            array = np.array(slicer.util.arrayFromVolume(labelmap), copy=True)
        finally:
            removeNodesAddedSince(before)
        if array.shape != slicer.util.arrayFromVolume(stackNode).shape:
            raise ValueError(f"Mask '{maskNode.GetName()}': exported labelmap does not match the grid of '{ref}'")
        if not array.any():
            raise ValueError(f"Mask '{maskNode.GetName()}' is empty on stack '{ref}' (no visible segment overlaps it)")
        return Image(data=(array > 0).astype(np.uint8), affine=worldIjkToRasArray(stackNode))
    if maskNode.IsA("vtkMRMLScalarVolumeNode") and maskNode.GetImageData() is not None:
        array = slicer.util.arrayFromVolume(maskNode) > 0
        if not array.any():
            raise ValueError(f"Mask '{maskNode.GetName()}' of stack '{ref}' is empty (no voxel > 0)")
        affine = worldIjkToRasArray(maskNode)
        if not _overlaps(array, affine, stackNode):
            raise ValueError(
                f"Mask '{maskNode.GetName()}' does not overlap stack '{ref}' in world coordinates: check that the mask "
                "belongs to this stack and that both are under the same transform."
            )
        return Image(data=array.astype(np.uint8), affine=affine)
    raise ValueError(
        f"Mask '{maskNode.GetName()}' is a {maskNode.GetClassName()}; a labelmap volume or a segmentation was expected"
    )


# ------------------------------------------------------------------ other outputs
def addTensorVolumeNode(tensors: np.ndarray, ijkToRas: np.ndarray, name: str):
    """New ``vtkMRMLDiffusionTensorVolumeNode`` from ``tensors[k, j, i, 3, 3]`` given in RAS."""
    import vtk.util.numpy_support as nps

    tensors = np.asarray(tensors, dtype=np.float32)
    if tensors.ndim != 5 or tensors.shape[3:] != (3, 3):
        raise ValueError(f"tensors must have shape (K, J, I, 3, 3), got {tensors.shape}")
    K, J, I = tensors.shape[:3]
    image = vtk.vtkImageData()
    image.SetDimensions(I, J, K)
    flat = np.ascontiguousarray(tensors.reshape(-1, 9))
    array = nps.numpy_to_vtk(flat, deep=1, array_type=vtk.VTK_FLOAT)
    array.SetName("tensors")
    image.GetPointData().SetTensors(array)
    node = _scene().AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", uniqueNodeName(name))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_vtkMatrix(ijkToRas))
    node.SetMeasurementFrameMatrix(_vtkMatrix(np.eye(4)))
    node.CreateDefaultDisplayNodes()
    return node


def readTensorVolumeNode(path: str | os.PathLike, name: str):
    """Read a tensor NRRD (kinds ``3D-masked-symmetric-matrix``, ``3D-symmetric-matrix``, ``3D-matrix``)
    into a new tensor node, with the engine's NRRD reader (``gaussian_mri.nrrd_io``, pynrrd: the space
    and measurement frame applied, a truncated or damaged file refused), components in RAS.
    """
    from gaussian_mri.nrrd_io import read_tensor_nrrd

    try:
        tensors, ijkToRas = read_tensor_nrrd(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"Could not read a tensor volume from {path}: {exc}") from exc
    return addTensorVolumeNode(tensors, ijkToRas, name)


def tensorArrayRas(tensorNode) -> np.ndarray:
    """Tensors ``[k, j, i, 3, 3]`` of a tensor volume node in RAS (its measurement frame applied).

    Slicer keeps the tensors of a node read from NRRD in the image frame with
    ``MeasurementFrame`` = the RAS directions; this returns ``M D M^T``.
    """
    matrix = vtk.vtkMatrix4x4()
    tensorNode.GetMeasurementFrameMatrix(matrix)
    M = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    D = np.asarray(slicer.util.arrayFromVolume(tensorNode), dtype=np.float64)
    return np.einsum("ab,...bc,dc->...ad", M, D, M)


def addTableNode(columns: dict[str, np.ndarray], name: str):
    """New table node with one numeric column per entry (names kept, order kept)."""
    node = _scene().AddNewNodeByClass("vtkMRMLTableNode", uniqueNodeName(name))
    table = node.GetTable()
    for columnName, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "iub":
            array = vtk.vtkIntArray()
            cast = int
        elif values.dtype.kind == "f":
            array = vtk.vtkDoubleArray()
            cast = float
        else:
            array = vtk.vtkStringArray()
            cast = str
        array.SetName(columnName)
        array.SetNumberOfValues(len(values))
        for i, v in enumerate(values):
            array.SetValue(i, cast(v))
        table.AddColumn(array)
    node.Modified()
    return node


def addPointCloudModelNode(points: np.ndarray, name: str, pointArrays: dict[str, np.ndarray] | None = None):
    """New model node: one vertex per point (RAS mm), with optional per-point data arrays."""
    import vtk.util.numpy_support as nps

    points = np.ascontiguousarray(np.asarray(points, dtype=np.float32).reshape(-1, 3))
    n = len(points)
    vtkPoints = vtk.vtkPoints()
    vtkPoints.SetData(nps.numpy_to_vtk(points, deep=1))
    cells = vtk.vtkCellArray()
    offsets = nps.numpy_to_vtkIdTypeArray(np.arange(n + 1, dtype=nps.ID_TYPE_CODE), deep=1)
    connectivity = nps.numpy_to_vtkIdTypeArray(np.arange(n, dtype=nps.ID_TYPE_CODE), deep=1)
    cells.SetData(offsets, connectivity)
    polyData = vtk.vtkPolyData()
    polyData.SetPoints(vtkPoints)
    polyData.SetVerts(cells)
    for arrayName, values in (pointArrays or {}).items():
        values = np.ascontiguousarray(np.asarray(values, dtype=np.float32).reshape(n, -1))
        array = nps.numpy_to_vtk(values if values.shape[1] > 1 else values[:, 0], deep=1)
        array.SetName(arrayName)
        polyData.GetPointData().AddArray(array)
    node = _scene().AddNewNodeByClass("vtkMRMLModelNode", uniqueNodeName(name))
    node.SetAndObservePolyData(polyData)
    node.CreateDefaultDisplayNodes()
    return node


# ------------------------------------------------------------------ subject hierarchy
def createOutputFolder(name: str, besideNode=None) -> int:
    """New subject-hierarchy folder (unique name among its siblings) and its item ID.

    It is placed under the parent of ``besideNode`` (e.g. the input's study) when that node is in
    the hierarchy, else at the top level.
    """
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(_scene())
    parent = shNode.GetSceneItemID()
    if besideNode is not None:
        item = shNode.GetItemByDataNode(besideNode)
        if item:
            parent = shNode.GetItemParent(item) or parent
    children = vtk.vtkIdList()
    shNode.GetItemChildren(parent, children)
    siblings = {shNode.GetItemName(children.GetId(i)) for i in range(children.GetNumberOfIds())}
    unique, index = name, 1
    while unique in siblings:
        unique = f"{name}_{index}"
        index += 1
    return shNode.CreateFolderItem(parent, unique)


def moveToFolder(nodes: Sequence, folderItemId: int) -> None:
    """Put data nodes under a folder (creating their items when the hierarchy has none yet)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(_scene())
    for node in nodes:
        if node is None:
            continue
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, folderItemId)
        else:
            shNode.CreateItem(folderItemId, node)
