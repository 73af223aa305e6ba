"""Stack geometry as Slicer holds it: parent transforms, DICOM slice thickness (real MRML, real engine)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import slicer
from GaussianMRILib import nodes as N
from GaussianSVRLib import GaussianSVRLogic

TINY = dict(preset="fast", iterations=5, nGaussians=300, resolutionMm=2.0, device="cpu", motion="none",
            stackAlignment=False, seed=3)


def _rigid(degrees: float, axis, translation) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K
    matrix[:3, 3] = translation
    return matrix


def _linearTransform(scene, matrix: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def test_world_geometry_applies_parent_transforms(scene, demoStacks):
    stacks, _masks = demoStacks
    T1, T2 = _rigid(20, (1, 2, 3), (10, -5, 7)), _rigid(-15, (0, 0, 1), (3, 4, 5))
    outer = _linearTransform(scene, T1, "outer")
    inner = _linearTransform(scene, T2, "inner")
    inner.SetAndObserveTransformNodeID(outer.GetID())  # nested: world = T1 @ T2 @ IJKToRAS
    stacks[0].SetAndObserveTransformNodeID(inner.GetID())
    np.testing.assert_allclose(N.worldIjkToRasArray(stacks[0]), T1 @ T2 @ N.ijkToRasArray(stacks[0]), atol=1e-9)
    image = N.volumeNodeToImage(stacks[0], 3.0)
    np.testing.assert_allclose(image.affine, T1 @ T2 @ N.ijkToRasArray(stacks[0]), atol=1e-9)
    # a rigid transform does not change the slice spacing used as the last-resort thickness
    plain = N.addVolumeNodeFromArray(np.zeros((4, 5, 6), np.float32), np.diag([1.0, 1.0, 2.5, 1.0]), "no header")
    plain.SetAndObserveTransformNodeID(inner.GetID())
    assert N.sliceThicknessWithSource(plain) == (pytest.approx(2.5), "spacing")


def test_non_linear_transform_is_refused_with_advice(scene, demoStacks):
    stacks, _masks = demoStacks
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    stacks[0].SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(ValueError, match="non-linear transform 'warp'.*harden"):
        N.volumeNodeToImage(stacks[0])


def test_reconstruction_lands_where_the_transformed_stacks_are(scene, demoStacks, engine, tmp_path):
    """Same stacks and masks, once as loaded and once under a rotated + translated transform: the output
    grid moves with the transform and the voxels are the same reconstruction."""
    stacks, masks = demoStacks
    logic = GaussianSVRLogic(enginePrefix=engine)
    logic.temporaryRoot = str(tmp_path)
    plain = logic.run(stacks=stacks, masks=masks, timeoutS=600, **TINY)
    T = _rigid(25, (1, -1, 2), (12.0, -8.0, 5.0))
    transform = _linearTransform(scene, T, "patient moved")
    for node in stacks + masks:
        node.SetAndObserveTransformNodeID(transform.GetID())
    moved = logic.run(stacks=stacks, masks=masks, timeoutS=600, **TINY)
    assert moved.volume.GetParentTransformNode() is None  # outputs are in world coordinates
    np.testing.assert_allclose(N.ijkToRasArray(moved.volume), T @ N.ijkToRasArray(plain.volume), atol=1e-3)
    a = slicer.util.arrayFromVolume(plain.volume).astype(np.float64)
    b = slicer.util.arrayFromVolume(moved.volume).astype(np.float64)
    assert a.shape == b.shape
    ncc = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert ncc > 0.99, ncc
    # the mask followed the stacks too
    np.testing.assert_allclose(N.ijkToRasArray(moved.mask), T @ N.ijkToRasArray(plain.mask), atol=1e-3)


def test_mask_under_its_own_transform_is_placed_in_world(scene, demoStacks):
    stacks, masks = demoStacks
    T = _rigid(10, (0, 1, 0), (0.0, 2.0, 0.0))
    transform = _linearTransform(scene, T, "mask only")
    masks[0].SetAndObserveTransformNodeID(transform.GetID())
    image = N.maskImage(masks[0], stacks[0])
    np.testing.assert_allclose(image.affine, T @ N.ijkToRasArray(masks[0]), atol=1e-9)


# ------------------------------------------------------------------------------------------ DICOM thickness
class DicomDatabaseStandIn:
    """The one call of ctkDICOMDatabase (CTK, Libs/DICOM/Core) used here: ``fileForInstance(sopInstanceUID)``
    returns the file path of an instance, an empty string when the database does not know it."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")


