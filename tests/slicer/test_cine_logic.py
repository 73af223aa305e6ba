"""GaussianCine logic on a real MRML scene: cine <-> sequences, browser, outputs, failures."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import slicer
from GaussianCineLib import CineParameters, GaussianCineLogic, addCineSequence, buildCineCommand, cineFromNode, writeCineNifti
from GaussianSVRLib import EngineError
from GaussianSVRLib import nodes as N

GEOMETRY = np.array([[0.0, 0.0, -8.0, 10.0], [-1.5, 0.0, 0.0, 20.0], [0.0, -1.5, 0.0, 30.0], [0, 0, 0, 1.0]])


def _frames(T=6, ny=20, nx=24):
    t, y, x = np.meshgrid(np.arange(T), np.arange(ny), np.arange(nx), indexing="ij")
    return (100 + 50 * np.sin(x / 4 + t) * np.cos(y / 5)).astype(np.float32)


@pytest.fixture
def cineSequence(scene):
    return addCineSequence(_frames(), GEOMETRY, "cine", frameMs=40.0)


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
                  "--n-gaussians 500", "--steps 200", "--lambda-mu 0.0001 --lambda-c 0.0001", "--sr-factor 2",
                  "--device cpu", "--seed 0", "--baselines"):
        assert piece in text
    assert cmd[-1] == "--progress-json"
    cmd = buildCineCommand(tmp_path, CineParameters(), kspacePath="k.npy", coilMapsPath="s.npy", enginePrefix=["py"])
    text = " ".join(cmd)
    assert "--kspace k.npy --axes frames,coils,ky,kx" in text and "--coil-maps s.npy" in text
    assert "--baselines" not in text and "--mask-type" not in text


def test_retrospective_run_outputs(scene, cineSequence, fakeEngine):
    out = GaussianCineLogic(enginePrefix=fakeEngine).run(cine=cineSequence, maskType="gro", acceleration=8, srFactor=2,
                                                         timeoutS=120)
    assert out.recon.GetClassName() == "vtkMRMLSequenceNode" and out.recon.GetNumberOfDataNodes() == 6
    frame = out.recon.GetNthDataNode(0)
    assert frame.GetImageData().GetDimensions() == (48, 40, 1)
    geometry = N.ijkToRasArray(frame)
    np.testing.assert_allclose(np.linalg.norm(geometry[:3, :3], axis=0), [0.75, 0.75, 8.0], atol=1e-5)
    # same field of view corner as the input
    corner = lambda g: g[:3, 3] - g[:3, :2] @ [0.5, 0.5]  # noqa: E731
    np.testing.assert_allclose(corner(geometry), corner(GEOMETRY), atol=1e-5)
    assert set(out.baselines) == {"lps", "zero_filled"}
    assert set(out.errors) == {"lps", "zero_filled"}  # the 2x super-resolved recon has no same-grid reference
    assert out.displacement.GetNthDataNode(0).GetClassName() == "vtkMRMLVectorVolumeNode"
    assert out.metricsTable.GetNumberOfRows() == 3
    assert out.metricsTable.GetTable().GetColumnByName("method").GetValue(1) == "lps"
    assert out.browser.GetMasterSequenceNode() is out.recon
    assert out.browser.GetNumberOfSynchronizedSequenceNodes(True) == 1 + 2 + 1 + 1 + 2 + 2  # master, maps, displacement, reference, baselines, errors
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemName(out.folderItemId) == "GaussianCine cine"
    for node in out.nodes():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == out.folderItemId


def test_kspace_run_and_failures_leave_scene_unchanged(scene, fakeEngine, tmp_path, monkeypatch):
    kspace = np.fft.fft2(np.random.default_rng(0).random((4, 2, 16, 16))).astype(np.complex64)
    np.save(tmp_path / "k.npy", kspace)
    out = GaussianCineLogic(enginePrefix=fakeEngine).run(kspaceFile=tmp_path / "k.npy", timeoutS=120)
    assert out.recon.GetNumberOfDataNodes() == 4 and out.reference is None and out.metricsTable is None
    np.testing.assert_allclose(N.ijkToRasArray(out.recon.GetNthDataNode(0)), np.diag([1.5, 1.5, 1.5, 1.0]))
    before = N.nodeIds()
    monkeypatch.setenv("GAUSSIAN_MRI_FAKE_MODE", "fail")
    with pytest.raises(EngineError, match="fake failure"):
        GaussianCineLogic(enginePrefix=fakeEngine).run(kspaceFile=tmp_path / "k.npy", timeoutS=120)
    assert N.nodeIds() == before
    monkeypatch.setenv("GAUSSIAN_MRI_FAKE_MODE", "slow")
    logic = GaussianCineLogic(enginePrefix=fakeEngine)
    job = logic.prepare(kspaceFile=tmp_path / "k.npy")
    logic.start(job)
    logic.cancel(job)
    with pytest.raises(Exception, match="cancelled"):
        logic.finish(job)
    assert N.nodeIds() == before and not job.workDir.exists()
