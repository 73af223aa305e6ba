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



def masks_as_fitted(masks, n_stacks: int, result_dir, reference_stack: int | None = 0) -> list | None:
    """Each stack's mask as the fit used it (for the QC report): ``masks`` as given when one per stack
    (``None`` entries: automatic masks); a single mask for several stacks (the reference stack's) gives
    it for stack ``reference_stack`` and the propagated file ``result_dir/mask_propagated_stack-<n>.nii.gz``
    for every other stack ``n`` (``None`` where that file is not there); ``None`` without masks."""
    import os

    if masks is None:
        return None
    masks = list(masks)
    if len(masks) == 1 and n_stacks > 1:
        if masks[0] is None:
            return None
        ref = reference_stack or 0
        out = [masks[0] if k == ref else os.path.join(os.fspath(result_dir), propagated_mask_file(k)) for k in range(n_stacks)]
        return [m if k == ref or os.path.isfile(m) else None for k, m in enumerate(out)]
    return masks