def _writeSeries(folder, thicknesses, spacing=3.3):
    """A small axial MR series (pydicom), one file per slice; returns ``{SOPInstanceUID: path}``."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    files = {}
    series = generate_uid()
    for index, thickness in enumerate(thicknesses):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice{index:02d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "MR"
        ds.SliceThickness = f"{thickness:g}"
        ds.SpacingBetweenSlices = f"{spacing:g}"
        ds.ImagePositionPatient = [0, 0, index * spacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
        if int(pydicom.__version__.split(".")[0]) >= 3:
            ds.save_as(str(path), enforce_file_format=True)
        else:  # pydicom 2.x (Slicer 5.10 bundles 2.4.4)
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(str(path), write_like_original=False)
        files[ds.SOPInstanceUID] = str(path)
    return files


def _dicomVolume(files: dict, spacing=3.3):
    node = N.addVolumeNodeFromArray(np.zeros((len(files), 8, 8), np.float32), np.diag([1.0, 1.0, spacing, 1.0]), "dicom stack")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(files))  # as Slicer's DICOMScalarVolumePlugin sets it
    return node


def test_thickness_from_dicom_database_then_header_then_spacing(scene, demoStacks, tmp_path, monkeypatch):
    files = _writeSeries(tmp_path, [4.0] * 5)
    node = _dicomVolume(files)
    database = DicomDatabaseStandIn(files)
    assert N.sliceThicknessWithSource(node, dicomDatabase=database) == (pytest.approx(4.0), "DICOM")
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)  # what Slicer provides
    assert N.sliceThicknessWithSource(node) == (pytest.approx(4.0), "DICOM")
    assert N.sliceThicknessMm(node) == pytest.approx(4.0)
    # the database no longer has the files (moved): fall back to the spacing, which says so
    assert N.sliceThicknessWithSource(node, dicomDatabase=DicomDatabaseStandIn({})) == (pytest.approx(3.3), "spacing")
    monkeypatch.delattr(slicer, "dicomDatabase")
    assert N.sliceThicknessWithSource(node) == (pytest.approx(3.3), "spacing")
    # a stack from a file with a thickness in its header; an explicit node attribute wins over everything
    stacks, _masks = demoStacks
    assert N.sliceThicknessWithSource(stacks[0]) == (pytest.approx(3.0), "header")
    node.SetAttribute("GaussianMRI.SliceThickness", "2.5")
    assert N.sliceThicknessWithSource(node, dicomDatabase=database) == (pytest.approx(2.5), "attribute")


def test_inconsistent_dicom_thickness_uses_the_median_and_says_so(scene, tmp_path, caplog):
    files = _writeSeries(tmp_path, [4.0, 4.0, 5.0, 4.0])
    node = _dicomVolume(files)
    with caplog.at_level(logging.WARNING):
        assert N.dicomSliceThicknessMm(node, DicomDatabaseStandIn(files)) == pytest.approx(4.0)
    assert "varies between instances" in caplog.text


def test_svr_prepare_writes_the_dicom_thickness(scene, tmp_path, monkeypatch):
    """The thickness the engine gets is the DICOM one (not the 3.3 mm spacing)."""
    files = _writeSeries(tmp_path, [4.0] * 12)
    node = N.addVolumeNodeFromArray(np.random.default_rng(0).random((12, 16, 16), dtype=np.float32) * 100,
                                    np.diag([1.0, 1.0, 3.3, 1.0]), "dicom stack")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(files))
    monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabaseStandIn(files), raising=False)
    logic = GaussianSVRLogic(enginePrefix=["unused"])
    logic.temporaryRoot = str(tmp_path)
    job = logic.prepare([node], **TINY)
    try:
        assert job.command[job.command.index("--thickness") + 1] == "4"
    finally:
        import shutil

        shutil.rmtree(job.workDir, ignore_errors=True)
