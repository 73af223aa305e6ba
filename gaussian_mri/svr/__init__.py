"""GaussianSVR engine: fetal slice-to-volume reconstruction with 3D Gaussians and analytic PSF.

The names below are imported on first use, so that torch-free parts of the package (e.g.
:mod:`gaussian_mri.svr.files`, read by the Slicer module) can be imported without torch.
"""

__all__ = ["reconstruct", "SVRConfig", "SVRResult", "SVRCancelled", "PRESETS", "SEVERE_MOTION_ROUNDS", "preset"]


def __getattr__(name: str):
    if name in __all__:
        from . import recon

        return getattr(recon, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
