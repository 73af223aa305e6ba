"""Logic of the GaussianCine module (no Qt: Slicer, or slicer-core in tests).

The engine process, node helpers, dependencies and devices shared with GaussianSVR live in the
hidden GaussianMRI module (``GaussianMRILib``); importing it first makes the bundled engine importable.
"""

import GaussianMRILib  # noqa: F401  (first: puts the bundled engine on sys.path)

from .logic import (
    KSPACE_SUFFIXES,
    MASK_TYPES,
    CineJob,
    CineOutputs,
    CineParameters,
    GaussianCineLogic,
    addCineSequence,
    buildCineCommand,
    cineFromNode,
    writeCineNifti,
)

__all__ = [
    "KSPACE_SUFFIXES",
    "MASK_TYPES",
    "CineJob",
    "CineOutputs",
    "CineParameters",
    "GaussianCineLogic",
    "addCineSequence",
    "buildCineCommand",
    "cineFromNode",
    "writeCineNifti",
]
