"""GaussianMRI engine: MRI reconstruction with explicit Gaussian primitives.

The engine is plain Python + PyTorch and never imports Slicer, VTK or Qt, so it runs from
the command line (``gaussian-mri``), from a notebook, and inside the 3D Slicer modules.

Conventions (used throughout the package)
-----------------------------------------
* World space is RAS (right, anterior, superior) in millimetres, as in 3D Slicer.
  LPS conversions happen only in the file readers and writers (:mod:`gaussian_mri.image`,
  :mod:`gaussian_mri.nrrd_io`, :mod:`gaussian_mri.dicom_io`).
* Volume arrays are indexed ``[k, j, i]`` (slowest to fastest, Slicer's ``arrayFromVolume``
  order); an ``affine`` maps the voxel index ``(i, j, k, 1)`` to RAS millimetres.
* 2D pixel grids are indexed ``[row, col]``; a splat position ``(x, y)`` is in pixel units with
  ``x`` along columns and ``y`` along rows, pixel centres at integer positions.
* Cine k-space is ``(frames, coils, ky, kx)``.
"""

__version__ = "0.1.0"
