"""GaussianMRI: hidden module that ships the engine and the code shared by GaussianSVR and GaussianCine.

It has no panel. Loading it (Slicer loads it because both visible modules depend on it) imports
``GaussianMRILib``, which makes the bundled engine importable as ``gaussian_mri`` in Slicer's Python
console, from an installed extension and from a source checkout alike.
"""

import logging

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest

import GaussianMRILib
from GaussianMRILib.dependencies import MINIMUM_SLICER_VERSION, slicerVersionProblem


class GaussianMRI(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GaussianMRI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Reconstruction")]
        self.parent.dependencies = []
        self.parent.hidden = True
        self.parent.contributors = ["GaussianMRI developers"]
        self.parent.helpText = _(
            "Shared library of the GaussianMRI extension (engine, process runner, node conversion). "
            "Use the Gaussian SVR and Gaussian Cine modules. Needs 3D Slicer {version} or newer."
        ).format(version=MINIMUM_SLICER_VERSION)
        self.parent.acknowledgementText = _("Part of the GaussianMRI extension.")
        app = getattr(slicer, "app", None)
        problem = slicerVersionProblem(app.majorVersion, app.minorVersion) if app is not None else None
        if problem:
            logging.error(problem)
        logging.debug("GaussianMRI: engine at %s", GaussianMRILib.engineRootDirectory())


class GaussianMRILogic(ScriptedLoadableModuleLogic):
    """No parameters: the shared code is in ``GaussianMRILib``."""


class GaussianMRITest(ScriptedLoadableModuleTest):
    """Self-test of the shared library: the bundled engine imports and its requirements are readable."""

    def runTest(self):
        self.test_GaussianMRI_engine()

    def test_GaussianMRI_engine(self):
        import importlib

        from GaussianMRILib.dependencies import engineRequirements, torchRequirement

        root = GaussianMRILib.engineRootDirectory()
        engine = importlib.import_module("gaussian_mri")
        self.assertEqual(str(root), str(__import__("pathlib").Path(engine.__file__).resolve().parent.parent))
        self.assertIn("torch", [r.name for r in engineRequirements()])
        self.assertTrue(torchRequirement().startswith(">="))
        self.delayDisplay("GaussianMRI engine found in %s" % root)
