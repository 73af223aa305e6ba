"""GaussianSVR logic on a real MRML scene (slicer-core) with real fetal stacks and a stand-in engine."""

from __future__ import annotations

import time

import numpy as np
import pytest

import slicer
from GaussianSVRLib import (
    EngineCancelled,
    EngineError,
    GaussianSVRLogic,
    JobState,
    SVRParameters,
    buildSVRCommand,
)
from GaussianSVRLib import nodes as N


def _count(scene) -> int:
    return scene.GetNumberOfNodes()


def test_conversion_round_trip_keeps_ijk_to_ras_and_values(scene, fetalStacks, fetalStackPaths, tmp_path):
    import nibabel as nib
    from gaussian_mri.image import read_image

    node = fetalStacks[0]
    image = N.volumeNodeToImage(node)
    np.testing.assert_allclose(image.affine, nib.load(fetalStackPaths[0]).affine, atol=1e-4)
    assert image.data.shape == tuple(reversed(node.GetImageData().GetDimensions()))
    path = N.writeVolumeNode(node, tmp_path / "stack.nii.gz", sliceThickness=3.0)
    back = read_image(path)
    np.testing.assert_array_equal(back.data, slicer.util.arrayFromVolume(node))
    np.testing.assert_allclose(back.affine, N.ijkToRasArray(node), atol=1e-6)
    assert back.slice_thickness == pytest.approx(3.0)
    copy = N.addVolumeNodeFromArray(back.data, back.affine, node.GetName())
    assert copy.GetName() != node.GetName()  # never reuses an existing name
    np.testing.assert_allclose(N.ijkToRasArray(copy), back.affine, atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(copy), back.data)


def test_thickness_comes_from_bids_sidecar_else_spacing(scene, fetalStacks):
    assert N.sliceThicknessMm(fetalStacks[0]) == pytest.approx(3.0)  # SliceThickness 3, spacing 3.3
    volume = N.addVolumeNodeFromArray(np.zeros((4, 5, 6), np.float32), np.diag([1.0, 1.0, 2.5, 1.0]), "synthetic")
    assert N.sliceThicknessMm(volume) == pytest.approx(2.5)


def test_build_command_lists_every_option(tmp_path):
    p = SVRParameters(resolutionMm=0.6, motion="stack", robust=False, biasField=True, preset="fast",
                      nGaussians=1000, iterations=50, device="cpu", referenceStack=1, maps=True, seed=3)
    cmd = buildSVRCommand(["a.nii.gz", "b.nii.gz"], tmp_path, p, maskPaths=["ma.nii.gz", "mb.nii.gz"],
                          thicknesses=[3.0, 2.5], enginePrefix=["py", "-m", "gaussian_mri"])
    assert cmd[:6] == ["py", "-m", "gaussian_mri", "svr", "--stacks", "a.nii.gz"]
    text = " ".join(cmd)
    for piece in ("--masks ma.nii.gz mb.nii.gz", "--thickness 3 2.5", f"--output-dir {tmp_path}", "--resolution 0.6",
                  "--motion stack", "--psf-inplane 1.2 --psf-through 1", "--no-robust", "--bias-field", "--preset fast",
                  "--n-gaussians 1000", "--iterations 50", "--device cpu", "--reference-stack 1", "--maps",
                  "--seed 3"):
        assert piece in text
    assert cmd[-1] == "--progress-json"
    default = " ".join(buildSVRCommand(["a"], tmp_path, SVRParameters(), enginePrefix=["py"]))
    assert "--no-robust" not in default and "--n-gaussians" not in default and "--reference-stack" not in default


