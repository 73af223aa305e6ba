"""BIDS discovery of ``gaussian-mri bids``: stacks, sessions, labels, masks (derivatives or pattern), errors."""

from __future__ import annotations

import shutil

import pytest

from gaussian_mri.cli import main
from gaussian_mri.cohort import CohortError, find_runs


def test_finds_every_subject_session_with_its_stacks_and_masks(bids_dataset):
    runs = {r.key: r for r in find_runs(bids_dataset)}
    assert list(runs) == ["sub-01", "sub-02", "sub-03_ses-1", "sub-03_ses-2", "sub-04"]
    r = runs["sub-03_ses-2"]
    assert (r.subject, r.session, r.folder.as_posix()) == ("03", "2", "sub-03/ses-2")
    assert [p.name for p in r.stacks] == [f"sub-03_ses-2_run-{n}_T2w.nii.gz" for n in (1, 2, 3)]
    assert [p.relative_to(bids_dataset).as_posix() for p in r.masks] == [
        f"derivatives/masks/sub-03/ses-2/anat/sub-03_ses-2_run-{n}_desc-brain_mask.nii.gz" for n in (1, 2, 3)
    ]
    assert runs["sub-04"].masks is None  # no masks: automatic
    assert [p.name for p in runs["sub-01"].sidecars] == ["sub-01_run-1_T2w.json"]
    assert ("stack_sidecar", runs["sub-01"].sidecars[0]) in runs["sub-01"].inputs()


def test_labels_filter_with_or_without_prefix(bids_dataset):
    assert [r.key for r in find_runs(bids_dataset, ["sub-03", "01"])] == ["sub-03_ses-1", "sub-03_ses-2", "sub-01"]
    assert [r.key for r in find_runs(bids_dataset, None, ["2"])] == ["sub-03_ses-2"]


def test_stacks_are_ordered_by_run_number(tmp_path):
    anat = tmp_path / "sub-x" / "anat"
    anat.mkdir(parents=True)
    for n in (10, 2, 1):
        (anat / f"sub-x_run-{n}_T2w.nii.gz").write_bytes(b"")
    (anat / "sub-x_run-1_T1w.nii.gz").write_bytes(b"")  # not a T2w stack
    (run,) = find_runs(tmp_path)
    assert [p.name for p in run.stacks] == ["sub-x_run-1_T2w.nii.gz", "sub-x_run-2_T2w.nii.gz", "sub-x_run-10_T2w.nii.gz"]


def test_mask_pattern_per_stack_single_and_ambiguous(bids_dataset, tmp_path):
    per_stack = "derivatives/masks/sub-{subject}/anat/{stem}_desc-brain_mask.nii.gz"
    (r,) = find_runs(bids_dataset, ["02"], mask_pattern=per_stack)
    assert [p.name for p in r.masks] == [f"sub-02_run-{n}_desc-brain_mask.nii.gz" for n in (1, 2, 3)]
    # no {stem}/{run}: one mask per subject, passed alone (the reference stack's, propagated)
    (r,) = find_runs(bids_dataset, ["02"], mask_pattern="derivatives/masks/sub-{subject}/anat/*run-1_desc-brain_mask.nii.gz")
    assert len(r.masks) == 1 and r.masks[0].name == "sub-02_run-1_desc-brain_mask.nii.gz" and r.problem is None
    (r,) = find_runs(bids_dataset, ["02"], mask_pattern="derivatives/masks/sub-{subject}/anat/*_mask.nii.gz")
    assert r.problem and "matches 3 files" in r.problem  # ambiguous: this run fails, the others go on
    with pytest.raises(CohortError, match="unknown placeholder"):
        find_runs(bids_dataset, mask_pattern="{subjet}_mask.nii.gz")


def test_only_the_reference_stack_mask_is_passed_alone(bids_dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(bids_dataset / "sub-02", ds / "sub-02")
    masks = ds / "derivatives" / "masks" / "sub-02" / "anat"
    masks.mkdir(parents=True)
    shutil.copy(bids_dataset / "derivatives/masks/sub-02/anat/sub-02_run-1_desc-brain_mask.nii.gz", masks)
    (r,) = find_runs(ds)
    assert len(r.masks) == 1 and r.masks[0].name == "sub-02_run-1_desc-brain_mask.nii.gz"
    # the output folder is never searched for masks
    out = ds / "derivatives" / "gaussiansvr" / "sub-02" / "anat"
    out.mkdir(parents=True)
    shutil.copy(masks / "sub-02_run-1_desc-brain_mask.nii.gz", out / "sub-02_run-2_desc-brain_mask.nii.gz")
    (r,) = find_runs(ds, exclude=[ds / "derivatives" / "gaussiansvr"])
    assert len(r.masks) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "{out}", "participant"], "BIDS folder not found"),
        (["{bids}", "{out}", "participant", "--participant-label", "99"], "participant label(s) 99 not found"),
        (["{bids}", "{out}", "participant", "--session-label", "7"], "no T2w stacks found"),
        (["{empty}", "{out}", "participant"], "no subject folders"),
        (["{bids}", "{out}", "group"], "no participant-level results"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(bids_dataset, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "out").mkdir()
    paths = {"missing": tmp_path / "nope", "bids": bids_dataset, "out": tmp_path / "out", "empty": tmp_path / "empty"}
    assert main(["bids", *[a.format(**paths) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
