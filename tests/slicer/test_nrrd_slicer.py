"""NRRD files of the engine (pynrrd, ``gaussian_mri.nrrd_io``) open in 3D Slicer as what they are.

Opened through ``vtkSlicerVolumesLogic.AddArchetypeVolume`` (what File > Add Data does, teem's NRRD
reader behind it) on a real MRML scene (slicer-core): a tensor file becomes a
``vtkMRMLDiffusionTensorVolumeNode``, a vector file a ``vtkMRMLVectorVolumeNode``, a scalar file a
scalar volume, each with the engine's IJKToRAS and values. And the other way round: a tensor file
in another frame (LPS, rotated measurement frame) reads in the engine as Slicer reads it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import slicer
from GaussianMRILib import nodes as N


def _oblique(spacing=(0.7, 0.9, 2.5)) -> np.ndarray:
    c, s = math.cos(0.4), math.sin(0.4)
    rot = np.array([[c, -s, 0.0], [s * 0.8, c * 0.8, 0.6], [-s * 0.6, -c * 0.6, 0.8]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)[None, :]
    affine[:3, 3] = (10.5, -20.25, 31.0)
    return affine


def _tensors(shape=(3, 4, 5), seed=0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((*shape, 3, 3))
    return (a + np.swapaxes(a, -1, -2)).astype(np.float32)


def test_tensor_nrrd_opens_as_a_tensor_volume(scene, volumesLogic, tmp_path):
    from gaussian_mri.nrrd_io import write_tensor_nrrd

    tensors, affine = _tensors(), _oblique()
    path = write_tensor_nrrd(tmp_path / "tensor.nrrd", tensors, affine)
    node = volumesLogic.AddArchetypeVolume(str(path), "tensor", 0)
    assert node is not None and node.GetClassName() == "vtkMRMLDiffusionTensorVolumeNode"
    np.testing.assert_allclose(N.ijkToRasArray(node), affine, atol=1e-12)
    np.testing.assert_allclose(N.tensorArrayRas(node), tensors, atol=1e-6)
    # the module's loader (engine reader) gives the same node content
    ours = N.readTensorVolumeNode(path, "tensor (module)")
    assert ours.GetClassName() == "vtkMRMLDiffusionTensorVolumeNode"
    np.testing.assert_allclose(N.ijkToRasArray(ours), affine, atol=1e-12)
    np.testing.assert_array_equal(N.tensorArrayRas(ours), tensors)


def test_vector_nrrd_opens_as_a_vector_volume(scene, volumesLogic, tmp_path):
    from gaussian_mri.nrrd_io import read_nrrd, write_vector_nrrd

    vectors = np.random.default_rng(1).standard_normal((3, 4, 5, 3)).astype(np.float32)
    affine = _oblique()
    path = write_vector_nrrd(tmp_path / "vectors.nrrd", vectors, affine)
    node = volumesLogic.AddArchetypeVolume(str(path), "vectors", 0)
    assert node is not None and node.GetClassName() == "vtkMRMLVectorVolumeNode"
    assert node.GetImageData().GetNumberOfScalarComponents() == 3
    np.testing.assert_allclose(N.ijkToRasArray(node), affine, atol=1e-12)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), vectors)
    back = read_nrrd(path)
    assert back.kinds == ["vector"]
    np.testing.assert_array_equal(back.data, vectors)
    np.testing.assert_allclose(back.measurement_frame, np.eye(3))


def test_scalar_nrrd_opens_with_its_geometry_and_the_panel_reads_its_thickness(scene, volumesLogic, tmp_path):
    from gaussian_mri.image import Image, write_image

    data = np.random.default_rng(2).random((6, 7, 8)).astype(np.float32)
    affine = _oblique(spacing=(0.8, 0.8, 3.3))
    path = write_image(Image(data, affine, slice_thickness=4.5), tmp_path / "stack.nrrd")
    node = volumesLogic.AddArchetypeVolume(str(path), "stack", 0)
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    np.testing.assert_allclose(N.ijkToRasArray(node), affine, atol=1e-12)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), data)
    assert N.sliceThicknessWithSource(node) == (pytest.approx(4.5), "header")  # not the 3.3 mm spacing


def test_tensor_nrrd_in_another_frame_reads_as_slicer_reads_it(scene, volumesLogic, tmp_path):
    """An LPS file with a rotated measurement frame (NRRD: its vectors are the matrix columns)."""
    import nrrd

    from gaussian_mri.nrrd_io import read_tensor_nrrd

    tensors, affine = _tensors(seed=4), _oblique()
    rotation = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])
    lps = np.diag([-1.0, -1.0, 1.0])
    values = np.stack([np.ones(tensors.shape[:3], np.float32), tensors[..., 0, 0], tensors[..., 0, 1], tensors[..., 0, 2],
                       tensors[..., 1, 1], tensors[..., 1, 2], tensors[..., 2, 2]], -1)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.vstack([np.full(3, np.nan), (lps @ affine[:3, :3]).T]),
        "space origin": lps @ affine[:3, 3],
        "kinds": ["3D-masked-symmetric-matrix", "domain", "domain", "domain"],
        "measurement frame": rotation,
    }
    nrrd.write(str(tmp_path / "foreign.nrrd"), np.ascontiguousarray(values), header, index_order="C")
    node = volumesLogic.AddArchetypeVolume(str(tmp_path / "foreign.nrrd"), "foreign", 0)
    assert node.GetClassName() == "vtkMRMLDiffusionTensorVolumeNode"
    inSlicer = N.tensorArrayRas(node)
    ours, oursAffine = read_tensor_nrrd(tmp_path / "foreign.nrrd")
    np.testing.assert_allclose(oursAffine, N.ijkToRasArray(node), atol=1e-12)
    np.testing.assert_allclose(ours, inSlicer, atol=1e-5)
    frame = lps @ rotation.T  # columns = the measurement-frame vectors, then LPS -> RAS
    np.testing.assert_allclose(ours, np.einsum("ab,...bc,dc->...ad", frame, tensors, frame), atol=1e-5)
    assert np.abs(ours - tensors).max() > 0.1  # the frame matters: a reader ignoring it fails here


def test_the_file_readers_the_panels_call_need_no_torch():
    """nodes.py calls the engine's NRRD and DICOM readers in Slicer's GUI process, which must not import torch."""
    import subprocess
    import sys

    code = ("import sys, gaussian_mri.nrrd_io, gaussian_mri.dicom_io, gaussian_mri.svr.files; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