def test_run_creates_all_outputs_in_one_folder(scene, fetalStacks, fakeEngine):
    progress = []
    logic = GaussianSVRLogic(enginePrefix=fakeEngine)
    out = logic.run(stacks=fetalStacks, masks=[None] * 3, maps=True, loadGaussians=True, preset="fast",
                    onProgress=progress.append, timeoutS=120)
    assert progress and progress[-1].iteration == progress[-1].total == 6
    assert out.volume.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert out.volume.GetName() == "sub-01_run SVR"
    assert out.mask.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert out.tensor.GetClassName() == "vtkMRMLDiffusionTensorVolumeNode"
    assert out.table.GetClassName() == "vtkMRMLTableNode"
    assert out.gaussians.GetClassName() == "vtkMRMLModelNode"
    # geometry = the engine's affine
    expected = np.eye(4)
    ref = N.ijkToRasArray(fetalStacks[0])
    direction = ref[:3, :3] / np.linalg.norm(ref[:3, :3], axis=0)
    expected[:3, :3] = direction * 0.8
    expected[:3, 3] = ref[:3, 3]
    for node in (out.volume, out.mask, out.scaleMap, out.anisotropyMap):
        np.testing.assert_allclose(N.ijkToRasArray(node), expected, atol=1e-5)
        assert slicer.util.arrayFromVolume(node).shape == (12, 14, 16)
    np.testing.assert_allclose(N.ijkToRasArray(out.tensor), expected, atol=1e-5)
    tensors = N.tensorArrayRas(out.tensor)
    assert tensors.shape == (12, 14, 16, 3, 3)
    np.testing.assert_allclose(tensors[3, 4, 5], [[3, 0.5, 0], [0.5, 2, 0], [0, 0, 1]], atol=1e-6)
    # per-slice table
    nSlices = sum(s.GetImageData().GetDimensions()[2] for s in fetalStacks)
    assert out.table.GetNumberOfRows() == nSlices
    assert out.table.GetTable().GetColumnByName("r11") is not None
    assert out.table.GetTable().GetColumnByName("stack name").GetValue(0) == fetalStacks[0].GetName()
    assert out.gaussians.GetPolyData().GetNumberOfPoints() == 50
    # all in one folder
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemName(out.folderItemId) == "GaussianSVR sub-01_run"
    for node in out.nodes():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == out.folderItemId
    assert not [n for n in slicer.util.getNodes("*preview*").values()]


def test_second_run_never_overwrites(scene, fetalStacks, fakeEngine):
    logic = GaussianSVRLogic(enginePrefix=fakeEngine)
    first = logic.run(stacks=fetalStacks[:1], timeoutS=120)
    second = logic.run(stacks=fetalStacks[:1], timeoutS=120)
    assert first.volume.GetID() != second.volume.GetID()
    assert first.volume.GetName() != second.volume.GetName()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemName(first.folderItemId) != sh.GetItemName(second.folderItemId)


@pytest.mark.parametrize("mode, error, match", [
    ("fail", EngineError, "out of memory"),
    ("crash", EngineError, "exit code 1"),
    ("nooutput", EngineError, "recon.nii.gz"),
])
def test_failed_run_leaves_scene_unchanged(scene, fetalStacks, fakeEngine, monkeypatch, mode, error, match):
    monkeypatch.setenv("GAUSSIAN_MRI_FAKE_MODE", mode)
    before = N.nodeIds()
    with pytest.raises(error, match=match):
        GaussianSVRLogic(enginePrefix=fakeEngine).run(stacks=fetalStacks[:2], maps=True, timeoutS=120)
    assert N.nodeIds() == before


def test_cancel_removes_preview_and_leaves_scene_unchanged(scene, fetalStacks, fakeEngine, monkeypatch):
    monkeypatch.setenv("GAUSSIAN_MRI_FAKE_MODE", "slow")
    logic = GaussianSVRLogic(enginePrefix=fakeEngine)
    before = N.nodeIds()
    job = logic.prepare(fetalStacks[:1])
    logic.start(job)
    deadline = time.monotonic() + 60
    while job.previewNode is None and time.monotonic() < deadline:  # what the widget's QTimer does
        job.process.poll()
        time.sleep(0.05)
    assert job.previewNode is not None and "preview" in job.previewNode.GetName()
    np.testing.assert_allclose(N.ijkToRasArray(job.previewNode)[:3, 3], N.ijkToRasArray(fetalStacks[0])[:3, 3])
    logic.cancel(job)
    assert job.process.state == JobState.CANCELLED
    with pytest.raises(EngineCancelled):
        logic.finish(job)
    assert N.nodeIds() == before
    assert not job.workDir.exists()


