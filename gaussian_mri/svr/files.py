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
