"""GaussianSVR logic on a real MRML scene (slicer-core) with real fetal stacks and the real engine.

Engine runs use tiny settings (``--preset fast --iterations 5 --n-gaussians 300 --resolution 2``,
CPU) on the bundled cropped stacks; failures are real engine failures and cancel stops a real run.
"""

from __future__ import annotations

import shutil
import time

import nibabel as nib
import numpy as np
import pytest

import slicer
from GaussianSVRLib import (
    ENGINE_OUTPUT_FILES,
    EngineCancelled,
    EngineError,
    GaussianSVRLogic,
    JobState,
    SVRParameters,
    buildSVRCommand,
)
from GaussianMRILib import nodes as N

TINY = dict(preset="fast", iterations=5, nGaussians=300, resolutionMm=2.0, device="cpu")


def _logic(engine, tmp_path) -> GaussianSVRLogic:
    logic = GaussianSVRLogic(enginePrefix=engine)
    logic.temporaryRoot = str(tmp_path)
    return logic


def _runKeepingFiles(logic, *args, **kwargs):
    """prepare + start + wait + finish (what the widget does), keeping the engine's files."""
    progress = []
    job = logic.prepare(*args, **kwargs)
    job.keepFiles = True
    logic.start(job, onProgress=progress.append)
    job.process.wait(timeoutS=300)
    return job, progress


def test_conversion_round_trip_keeps_ijk_to_ras_and_values(scene, fetalStacks, fetalStackPaths, tmp_path):
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


def test_thickness_is_what_the_engine_reads(scene, fetalStacks, demoStacks, demoStackPaths):
    from gaussian_mri.image import read_image

    assert N.sliceThicknessMm(fetalStacks[0]) == pytest.approx(3.0)  # BIDS sidecar SliceThickness 3, spacing 3.3
    stack = demoStacks[0][0]  # bundled stack: `slice_thickness=3` in the NIfTI descrip, no sidecar
    assert N.sliceThicknessMm(stack) == pytest.approx(read_image(demoStackPaths[0][0]).slice_thickness) == pytest.approx(3.0)
    volume = N.addVolumeNodeFromArray(np.zeros((4, 5, 6), np.float32), np.diag([1.0, 1.0, 2.5, 1.0]), "synthetic")
    assert N.sliceThicknessMm(volume) == pytest.approx(2.5)
    volume.SetAttribute("GaussianMRI.SliceThickness", "2")
    assert N.sliceThicknessMm(volume) == pytest.approx(2.0)


def test_build_command_lists_every_option(tmp_path):
    p = SVRParameters(resolutionMm=0.6, motion="stack", robust=False, biasField=True, preset="fast", severeMotion=True, noiseAware=False,
                      nGaussians=1000, iterations=50, device="cpu", referenceStack=1, maps=True, seed=3,
                      stackAlignment=False)
    cmd = buildSVRCommand(["a.nii.gz", "b.nii.gz"], tmp_path, p, maskPaths=["ma.nii.gz", None],
                          thicknesses=[3.0, 2.5], enginePrefix=["py", "-m", "gaussian_mri"])
    assert cmd[:6] == ["py", "-m", "gaussian_mri", "svr", "--stacks", "a.nii.gz"]
    text = " ".join(cmd)
    for piece in ("--masks ma.nii.gz none", "--thickness 3 2.5", f"--output-dir {tmp_path}", "--resolution 0.6",
                  "--motion stack", "--psf-inplane 1.2 --psf-through 1", "--no-robust", "--no-stack-alignment", "--bias-field", "--severe-motion", "--smoothness off", "--preset fast",
                  "--n-gaussians 1000", "--iterations 50", "--device cpu", "--reference-stack 1", "--maps",
                  "--seed 3"):
        assert piece in text
    assert cmd[-1] == "--progress-json"
    default = " ".join(buildSVRCommand(["a"], tmp_path, SVRParameters(), maskPaths=[None], enginePrefix=["py"]))
    assert "--no-robust" not in default and "--no-stack-alignment" not in default and "--n-gaussians" not in default and "--reference-stack" not in default
    assert "--no-maps" in default  # the engine's --maps is on by default
    assert "--masks" not in default  # no mask at all: the engine masks every stack itself