def test_timeout_in_blocking_mode_stops_engine(scene, fetalStacks, fakeEngine, monkeypatch):
    monkeypatch.setenv("GAUSSIAN_MRI_FAKE_MODE", "slow")
    before = N.nodeIds()
    with pytest.raises(TimeoutError):
        GaussianSVRLogic(enginePrefix=fakeEngine).run(stacks=fetalStacks[:1], timeoutS=1.0)
    assert N.nodeIds() == before


def test_bad_inputs_have_clear_messages(scene, fetalStacks):
    logic = GaussianSVRLogic(enginePrefix=["unused"])
    with pytest.raises(ValueError, match="No stack selected"):
        logic.prepare([])
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    with pytest.raises(ValueError, match="'a model' is a vtkMRMLModelNode; a scalar volume"):
        logic.prepare([fetalStacks[0], model])
    other = N.addVolumeNodeFromArray(np.ones((5, 6, 7), np.uint8), np.eye(4), "small mask", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="'small mask' is on another grid than stack"):
        logic.prepare([fetalStacks[0]], masks=[other])
    with pytest.raises(ValueError, match="2 masks for 1 stacks"):
        logic.prepare([fetalStacks[0]], masks=[None, None])
    with pytest.raises(ValueError, match="Motion model"):
        logic.prepare([fetalStacks[0]], motion="rigid")
    with pytest.raises(ValueError, match="Reference stack 3 does not exist"):
        logic.prepare(fetalStacks[:2], referenceStack=2)
    flat = N.addVolumeNodeFromArray(np.zeros((1, 1, 50), np.float32), np.eye(4), "line")
    with pytest.raises(ValueError, match="a 3D stack of 2D slices"):
        logic.prepare([flat])


def test_segmentation_and_labelmap_masks_become_mask_files(scene, fetalStacks, fakeEngine):
    from gaussian_mri.image import read_image

    stack = fetalStacks[0]
    shape = slicer.util.arrayFromVolume(stack).shape
    label = np.zeros(shape, np.uint8)
    label[5:15, 100:200, 120:220] = 1
    labelNode = N.addVolumeNodeFromArray(label, N.ijkToRasArray(stack), "brain label", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(stack)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation)
    before = N.nodeIds()
    logic = GaussianSVRLogic(enginePrefix=fakeEngine)
    job = logic.prepare(fetalStacks[:3], masks=[labelNode, segmentation, None])
    job2 = logic.prepare(fetalStacks[:1], masks=[segmentation])
    try:
        assert N.nodeIds() == before  # temporary export nodes removed
        masks = [read_image(job.workDir / f"mask_{i:02d}.nii.gz") for i in range(3)]
        np.testing.assert_array_equal(masks[0].data, label)
        # the segmentation, exported onto stack 2 (another grid), covers part of it
        np.testing.assert_allclose(masks[1].affine, N.ijkToRasArray(fetalStacks[1]), atol=1e-6)
        assert masks[1].data.shape == slicer.util.arrayFromVolume(fetalStacks[1]).shape and masks[1].data.any()
        assert masks[2].data.all()  # stack without a mask: everything
        assert "--masks" in job.command
        same = read_image(job2.workDir / "mask_00.nii.gz").data
        np.testing.assert_array_equal(same, label)  # same grid: exact
    finally:
        import shutil

        shutil.rmtree(job.workDir)
        shutil.rmtree(job2.workDir)
