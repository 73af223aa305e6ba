"""Logic of the GaussianCine module (importable without Qt). Shares the process runner and node
helpers of ``GaussianSVRLib`` (both modules ship together in the GaussianMRI extension)."""

from .logic import (
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
