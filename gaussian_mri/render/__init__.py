"""Gaussian rendering: 2D splat rasteriser, 3D Gaussians on slice planes, voxeliser."""

from .splat2d import cholesky_to_conic, conic_to_cov, rasterize_gaussians_2d, rasterize_splats, sr_grid

__all__ = ["rasterize_splats", "rasterize_gaussians_2d", "cholesky_to_conic", "conic_to_cov", "sr_grid"]
