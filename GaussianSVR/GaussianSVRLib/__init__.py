"""Logic of the GaussianSVR module (importable without Qt: Slicer, or slicer-core in tests).

Also holds the parts shared with GaussianCine: the engine process runner (:mod:`.process`) and
the MRML node helpers (:mod:`.nodes`).
"""

from .logic import (
    ENGINE_OUTPUT_FILES,
    MOTION_MODELS,
    PRESETS,
    GaussianSVRLogic,
    SVRJob,
    SVROutputs,
    SVRParameters,
    buildSVRCommand,
    detectDevices,
    gaussiansModelNode,
    readSlicesTable,
)
from .nodes import moduleLogic, useApplicationLogic
from .process import EngineCancelled, EngineError, EngineProcess, JobState, ProgressEvent

__all__ = [
    "ENGINE_OUTPUT_FILES",
    "MOTION_MODELS",
    "PRESETS",
    "GaussianSVRLogic",
    "SVRJob",
    "SVROutputs",
    "SVRParameters",
    "buildSVRCommand",
    "detectDevices",
    "gaussiansModelNode",
    "readSlicesTable",
    "moduleLogic",
    "useApplicationLogic",
    "EngineCancelled",
    "EngineError",
    "EngineProcess",
    "JobState",
    "ProgressEvent",
]
