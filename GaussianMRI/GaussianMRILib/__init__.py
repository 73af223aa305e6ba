"""Code shared by the GaussianSVR and GaussianCine modules (no Qt: runs on slicer-core in tests too).

* :mod:`.engine`: where the bundled engine ``gaussian_mri`` is; importing this package makes it
  importable (Slicer console included), from an installed extension and from a source checkout;
* :mod:`.process`: the engine process and its ``--progress-json`` events;
* :mod:`.logic`: the job life cycle of the module logics (start, cancel, finish, clean up);
* :mod:`.nodes`: MRML node <-> engine conversion, masks, output nodes, scene bookkeeping;
* :mod:`.dependencies`: required packages and versions, their installation;
* :mod:`.devices`: the compute devices, found by the engine process;
* :mod:`.widget`: the panel base class (Qt; imported by the module files only).
"""

import sys

from .dependencies import MINIMUM_SLICER_VERSION  # noqa: E402  (plain Python, importable on 3.9)

if sys.version_info < (3, 10):  # Slicer 5.8 and older bundle Python 3.9
    raise ImportError(
        f"GaussianMRI needs 3D Slicer {MINIMUM_SLICER_VERSION} or newer (Python 3.10+); this Slicer runs Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}. Install a current Slicer release."
    )

from .engine import EngineNotFound, engineRootDirectory, ensureEngineImportable  # noqa: E402

ensureEngineImportable()

from .dependencies import DependencyError, MINIMUM_SLICER_VERSION  # noqa: E402
from .devices import DeviceDiscovery, detectDevices  # noqa: E402
from .logic import EngineJob, EngineLogic, validateDevice  # noqa: E402
from .nodes import moduleLogic, useApplicationLogic  # noqa: E402
from .process import EngineCancelled, EngineError, EngineProcess, JobState, ProgressEvent  # noqa: E402

__all__ = [
    "DependencyError",
    "DeviceDiscovery",
    "EngineCancelled",
    "EngineError",
    "EngineJob",
    "EngineLogic",
    "EngineNotFound",
    "EngineProcess",
    "JobState",
    "MINIMUM_SLICER_VERSION",
    "ProgressEvent",
    "detectDevices",
    "engineRootDirectory",
    "ensureEngineImportable",
    "moduleLogic",
    "useApplicationLogic",
    "validateDevice",
]