def test_command_is_accepted_by_the_engine_parser(tmp_path):
    from gaussian_mri.cli import build_parser

    p = SVRParameters(resolutionMm=0.6, motion="stack", robust=False, biasField=True, preset="fast", severeMotion=True, noiseAware=False,
                      nGaussians=1000, iterations=50, device="cpu", referenceStack=1, maps=False, seed=3,
                      stackAlignment=False)
    cmd = buildSVRCommand(["a.nii.gz", "b.nii.gz"], tmp_path, p, maskPaths=["ma.nii.gz", None], thicknesses=[3.0, 2.5],
                          enginePrefix=["py", "-m", "gaussian_mri"])
    args = build_parser().parse_args(cmd[3:])
    assert args.command == "svr" and args.masks == ["ma.nii.gz", "none"] and args.maps is False
    assert (args.resolution, args.motion, args.no_robust, args.bias_field, args.reference_stack) == (0.6, "stack", True, True, 1)
    assert args.stack_alignment is False and args.severe_motion is True and args.smoothness == 0.0


def test_defaults_are_the_engines(tmp_path):
    from gaussian_mri.cli import build_parser

    engine = build_parser().parse_args(["svr", "--stacks", "a.nii.gz", "--output-dir", str(tmp_path)])
    ours = SVRParameters()
    assert (ours.resolutionMm, ours.psfInPlane, ours.psfThrough, ours.motion, ours.preset, ours.device, ours.seed) == (
        engine.resolution, engine.psf_inplane, engine.psf_through, engine.motion, engine.preset, engine.device, engine.seed)
    assert ours.robust == (not engine.no_robust) and ours.biasField == engine.bias_field
    assert ours.severeMotion == engine.severe_motion is False
    assert ours.noiseAware is True and engine.smoothness == "auto"
    default_cmd = buildSVRCommand(["a"], tmp_path, ours, maskPaths=[None], enginePrefix=["py"])
    assert build_parser().parse_args(default_cmd[1:]).smoothness == "auto"
    assert ours.stackAlignment == engine.stack_alignment is True
    # maps: off in the module (they cost time), on by default in the engine; the command always says which
    assert engine.maps is True and ours.maps is False


def test_output_names_are_the_engines_and_need_no_torch():
    import subprocess
    import sys

    from gaussian_mri.svr.io import OUTPUT_FILES

    assert ENGINE_OUTPUT_FILES is OUTPUT_FILES
    # The module reads the table before the engine's dependencies are installed: no torch behind it.
    code = "import sys, gaussian_mri.svr.files; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    import gaussian_mri.svr as svr  # the lazy package still gives the engine API

    assert callable(svr.reconstruct) and "fast" in svr.PRESETS


