"""``gaussian-mri evaluate``: PSNR, SSIM, NRMSE and NCC of an image against a reference, as JSON.

The image is brought onto the reference grid in world (RAS) coordinates (trilinear), optionally
after a rigid registration to the reference (``--align``); the mask, if given, is brought onto the
reference grid with nearest-neighbour interpolation. Metrics follow :mod:`gaussian_mri.metrics`.
Reference voxels outside the image's field of view take the value 0 (``coverage`` in the output
says what fraction of the reference grid the image covers).

Output (stdout, one JSON object): ``psnr`` (dB, ``Infinity`` for a perfect match), ``ssim``,
``nrmse``, ``ncc``, ``data_range``, ``ssim_window``, ``n_voxels`` (evaluated), ``coverage``,
``resampled``, ``aligned``, ``transform_ras`` (4x4 fixed-to-moving world matrix, with
``--align``) and the input paths.
"""

from __future__ import annotations

import argparse

NAME = "evaluate"
HELP = "Compare an image with a reference: PSNR, SSIM, NRMSE, NCC as JSON (resampled / aligned as needed)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reference",
        required=True,
        metavar="A",
        help="reference volume (NIfTI, NRRD or a DICOM series folder); metrics are computed on its grid",
    )
    parser.add_argument(
        "--image", required=True, metavar="B", help="volume to evaluate (NIfTI, NRRD or a DICOM series folder), any grid"
    )
    parser.add_argument(
        "--mask", metavar="M", help="evaluate only inside this mask (nonzero voxels), any grid"
    )
    parser.add_argument(
        "--align",
        action="store_true",
        help="rigidly register the image to the reference first (SimpleITK, Mattes mutual information)",
    )
    parser.add_argument(
        "--align-metric",
        choices=("mattes", "correlation"),
        default="mattes",
        help="registration metric for --align (default: mattes)",
    )
    parser.add_argument(
        "--data-range",
        type=float,
        metavar="X",
        help="intensity range for PSNR and SSIM (default: reference max - min inside the mask)",
    )


def _same_grid(a, b) -> bool:
    import numpy as np

    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, rtol=0, atol=1e-4))


def run(args: argparse.Namespace) -> int:
    import json
    import logging

    import numpy as np

    from ..cli import UserError
    from ..image import read_image
    from ..metrics import SSIM_SIGMA, SSIM_TRUNCATE, SSIM_WINDOW, all_metrics
    from ..resample import resample_to_reference, rigid_align, rotation_angle_deg

    log = logging.getLogger("gaussian_mri.evaluate")
    if args.data_range is not None and not (np.isfinite(args.data_range) and args.data_range > 0):
        raise UserError(f"--data-range must be a finite number > 0, got {args.data_range}")

    reference = read_image(args.reference)
    image = read_image(args.image)
    for name, img in (("--reference", reference), ("--image", image)):
        if np.asarray(img.data).dtype.kind not in "biuf":
            raise UserError(
                f"{name} {img.meta['path']} has {img.data.dtype} voxels; save a real (magnitude) image"
            )
        if not np.isfinite(img.data).all():
            raise UserError(f"{name} {img.meta['path']} contains NaN or infinite voxels")

    mask_image = read_image(args.mask) if args.mask else None
    transform = None
    if args.align:
        transform = rigid_align(image, reference, metric=args.align_metric, fixed_mask=mask_image)
        log.info(
            "aligned: rotation %.2f deg, translation %s mm",
            rotation_angle_deg(transform),
            np.round(transform[:3, 3], 2).tolist(),
        )
    resampled = transform is not None or not _same_grid(image, reference)
    if resampled:
        on_ref = resample_to_reference(image, reference, transform=transform, order=1)
        coverage = float(on_ref.meta["coverage"])
    else:
        on_ref, coverage = image, 1.0

    mask = None
    if mask_image is not None:
        if not _same_grid(mask_image, reference):
            mask_image = resample_to_reference(mask_image, reference, order=0)
        mask = np.asarray(mask_image.data) != 0
        if not mask.any():
            raise UserError(
                f"--mask {args.mask} has no nonzero voxel on the reference grid "
                "(does it overlap the reference?)"
            )
    if coverage < 0.999:
        log.warning(
            "the image covers %.1f%% of the reference grid; voxels outside count as 0", 100 * coverage
        )

    metrics = all_metrics(on_ref.data, reference.data, mask=mask, data_range=args.data_range)
    out = {
        **metrics,
        "ssim_window": (
            f"gaussian, sigma {SSIM_SIGMA} voxels, truncated at {SSIM_TRUNCATE} sigma "
            f"({SSIM_WINDOW}x{SSIM_WINDOW}x{SSIM_WINDOW}), K1=0.01, K2=0.03, population covariance, "
            "5-voxel border excluded (as skimage gaussian_weights=True, use_sample_covariance=False)"
        ),
        "n_voxels": int(mask.sum()) if mask is not None else int(np.prod(reference.shape)),
        "coverage": coverage,
        "resampled": resampled,
        "aligned": transform is not None,
        "transform_ras": None if transform is None else transform.tolist(),
        "reference": str(args.reference),
        "image": str(args.image),
        "mask": None if args.mask is None else str(args.mask),
    }
    print(json.dumps(out, indent=2))
    return 0
