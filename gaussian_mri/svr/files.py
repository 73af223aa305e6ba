"""Names of the files ``gaussian-mri svr`` writes (no torch or numpy import: the Slicer module
reads this table before the engine's dependencies are installed)."""

#: Output names of :func:`gaussian_mri.svr.io.save_result`: ``{name in the CLI's "done" event: file name}``.
OUTPUT_FILES = {
    "volume": "recon.nii.gz",
    "mask": "recon_mask.nii.gz",
    "slices": "slices.tsv",
    "gaussians": "gaussians.npz",
    "scale": "map_scale.nii.gz",
    "anisotropy": "map_anisotropy.nii.gz",
    "tensor": "tensor.nrrd",
    "report": "report.json",
}

#: With one mask for several stacks (the reference stack's), :func:`gaussian_mri.svr.io.save_result` also
#: writes the mask propagated onto each other stack ``n`` (0-based, as ``--reference-stack`` and the
#: ``stack`` column of ``slices.tsv``), named in the "done" event ``mask_propagated_stack-<n>``.
PROPAGATED_MASK_FILE = "mask_propagated_stack-{index}.nii.gz"


def propagated_mask_file(index: int) -> str:
    """File name of the reference mask propagated onto stack ``index`` (0-based)."""
    return PROPAGATED_MASK_FILE.format(index=int(index))