def test_run_creates_all_outputs_in_one_folder(scene, demoStacks, engine, tmp_path):
    from gaussian_mri.image import read_image
    from gaussian_mri.svr.io import read_tensor_nrrd

    stacks, masks = demoStacks
    logic = _logic(engine, tmp_path)
    job, progress = _runKeepingFiles(logic, stacks, masks=[masks[0], None, masks[2]], maps=True, loadGaussians=True, **TINY)
    assert "--masks" in job.command and "none" in job.command  # stack 2: the engine's automatic mask
    assert " ".join(job.command).count("--thickness 3 3 3") == 1  # from the NIfTI header, as the engine reads it
    out = logic.finish(job)
    assert job.workDir.exists()  # kept for the comparisons below
    try:
        # the engine's own events and files
        fit = [e for e in progress if e.stage == "fit"]
        assert fit and fit[-1].iteration == fit[-1].total == 5
        assert set(job.process.outputs) == set(ENGINE_OUTPUT_FILES)
        assert {p.name for p in job.outputDir.iterdir()} == set(ENGINE_OUTPUT_FILES.values())
        files = {k: job.outputDir / v for k, v in ENGINE_OUTPUT_FILES.items()}

        assert out.volume.GetClassName() == "vtkMRMLScalarVolumeNode"
        assert out.volume.GetName() == "sub-01_run SVR"
        assert out.mask.GetClassName() == "vtkMRMLLabelMapVolumeNode"
        assert out.tensor.GetClassName() == "vtkMRMLDiffusionTensorVolumeNode"
        assert out.table.GetClassName() == "vtkMRMLTableNode"
        assert out.gaussians.GetClassName() == "vtkMRMLModelNode"
        # geometry and voxels = the engine's files
        for node, key in ((out.volume, "volume"), (out.mask, "mask"), (out.scaleMap, "scale"), (out.anisotropyMap, "anisotropy")):
            engineImage = read_image(files[key])
            np.testing.assert_allclose(N.ijkToRasArray(node), nib.load(files[key]).affine, atol=1e-5)
            np.testing.assert_allclose(N.ijkToRasArray(node), engineImage.affine, atol=1e-9)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), engineImage.data.astype(slicer.util.arrayFromVolume(node).dtype))
        np.testing.assert_allclose(np.linalg.norm(N.ijkToRasArray(out.volume)[:3, :3], axis=0), [2.0] * 3, atol=1e-5)
        assert slicer.util.arrayFromVolume(out.volume).max() > 10 and slicer.util.arrayFromVolume(out.mask).any()
        tensors, tensorAffine = read_tensor_nrrd(files["tensor"])
        np.testing.assert_allclose(N.ijkToRasArray(out.tensor), tensorAffine, atol=1e-5)
        np.testing.assert_allclose(tensorAffine, N.ijkToRasArray(out.volume), atol=1e-5)
        inSlicer = N.tensorArrayRas(out.tensor)
        assert inSlicer.shape == tensors.shape == slicer.util.arrayFromVolume(out.volume).shape + (3, 3)
        assert np.abs(tensors).max() > 0
        np.testing.assert_allclose(inSlicer, tensors, atol=1e-6 * np.abs(tensors).max())
        # per-slice table = slices.tsv (the slices the engine used), with the stack names
        rows = [line.split("\t") for line in files["slices"].read_text().splitlines()]
        assert out.table.GetNumberOfRows() == len(rows) - 1 > 0
        assert out.table.GetNumberOfColumns() == len(rows[0]) + 1
        table = out.table.GetTable()
        assert table.GetColumnByName("r11") is not None and table.GetColumnByName("weight") is not None
        for r in (0, len(rows) - 2):
            stackIndex, sliceIndex = int(rows[r + 1][0]), int(rows[r + 1][1])
            assert table.GetColumnByName("stack name").GetValue(r) == stacks[stackIndex].GetName()
            assert table.GetColumnByName("slice").GetValue(r) == sliceIndex
            assert 0 <= sliceIndex < stacks[stackIndex].GetImageData().GetDimensions()[2]
        # Gaussians: means_mm as points, the other per-Gaussian arrays as point data
        with np.load(files["gaussians"]) as g:
            means, scales, quats = g["means_mm"], g["scales_mm"], g["quats_wxyz"]
        polyData = out.gaussians.GetPolyData()
        assert polyData.GetNumberOfPoints() == len(means) > 0
        np.testing.assert_allclose(np.array(polyData.GetPoint(7)), means[7], atol=1e-4)
        pointData = polyData.GetPointData()
        assert pointData.GetArray("scales_mm").GetNumberOfComponents() == 3
        np.testing.assert_allclose(pointData.GetArray("scales_mm").GetTuple3(7), scales[7], rtol=1e-6)
        assert pointData.GetArray("quats_wxyz").GetNumberOfComponents() == 4
        np.testing.assert_allclose(pointData.GetArray("quats_wxyz").GetTuple4(7), quats[7], rtol=1e-6)
        assert pointData.GetArray("amplitudes") is not None
        # all in one folder, no preview left
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        assert sh.GetItemName(out.folderItemId) == "GaussianSVR sub-01_run"
        for node in out.nodes():
            assert sh.GetItemParent(sh.GetItemByDataNode(node)) == out.folderItemId
        assert not [n for n in slicer.util.getNodes("*preview*").values()]

        # loading the same results again never overwrites the first ones
        second = logic.loadOutputs(job, loadGaussians=True)
        assert second.volume.GetID() != out.volume.GetID() and second.volume.GetName() != out.volume.GetName()
        assert sh.GetItemName(second.folderItemId) != sh.GetItemName(out.folderItemId)

        # an unreadable result file: nothing is added (all or nothing)
        before = N.nodeIds()
        raw = files["tensor"].read_bytes()
        files["tensor"].write_bytes(raw[: len(raw) // 3])
        with pytest.raises(ValueError, match="Could not read a tensor volume"):
            logic.loadOutputs(job)
        assert N.nodeIds() == before
        files["volume"].unlink()
        with pytest.raises(EngineError, match="without writing recon.nii.gz"):
            logic.loadOutputs(job)
        assert N.nodeIds() == before
    finally:
        shutil.rmtree(job.workDir, ignore_errors=True)


def _constantStack(stacks, masks):
    flat = N.addVolumeNodeFromArray(np.full(slicer.util.arrayFromVolume(stacks[1]).shape, 7.0, np.float32),
                                    N.ijkToRasArray(stacks[1]), "flat stack")
    return [stacks[0], flat], None, "stacks\\[1\\] is constant"


def test_empty_mask_is_refused_before_the_engine_starts(scene, demoStacks, engine, tmp_path):
    stacks, masks = demoStacks
    empty = N.addVolumeNodeFromArray(np.zeros(slicer.util.arrayFromVolume(stacks[1]).shape, np.uint8),
                                     N.ijkToRasArray(stacks[1]), "empty mask", "vtkMRMLLabelMapVolumeNode")
    before = N.nodeIds()
    with pytest.raises(ValueError, match="Mask 'empty mask' of stack 'sub-01_run-3_T2w' is empty"):
        _logic(engine, tmp_path).prepare(stacks[:2], masks=[masks[0], empty], **TINY)
    assert N.nodeIds() == before and not list(tmp_path.iterdir())


@pytest.mark.parametrize("make", [_constantStack, "unreadable file"])
def test_engine_failure_leaves_scene_unchanged(scene, demoStacks, engine, tmp_path, make):
    stacks, masks = demoStacks
    if make == "unreadable file":
        inputs, inputMasks, match = stacks[:2], None, "could not be read as NIfTI"
    else:
        inputs, inputMasks, match = make(stacks, masks)
    logic = _logic(engine, tmp_path)
    before = N.nodeIds()
    job = logic.prepare(inputs, masks=inputMasks, **TINY)
    if make == "unreadable file":
        (job.workDir / "stack_01.nii.gz").write_bytes(b"\x1f\x8b this is not a gzipped NIfTI")
    logic.start(job)
    job.process.wait(timeoutS=300)
    assert job.process.state == JobState.FAILED and job.process.returnCode != 0
    with pytest.raises(EngineError, match=match):
        logic.finish(job)
    assert N.nodeIds() == before
    assert not job.workDir.exists()


def _assertCancelledCleanly(logic, job, before, assertProcessGone):
    """A cancelled run: engine process gone, finish() says cancelled, scene and work folder as before."""
    assertProcessGone(job.process)
    with pytest.raises(EngineCancelled):
        logic.finish(job)
    assert N.nodeIds() == before
    assert not job.workDir.exists()


def test_cancel_after_first_progress_leaves_scene_unchanged(scene, demoStacks, engine, tmp_path, waitForFirstProgress,
                                                            assertProcessGone):
    stacks, _masks = demoStacks
    logic = _logic(engine, tmp_path)
    before = N.nodeIds()
    job = logic.prepare(stacks[:1], **{**TINY, "iterations": 5000})
    logic.start(job)
    first = waitForFirstProgress(job.process)
    assert first.stage == "fit" and 0 < first.iteration < first.total == 5000
    logic.cancel(job)
    assert job.process.state == JobState.CANCELLED
    _assertCancelledCleanly(logic, job, before, assertProcessGone)


def test_preview_follows_the_engine_and_is_removed_on_cancel(scene, demoStacks, engine, tmp_path, assertProcessGone):
    from gaussian_mri.image import read_image

    stacks, _masks = demoStacks
    logic = _logic(engine, tmp_path)
    before = N.nodeIds()
    job = logic.prepare(stacks[:1], **{**TINY, "iterations": 5000})
    logic.start(job)
    deadline = time.monotonic() + 120  # the engine writes a preview every 10 s of fitting
    while job.previewNode is None and time.monotonic() < deadline:  # what the widget's QTimer does
        assert job.process.poll() == JobState.RUNNING, job.process.errorMessage
        time.sleep(0.05)
    try:
        assert job.previewNode is not None and "preview" in job.previewNode.GetName()
        assert job.previewNode.GetAttribute("GaussianMRI.Preview") == "1"
        preview = read_image(job.outputDir / "preview.nii.gz")
        np.testing.assert_allclose(N.ijkToRasArray(job.previewNode), preview.affine, atol=1e-9)
        assert slicer.util.arrayFromVolume(job.previewNode).shape == preview.shape
    finally:
        logic.cancel(job)
    _assertCancelledCleanly(logic, job, before, assertProcessGone)


def test_timeout_in_blocking_mode_stops_engine(scene, demoStacks, engine, tmp_path, assertProcessGone):
    stacks, _masks = demoStacks
    logic = _logic(engine, tmp_path)
    jobs = []
    start = logic.start
    logic.start = lambda job, **kw: (jobs.append(job), start(job, **kw))[1]
    before = N.nodeIds()
    with pytest.raises(TimeoutError):
        logic.run(stacks=stacks[:1], timeoutS=2.0, **{**TINY, "iterations": 5000})
    assert N.nodeIds() == before
    assert len(jobs) == 1 and jobs[0].process.state == JobState.CANCELLED
    assertProcessGone(jobs[0].process)
    assert not list(tmp_path.iterdir())


def test_bad_inputs_have_clear_messages(scene, fetalStacks):
    logic = GaussianSVRLogic(enginePrefix=["unused"])
    with pytest.raises(ValueError, match="No stack selected"):
        logic.prepare([])
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    with pytest.raises(ValueError, match="'a model' is a vtkMRMLModelNode; a scalar volume"):
        logic.prepare([fetalStacks[0], model])
    far = np.eye(4)
    far[:3, 3] = 1000.0
    other = N.addVolumeNodeFromArray(np.ones((5, 6, 7), np.uint8), far, "small mask", "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(ValueError, match="'small mask' does not overlap stack"):
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


def test_segmentation_and_labelmap_masks_become_mask_files(scene, fetalStacks, tmp_path):
    from gaussian_mri.image import read_image

    stack = fetalStacks[0]
    shape = slicer.util.arrayFromVolume(stack).shape
    label = np.zeros(shape, np.uint8)
    label[3:12, 20:70, 20:60] = 1
    labelNode = N.addVolumeNodeFromArray(label, N.ijkToRasArray(stack), "brain label", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(stack)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation)
    before = N.nodeIds()
    logic = _logic(["unused"], tmp_path)
    job = logic.prepare(fetalStacks[:3], masks=[labelNode, segmentation, None])
    job2 = logic.prepare(fetalStacks[:1], masks=[segmentation])
    try:
        assert N.nodeIds() == before  # temporary export nodes removed
        masks = [read_image(job.workDir / f"mask_{i:02d}.nii.gz") for i in range(2)]
        np.testing.assert_array_equal(masks[0].data, label)
        # the segmentation, exported onto stack 2 (another grid), covers part of it
        np.testing.assert_allclose(masks[1].affine, N.ijkToRasArray(fetalStacks[1]), atol=1e-6)
        assert masks[1].data.shape == slicer.util.arrayFromVolume(fetalStacks[1]).shape and masks[1].data.any()
        # stack without a mask: the engine's automatic mask ("none"), no file
        assert not (job.workDir / "mask_02.nii.gz").exists()
        masksArgument = job.command[job.command.index("--masks") + 1 : job.command.index("--masks") + 4]
        assert masksArgument == [str(job.workDir / "mask_00.nii.gz"), str(job.workDir / "mask_01.nii.gz"), "none"]
        same = read_image(job2.workDir / "mask_00.nii.gz").data
        np.testing.assert_array_equal(same, label)  # same grid: exact
    finally:
        shutil.rmtree(job.workDir)
        shutil.rmtree(job2.workDir)


def test_one_mask_for_the_reference_stack_is_propagated_and_loaded(scene, demoStacks, engine, tmp_path):
    """As on the command line: a single mask is the reference stack's; the engine propagates it to the
    other stacks (here without motion correction: in world coordinates) and the module loads those masks."""
    from gaussian_mri.image import read_image

    stacks, masks = demoStacks
    stacks = stacks[:2]
    logic = _logic(engine, tmp_path)
    job, _progress = _runKeepingFiles(logic, stacks, masks=[masks[1]], referenceStack=1, motion="none",
                                      **{**TINY, "resolutionMm": 4.0})
    at = job.command.index("--masks")
    assert job.command[at + 1 : at + 3] == [str(job.workDir / "mask_00.nii.gz"), "--thickness"]
    assert job.command[job.command.index("--reference-stack") + 1] == "1"
    out = logic.finish(job)
    try:
        assert [n.GetName() for n in out.propagatedMasks] == [f"{stacks[0].GetName()} mask (propagated)"]
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        for index, node in zip((0,), out.propagatedMasks):
            assert node.GetClassName() == "vtkMRMLLabelMapVolumeNode"
            engineMask = read_image(job.outputDir / f"mask_propagated_stack-{index}.nii.gz")
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), engineMask.data)
            np.testing.assert_allclose(N.ijkToRasArray(node), N.ijkToRasArray(stacks[index]), atol=1e-5)
            assert engineMask.data.any()
            assert sh.GetItemParent(sh.GetItemByDataNode(node)) == out.folderItemId
        assert job.process.outputs["mask_propagated_stack-0"].endswith("mask_propagated_stack-0.nii.gz")
    finally:
        shutil.rmtree(job.workDir, ignore_errors=True)


def test_panel_passes_a_mask_on_the_reference_row_alone(scene, fetalStacks, tmp_path):
    from GaussianSVRLib import panelMasks

    from gaussian_mri.image import read_image

    a, b = object(), object()
    assert panelMasks([a, None, None]) == [a]  # reference = first row by default
    assert panelMasks([None, b, None], referenceStack=1) == [b]
    assert panelMasks([None, b, None]) == [None, b, None]  # not the reference: per stack, others automatic
    assert panelMasks([a, b, None]) == [a, b, None] and panelMasks([a]) == [a] and panelMasks([None, None]) == [None, None]
    # a segmentation for the reference stack (2nd) is exported onto that stack's grid
    stack = fetalStacks[1]
    label = np.zeros(slicer.util.arrayFromVolume(stack).shape, np.uint8)
    label[3:12, 20:70, 20:60] = 1
    labelNode = N.addVolumeNodeFromArray(label, N.ijkToRasArray(stack), "brain label", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(stack)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentation)
    job = _logic(["unused"], tmp_path).prepare(fetalStacks[:3], masks=[segmentation], referenceStack=1)
    try:
        at = job.command.index("--masks")
        assert job.command[at + 1 : at + 3] == [str(job.workDir / "mask_00.nii.gz"), "--thickness"]
        mask = read_image(job.workDir / "mask_00.nii.gz")
        np.testing.assert_array_equal(mask.data, label)
        np.testing.assert_allclose(mask.affine, N.ijkToRasArray(stack), atol=1e-6)
    finally:
        shutil.rmtree(job.workDir)
    with pytest.raises(ValueError, match="2 masks for 3 stacks: give one mask \\(or None\\) per stack, or a single mask"):
        _logic(["unused"], tmp_path).prepare(fetalStacks[:3], masks=[labelNode, None])
