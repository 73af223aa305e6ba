"""GaussianCine logic on a real MRML scene: cine <-> sequences, browser, outputs, failures.

Engine runs use the real engine with tiny settings (``--steps 5 --n-gaussians 200``, CPU) on a small
simulated cine (:func:`gaussian_mri.cine.phantom.simulate_cine`, 4 frames of 64 x 64, 4 coils).
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

import slicer
from GaussianCineLib import CineParameters, GaussianCineLogic, addCineSequence, buildCineCommand, cineFromNode, writeCineNifti
from GaussianMRILib import EngineCancelled, EngineError, JobState
from GaussianMRILib import nodes as N

GEOMETRY = np.array([[0.0, 0.0, -8.0, 10.0], [-1.5, 0.0, 0.0, 20.0], [0.0, -1.5, 0.0, 30.0], [0, 0, 0, 1.0]])


def _frames(T=6, ny=20, nx=24):
    t, y, x = np.meshgrid(np.arange(T), np.arange(ny), np.arange(nx), indexing="ij")
    return (100 + 50 * np.sin(x / 4 + t) * np.cos(y / 5)).astype(np.float32)


@pytest.fixture
def cineSequence(scene):
    return addCineSequence(_frames(), GEOMETRY, "cine", frameMs=40.0)


TINY = dict(steps=5, nGaussians=200, device="cpu")
#: an oblique single-slice geometry for the 64 x 64 phantom (1.8 mm pixels, 8 mm slice)
PHANTOM_GEOMETRY = np.array([[0.0, 0.0, -8.0, 10.0], [-1.8, 0.0, 0.0, 20.0], [0.0, -1.8, 0.0, 30.0], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def phantom():
    from gaussian_mri.cine.phantom import simulate_cine

    return simulate_cine(n_frames=4, ny=64, nx=64, n_coils=4, seed=0)


def _logic(engine, tmp_path) -> GaussianCineLogic:
    logic = GaussianCineLogic(enginePrefix=engine)
    logic.temporaryRoot = str(tmp_path)
    return logic


def _runKeepingFiles(logic, **kwargs):
    job = logic.prepare(**kwargs)
    job.keepFiles = True
    logic.start(job)
    job.process.wait(timeoutS=300)
    return job


def _sequenceArray(sequence) -> np.ndarray:
    return np.stack([slicer.util.arrayFromVolume(sequence.GetNthDataNode(i))[0] for i in range(sequence.GetNumberOfDataNodes())])


def test_sequence_round_trip_and_browser(scene, cineSequence):
    frames = _frames()
    assert cineSequence.GetNumberOfDataNodes() == 6
    assert cineSequence.GetIndexUnit() == "ms" and cineSequence.GetNthIndexValue(2) == "80"
    item = cineSequence.GetNthDataNode(3)
    assert item.GetImageData().GetDimensions() == (24, 20, 1)
    np.testing.assert_allclose(N.ijkToRasArray(item), GEOMETRY)
    back, geometry, frameMs = cineFromNode(cineSequence)
    np.testing.assert_array_equal(back, frames)
    np.testing.assert_allclose(geometry, GEOMETRY)
    assert frameMs == pytest.approx(40.0)
    browser = GaussianCineLogic._addBrowser(cineSequence, [], "cine browser", 40.0)
    proxy = browser.GetProxyNode(cineSequence)
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    browser.SetSelectedItemNumber(4)
    N.moduleLogic("Sequences").UpdateProxyNodesFromSequences(browser)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(browser.GetProxyNode(cineSequence))[0], frames[4])
    assert browser.GetPlaybackRateFps() == pytest.approx(25.0)
    back, _, _ = cineFromNode(browser)  # the browser stands for its sequence
    assert back.shape == (6, 20, 24)


def test_cine_nifti_is_2d_plus_t_with_ras_affine(tmp_path):
    path = writeCineNifti(_frames(), GEOMETRY, 40.0, tmp_path / "cine.nii.gz")
    image = nib.load(path)
    assert image.shape == (24, 20, 1, 6)
    np.testing.assert_allclose(image.affine, GEOMETRY, atol=1e-6)
    assert image.header.get_zooms()[3] == pytest.approx(40.0)
    np.testing.assert_array_equal(np.asarray(image.dataobj)[:, :, 0, 2].T, _frames()[2])


def test_volume_inputs_2d_plus_t_and_bad_cines(scene):
    volume = N.addVolumeNodeFromArray(_frames(), GEOMETRY, "volume")
    with pytest.raises(ValueError, match="'volume' is a 3D volume .* not a cine"):
        cineFromNode(volume)
    frames, geometry, _ = cineFromNode(volume, framesAlongK=True)
    assert frames.shape == (6, 20, 24)
    vector = N.addVolumeNodeFromArray(np.moveaxis(_frames(), 0, -1)[None], GEOMETRY, "vector", "vtkMRMLVectorVolumeNode")
    frames, _, _ = cineFromNode(vector)
    np.testing.assert_array_equal(frames, _frames())
    thick = addCineSequence(np.zeros((3, 20, 24, 3), np.float32), GEOMETRY, "vectors", 40.0, vector=True)
    with pytest.raises(ValueError, match="scalar volumes"):
        cineFromNode(thick)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "multi-slice")
    for t in range(3):
        frame = slicer.vtkMRMLScalarVolumeNode()
        N.updateVolumeNodeFromArray(frame, np.zeros((4, 20, 24), np.float32), GEOMETRY)
        seq.SetDataNodeAtValue(frame, str(t))
    with pytest.raises(ValueError, match="has 4 slices"):
        cineFromNode(seq)
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "m")
    with pytest.raises(ValueError, match="vtkMRMLModelNode; a cine must be"):
        cineFromNode(model)
    logic = GaussianCineLogic(enginePrefix=["unused"])
    with pytest.raises(ValueError, match="either a k-space file"):
        logic.prepare()
    with pytest.raises(ValueError, match="does not exist"):
        logic.prepare(kspaceFile="/nonexistent/k.npy")
    with pytest.raises(ValueError, match="Mask type"):
        logic.prepare(cine=volume, framesAlongK=True, maskType="poisson")


def test_build_cine_commands(tmp_path):
    p = CineParameters(maskType="uniform", acceleration=6, nGaussians=500, steps=200, srFactor=2, device="cpu")
    cmd = buildCineCommand(tmp_path, p, imageCinePath="c.nii.gz", enginePrefix=["py", "-m", "gaussian_mri"])
    text = " ".join(cmd)
    for piece in ("py -m gaussian_mri cine --image-cine c.nii.gz --mask-type uniform --acceleration 6",
                  "--n-gaussians 500", "--steps 200", "--lambda-mu 0.002 --lambda-c 0.002", "--sr-factor 2",
                  "--device cpu", "--seed 0", "--baselines"):
        assert piece in text
    assert cmd[-1] == "--progress-json"
    cmd = buildCineCommand(tmp_path, CineParameters(), kspacePath="k.npy", coilMapsPath="s.npy", enginePrefix=["py"])
    text = " ".join(cmd)
    assert "--kspace k.npy --axes frames,coils,ky,kx" in text and "--coil-maps s.npy" in text
    assert "--baselines" not in text and "--mask-type" not in text


def test_commands_are_accepted_by_the_engine_parser_and_defaults_agree(tmp_path):
    from gaussian_mri.cli import build_parser

    parser = build_parser()
    p = CineParameters(maskType="uniform", acceleration=6, nGaussians=500, steps=200, srFactor=2, device="cpu")
    args = parser.parse_args(buildCineCommand(tmp_path, p, imageCinePath="c.nii.gz", enginePrefix=["py"])[1:])
    assert (args.command, args.image_cine, args.mask_type, args.acceleration, args.sr_factor) == ("cine", "c.nii.gz", "uniform", 6, 2)
    args = parser.parse_args(buildCineCommand(tmp_path, CineParameters(), kspacePath="k.npy", coilMapsPath="s.npy",
                                              enginePrefix=["py"])[1:])
    assert (args.kspace, args.axes, args.coil_maps, args.progress_json) == ("k.npy", "frames,coils,ky,kx", "s.npy", True)
    engineDefaults = parser.parse_args(["cine", "--kspace", "k.npy", "--output-dir", str(tmp_path)])
    ours = CineParameters()
    assert (ours.lambdaMu, ours.lambdaC, ours.srFactor, ours.maskType, ours.seed, ours.device) == (
        engineDefaults.lambda_mu, engineDefaults.lambda_c, engineDefaults.sr_factor, engineDefaults.mask_type,
        engineDefaults.seed, engineDefaults.device)


def test_retrospective_run_puts_each_output_on_its_grid(scene, phantom, engine, tmp_path):
    frames = np.abs(phantom.images).astype(np.float32)
    cine = addCineSequence(frames, PHANTOM_GEOMETRY, "cine", frameMs=40.0)
    logic = _logic(engine, tmp_path)
    job = _runKeepingFiles(logic, cine=cine, maskType="gro", acceleration=4, srFactor=2, **TINY)
    out = logic.finish(job)
    try:
        with np.load(job.outputDir / "result.npz") as z:
            result = {k: z[k] for k in z.files}
        metrics = json.loads((job.outputDir / "metrics.json").read_text())
        assert {"recon", "recon_1x", "spacing_mm", "frame_ms", "eigen_ratio", "det_ratio", "displacement", "reference",
                "lps", "zero_filled"} <= set(result)
        assert result["recon"].shape == (4, 128, 128) and result["reference"].shape == (4, 64, 64)

        # recon and the covariance maps: on the 2x grid (engine spacing), same field of view as the input
        assert out.recon.GetClassName() == "vtkMRMLSequenceNode" and out.recon.GetNumberOfDataNodes() == 4
        assert out.recon.GetIndexUnit() == "ms" and out.recon.GetNthIndexValue(1) == "40"
        frame = out.recon.GetNthDataNode(0)
        assert frame.GetImageData().GetDimensions() == (128, 128, 1)
        geometry = N.ijkToRasArray(frame)
        np.testing.assert_allclose(np.linalg.norm(geometry[:3, :3], axis=0), [*result["spacing_mm"][::-1], 8.0], atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(geometry[:3, :3], axis=0), [0.9, 0.9, 8.0], atol=1e-5)
        corner = lambda g: g[:3, 3] - g[:3, :2] @ [0.5, 0.5]  # noqa: E731
        np.testing.assert_allclose(corner(geometry), corner(PHANTOM_GEOMETRY), atol=1e-5)
        np.testing.assert_allclose(_sequenceArray(out.recon), np.abs(result["recon"]), rtol=1e-6)
        for sequence in (out.eigenRatio, out.detRatio, out.displacement):
            np.testing.assert_allclose(N.ijkToRasArray(sequence.GetNthDataNode(2)), geometry, atol=1e-9)
            assert sequence.GetNthDataNode(2).GetImageData().GetDimensions() == (128, 128, 1)
        np.testing.assert_allclose(_sequenceArray(out.eigenRatio), result["eigen_ratio"], rtol=1e-6)
        assert out.displacement.GetNthDataNode(0).GetClassName() == "vtkMRMLVectorVolumeNode"

        # reference, baselines and error maps: on the input (1x) grid, exactly the input geometry
        assert set(out.baselines) == {"lps", "zero_filled"}
        assert set(out.errors) == {"gaussian", "lps", "zero_filled"}  # GaussianCine error from recon_1x
        for sequence in (out.reference, *out.baselines.values(), *out.errors.values()):
            node = sequence.GetNthDataNode(1)
            assert node.GetImageData().GetDimensions() == (64, 64, 1)
            np.testing.assert_allclose(N.ijkToRasArray(node), PHANTOM_GEOMETRY, atol=1e-9)
        np.testing.assert_allclose(_sequenceArray(out.reference), np.abs(result["reference"]), rtol=1e-6)
        np.testing.assert_allclose(_sequenceArray(out.reference), frames, rtol=1e-5, atol=1e-5 * frames.max())
        np.testing.assert_allclose(_sequenceArray(out.baselines["lps"]), np.abs(result["lps"]), rtol=1e-6)
        expected = metrics["gaussian"]["gain"] * np.abs(result["recon_1x"]) - np.abs(result["reference"])
        np.testing.assert_allclose(_sequenceArray(out.errors["gaussian"]), expected, atol=1e-5 * frames.max())

        # metrics table = metrics.json
        assert out.metricsTable.GetNumberOfRows() == len(metrics) == 3
        table = out.metricsTable.GetTable()
        assert [table.GetColumnByName("method").GetValue(r) for r in range(3)] == list(metrics)
        assert table.GetColumnByName("SSIM").GetValue(2) == pytest.approx(metrics[list(metrics)[2]]["ssim"])

        # one browser plays everything; one folder holds everything
        assert out.browser.GetMasterSequenceNode() is out.recon
        assert out.browser.GetNumberOfSynchronizedSequenceNodes(True) == 1 + 2 + 1 + 1 + 2 + 3  # master, maps, displacement, reference, baselines, errors
        assert out.browser.GetPlaybackRateFps() == pytest.approx(25.0)
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        assert sh.GetItemName(out.folderItemId) == "GaussianCine cine"
        for node in out.nodes():
            assert sh.GetItemParent(sh.GetItemByDataNode(node)) == out.folderItemId
    finally:
        shutil.rmtree(job.workDir, ignore_errors=True)


def test_kspace_run_has_the_engines_geometry(scene, phantom, engine, tmp_path):
    kspace = phantom.kspace.copy()
    sampled = np.zeros(64, bool)
    sampled[::2] = True
    sampled[28:36] = True  # fully sampled centre
    kspace[:, :, ~sampled] = 0
    np.save(tmp_path / "k.npy", kspace)
    np.save(tmp_path / "maps.npy", phantom.coil_maps)
    logic = _logic(engine, tmp_path / "work")
    (tmp_path / "work").mkdir()
    job = _runKeepingFiles(logic, kspaceFile=tmp_path / "k.npy", coilMapsFile=tmp_path / "maps.npy", **TINY)
    assert "--coil-maps" in job.command
    out = logic.finish(job)
    try:
        assert out.recon.GetNumberOfDataNodes() == 4
        assert out.reference is None and out.metricsTable is None and not out.baselines and not out.errors
        engineCine = nib.load(job.outputDir / "cine.nii.gz")  # the engine's own geometry of the recon
        for index in range(4):
            node = out.recon.GetNthDataNode(index)
            assert node.GetImageData().GetDimensions() == engineCine.shape[:3]
            np.testing.assert_allclose(N.ijkToRasArray(node), engineCine.affine, atol=1e-6)
        np.testing.assert_allclose(_sequenceArray(out.recon), np.asarray(engineCine.dataobj)[:, :, 0, :].transpose(2, 1, 0), rtol=1e-5)
        assert out.recon.GetIndexName() == "frame"  # a .npy file has no frame times
        assert out.browser.GetNumberOfSynchronizedSequenceNodes(True) == 1 + 2 + 1
    finally:
        shutil.rmtree(job.workDir, ignore_errors=True)


def test_ismrmrd_run_places_the_cine_where_it_was_acquired(scene, engine, tmp_path):
    """An ISMRMRD file of an oblique, off-centre slice (project writer; position and directions LPS): every
    output node's IJKToRAS (here on the 2x grid) maps pixel centres to the acquisition's RAS points,
    computed here from first principles: pixel (i, j) at ``position + (i - nx//2) dx read + (j - ny//2) dy phase`` (LPS; the
    k-space centre of the centred FFT is the slice centre), RAS = diag(-1, -1, 1) LPS."""
    from gaussian_mri.cine.phantom import simulate_cine
    from gaussian_mri.mri.ismrmrd_io import write_cine_ismrmrd

    angle_a, angle_b = 0.6, -0.4
    read = np.array([np.cos(angle_a), np.sin(angle_a), 0.0])
    tilt = np.array([-np.sin(angle_a), np.cos(angle_a), 0.0])
    phase = np.cos(angle_b) * tilt + np.sin(angle_b) * np.array([0.0, 0.0, 1.0])
    position = np.array([-20.0, 35.5, 61.0])
    ny = nx = 64
    dy, dx, thickness = 2.5, 1.25, 7.0
    sim = simulate_cine(n_frames=4, ny=ny, nx=nx, n_coils=4, noise=0.0, seed=2)
    lines = np.zeros((4, ny), bool)
    lines[:, ::2] = True  # undersampled (R = 2), so no reference and no baselines: a quick run
    path = write_cine_ismrmrd(tmp_path / "oblique.h5", sim.kspace, mask=lines, fov_mm=(nx * dx, ny * dy, thickness),
                              position_mm=position, read_dir=read, phase_dir=phase)
    np.save(tmp_path / "maps.npy", sim.coil_maps)
    (tmp_path / "work").mkdir()
    logic = _logic(engine, tmp_path / "work")
    out = logic.run(kspaceFile=path, coilMapsFile=tmp_path / "maps.npy", srFactor=2, **TINY)

    def ras(i, j):
        return np.diag([-1.0, -1.0, 1.0]) @ (position + (i - nx // 2) * dx * read + (j - ny // 2) * dy * phase)

    fine = N.ijkToRasArray(out.recon.GetNthDataNode(1))  # the 2x grid
    assert out.recon.GetNthDataNode(1).GetImageData().GetDimensions() == (2 * nx, 2 * ny, 1)
    for i, j in [(0, 0), (nx - 1, 0), (7, ny - 1), (nx // 2, ny // 2), (40, 13)]:
        # the 2 x 2 fine pixels of 1x pixel (i, j) are centred on it; 1e-4 mm: the file stores float32
        for di, dj in ((0, 0), (1, 0), (0, 1), (1, 1)):
            np.testing.assert_allclose(fine @ [2 * i + di, 2 * j + dj, 0, 1], [*ras(i + (di - 0.5) / 2, j + (dj - 0.5) / 2), 1.0], atol=1e-4)
    normal = np.diag([-1.0, -1.0, 1.0]) @ np.cross(read, phase)
    np.testing.assert_allclose(fine[:3, 2], normal * thickness, atol=1e-5)
    for node in (out.eigenRatio.GetNthDataNode(0), out.displacement.GetNthDataNode(0)):
        np.testing.assert_allclose(N.ijkToRasArray(node), fine, atol=1e-9)


@pytest.mark.parametrize("case, match", [
    ("unreadable file", "is not a plain NumPy array file"),
    ("ESPIRiT fails", "ESPIRiT coil maps failed"),
])
def test_engine_failure_leaves_scene_unchanged(scene, phantom, engine, tmp_path, case, match):
    path = tmp_path / "k.npy"
    if case == "unreadable file":
        path.write_bytes(b"not a NumPy file")
    else:  # every third line missing, centre included: no calibration region for the coil maps
        kspace = phantom.kspace.copy()
        kspace[:, :, 1::3] = 0
        np.save(path, kspace)
    (tmp_path / "work").mkdir()
    logic = _logic(engine, tmp_path / "work")
    addCineSequence(_frames(), GEOMETRY, "unrelated cine", frameMs=40.0)
    before = N.nodeIds()
    job = logic.prepare(kspaceFile=path, **TINY)
    logic.start(job)
    job.process.wait(timeoutS=300)
    assert job.process.state == JobState.FAILED and job.process.returnCode != 0
    with pytest.raises(EngineError, match=match):
        logic.finish(job)
    assert N.nodeIds() == before
    assert not list((tmp_path / "work").iterdir())


def test_cancel_after_first_progress_leaves_scene_unchanged(scene, phantom, engine, tmp_path, waitForFirstProgress,
                                                            assertProcessGone):
    cine = addCineSequence(np.abs(phantom.images).astype(np.float32), PHANTOM_GEOMETRY, "cine", frameMs=40.0)
    logic = _logic(engine, tmp_path)
    before = N.nodeIds()
    job = logic.prepare(cine=cine, maskType="gro", acceleration=4, **{**TINY, "steps": 100000})
    logic.start(job)
    first = waitForFirstProgress(job.process)
    # the engine reports "load" then "fit" at once; one poll may handle both lines
    assert first.stage in ("load", "fit") and job.process.state == JobState.RUNNING
    logic.cancel(job)
    assert job.process.state == JobState.CANCELLED
    assertProcessGone(job.process)
    with pytest.raises(EngineCancelled, match="cancelled"):
        logic.finish(job)
    assert N.nodeIds() == before
    assert not list(tmp_path.iterdir())
