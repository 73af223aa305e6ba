"""Logic of the GaussianSVR module (no Qt: Slicer, or slicer-core in tests).

The engine process, node helpers, dependencies and devices shared with GaussianCine live in the
hidden GaussianMRI module (``GaussianMRILib``); importing it first makes the bundled engine importable.
"""

import GaussianMRILib  # noqa: F401  (first: puts the bundled engine on sys.path)
from GaussianMRILib import nodes
from GaussianMRILib.devices import detectDevices
from GaussianMRILib.nodes import moduleLogic, useApplicationLogic
from GaussianMRILib.process import EngineCancelled, EngineError, EngineProcess, JobState, ProgressEvent

from .logic import (
    ENGINE_OUTPUT_FILES,
    MOTION_MODELS,
    PRESETS,
    GaussianSVRLogic,
    SVRJob,
    SVROutputs,
    SVRParameters,
    buildSVRCommand,
    gaussiansModelNode,
    panelMasks,
    propagatedMaskKey,
    readSlicesTable,
)

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
    "panelMasks",
    "propagatedMaskKey",
    "readSlicesTable",
    "moduleLogic",
    "nodes",
    "useApplicationLogic",
    "EngineCancelled",
    "EngineError",
    "EngineProcess",
    "JobState",
    "ProgressEvent",
]
