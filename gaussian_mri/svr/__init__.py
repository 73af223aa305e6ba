"""GaussianSVR engine: fetal slice-to-volume reconstruction with 3D Gaussians and analytic PSF."""

from .recon import PRESETS, SVRCancelled, SVRConfig, SVRResult, preset, reconstruct

__all__ = ["reconstruct", "SVRConfig", "SVRResult", "SVRCancelled", "PRESETS", "preset"]
