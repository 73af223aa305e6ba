"""Stand-ins for the parts of the 3D Slicer application that cannot be installed outside it.

MRML is real (``slicer-core`` from PyPI: scene, nodes, module logics, ``slicer.util``). What exists only
inside the Slicer application is emulated here, from Slicer's own sources (release 5.10):

* ``qt`` / ``ctk`` (PythonQt wrappers of the Qt and CTK widget libraries): only ``qt.QIcon`` (used by
  ``ScriptedLoadableModule`` for the module icon) does something; any other class raises when it is
  instantiated, so a test that reaches widget code fails instead of passing on a fake.
* ``slicer.ScriptedLoadableModule`` (Base/Python/slicer/ScriptedLoadableModule.py): the module base
  sets the module's ``parent`` fields and icon, registers ``runTest`` in ``slicer.selfTests`` and
  finds ``<Module>Test`` by name; the logic base keeps one ``vtkMRMLScriptedModuleNode`` per module
  (singleton tag and ``ModuleName`` attribute = the module name); the test base is a
  ``unittest.TestCase`` whose ``delayDisplay`` logs.
* ``slicer.parameterNodeWrapper`` (Base/Python/slicer/parameterNodeWrapper): typed parameters stored
  in the parameter node (numbers and strings as parameters, nodes as node references), defaults
  written when missing, ``WithinRange`` / ``Choice`` validated on assignment. GUI connection needs Qt
  and raises.
* ``slicer.i18n``: ``tr`` / ``translate`` return the text.
* ``slicer.app`` (qSlicerApplication): ``majorVersion``, ``minorVersion``, ``temporaryPath``,
  ``applicationLogic()``; ``PythonSlicer`` (Slicer's Python launcher) is put on ``PATH`` by the caller.

:func:`install` puts them in ``sys.modules`` and on the real ``slicer`` package.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
import typing
import unittest


class NotInThisEmulation(RuntimeError):
    """A Qt/CTK widget class was used: widgets exist only in the Slicer application."""


def _widgetModule(name: str, real: dict) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(real)

    def __getattr__(attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)

        class Unavailable:
            def __init__(self, *args, **kwargs):
                raise NotInThisEmulation(f"{name}.{attribute} is a widget class of the Slicer application (not emulated)")

        Unavailable.__name__ = attribute
        return Unavailable

    module.__getattr__ = __getattr__
    return module


class QIcon:
    def __init__(self, path: str = ""):
        self.path = str(path)


# ---------------------------------------------------------------------------- slicer.i18n
def _i18nModule() -> types.ModuleType:
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text
    module.translate = lambda context, text: text
    return module


# ---------------------------------------------------------------------------- ScriptedLoadableModule
class ModuleParent:
    """The Python-visible properties of qSlicerScriptedLoadableModule that a module sets or reads."""

    def __init__(self, path: str):
        self.path = path
        self.title = ""
        self.categories: list[str] = []
        self.dependencies: list[str] = []
        self.contributors: list[str] = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.hidden = False
        self.icon = None


def _scriptedLoadableModuleModule() -> types.ModuleType:
    import slicer

    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title = ""
            parent.categories = []
            parent.dependencies = []
            parent.contributors = []
            parent.helpText = ""
            parent.acknowledgementText = ""
            moduleDir = os.path.dirname(self.parent.path)
            for extension in (".svg", ".png"):
                iconPath = os.path.join(moduleDir, "Resources/Icons", self.moduleName + extension)
                if os.path.isfile(iconPath):
                    parent.icon = sys.modules["qt"].QIcon(iconPath)
                    break
            if not hasattr(slicer, "selfTests"):
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = self.runTest

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

        def runTest(self, msec=100, **kwargs):
            pyModule = importlib.import_module(self.__module__)
            className = self.moduleName + "Test"
            try:
                TestCaseClass = getattr(pyModule, className)
            except AttributeError:
                raise AssertionError(f"Test case class not found: {self.__module__}.{className} ")
            testCase = TestCaseClass()
            testCase.messageDelay = msec
            testCase.runTest(**kwargs)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            raise NotInThisEmulation("module widgets need the Qt widgets of the Slicer application (not emulated)")

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            if self.isSingletonParameterNode:
                node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
                if node:
                    if node.GetAttribute("ModuleName") != self.moduleName:
                        node.SetAttribute("ModuleName", self.moduleName)
                    return node
            return slicer.mrmlScene.AddNode(self.createParameterNode())

        def createParameterNode(self):
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            if self.isSingletonParameterNode:
                node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.messageDelay = 100

        def delayDisplay(self, message, requestedDelay=None, msec=None):
            logging.info("delayDisplay: %s", message)

        def takeScreenshot(self, name, description, type=-1):
            logging.info("takeScreenshot (not emulated): %s", name)

        def runTest(self):  # overridden by the module's test class
            pass

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    module.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                      "ScriptedLoadableModuleTest"]
    return module


# ---------------------------------------------------------------------------- parameterNodeWrapper
class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


class Minimum:
    def __init__(self, minimum):
        self.minimum = minimum

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"Value must be greater than or equal to {self.minimum}, is {value}")


class Maximum:
    def __init__(self, maximum):
        self.maximum = maximum

    def validate(self, value):
        if value > self.maximum:
            raise ValueError(f"Value must be less than or equal to {self.maximum}, is {value}")


class Choice:
    def __init__(self, choices):
        self.choices = tuple(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value must be one of {self.choices}, is {value!r}")


class Default:
    def __init__(self, value):
        self.value = value


def splitAnnotations(annotated):
    """``Annotated[T, a, b]`` -> ``(T, [a, b])``; ``T`` -> ``(T, [])``."""
    if typing.get_origin(annotated) is typing.Annotated:
        base, *extras = typing.get_args(annotated)
        return base, list(extras)
    return annotated, []


def nodeClasses(datatype) -> tuple[type, ...] | None:
    """Classes of a node annotation (a node class or a Union of node classes, ``None`` allowed), else ``None``.

    Like Slicer's ``isNodeOrUnionOfNodes``, nothing is instantiated here; the class names that the
    GUI connector puts into a node selector (``getNodeTypes``, which instantiates each class) are only
    needed by ``connectGui``, which needs Qt.
    """
    import slicer

    base, _extras = splitAnnotations(datatype)
    if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
        return (base,)
    if typing.get_origin(base) is typing.Union:
        classes = [a for a in typing.get_args(base) if isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode)]
        if classes and all(a in classes or a is type(None) for a in typing.get_args(base)):
            return tuple(classes)
    return None


def _parameterNodeWrapperModule() -> types.ModuleType:

    module = types.ModuleType("slicer.parameterNodeWrapper")

    def serialize(base, value) -> str:
        if base is bool:
            return "true" if value else "false"
        return repr(value) if base is float else str(value)

    def deserialize(base, text: str):
        if base is bool:
            return text == "true"
        return base(text)

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {}
        for name, annotated in hints.items():
            base, extras = splitAnnotations(annotated)
            nodeTypes = nodeClasses(annotated)
            if nodeTypes is None and base not in (bool, int, float, str):
                raise TypeError(f"{cls.__name__}.{name}: unsupported parameter type {annotated!r}")
            validators = [e for e in extras if hasattr(e, "validate")]
            default = getattr(cls, name, None)
            for extra in extras:
                if isinstance(extra, Default):
                    default = extra.value
            if nodeTypes is None and default is None:
                default = base()
            if nodeTypes is None:
                for validator in validators:
                    validator.validate(default)
            fields[name] = (base, nodeTypes, validators, default)

        class Wrapper:
            allParameters = dict(fields)

            def __init__(self, parameterNode):
                object.__setattr__(self, "parameterNode", parameterNode)
                for name, (base, nodeTypes, _validators, default) in fields.items():
                    if nodeTypes is None and not parameterNode.GetParameter(name):
                        parameterNode.SetParameter(name, serialize(base, default))

            def __getattr__(self, name):
                if name not in fields:
                    raise AttributeError(name)
                base, nodeTypes, _validators, _default = fields[name]
                if nodeTypes is not None:
                    return self.parameterNode.GetNodeReference(name)
                return deserialize(base, self.parameterNode.GetParameter(name))

            def __setattr__(self, name, value):
                if name not in fields:
                    raise AttributeError(f"{cls.__name__} has no parameter '{name}'")
                base, nodeTypes, validators, _default = fields[name]
                if nodeTypes is not None:
                    if value is not None and not isinstance(value, nodeTypes):
                        raise ValueError(f"{name}: a {value.GetClassName()} is not one of {[c.__name__ for c in nodeTypes]}")
                    self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                    return
                if base is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, base) or (base is int and isinstance(value, bool)):
                    raise TypeError(f"{name}: expected {base.__name__}, got {type(value).__name__}")
                for validator in validators:
                    validator.validate(value)
                self.parameterNode.SetParameter(name, serialize(base, value))

            def connectGui(self, gui):
                raise NotInThisEmulation("connectGui binds Qt widgets (not emulated)")

            def disconnectGui(self, tag):
                raise NotInThisEmulation("disconnectGui binds Qt widgets (not emulated)")

        Wrapper.__name__ = cls.__name__
        Wrapper.__qualname__ = cls.__qualname__
        Wrapper.__module__ = cls.__module__
        return Wrapper

    module.parameterNodeWrapper = parameterNodeWrapper
    module.WithinRange = WithinRange
    module.Minimum = Minimum
    module.Maximum = Maximum
    module.Choice = Choice
    module.Default = Default
    module.splitAnnotations = splitAnnotations
    module.nodeClasses = nodeClasses
    return module


# ---------------------------------------------------------------------------- application
class Application:
    """The qSlicerApplication properties the modules read."""

    def __init__(self, applicationLogic, temporaryPath: str, version: str):
        major, minor = (int(v) for v in version.split(".")[:2])
        self.majorVersion, self.minorVersion = major, minor
        self.temporaryPath = temporaryPath
        self._applicationLogic = applicationLogic

    def applicationLogic(self):
        return self._applicationLogic


def makeScene():
    """A real MRML scene with the module logics the extension uses (as Slicer sets them up)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}
    for name, cls in (
        ("Colors", slicer.vtkSlicerColorLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Sequences", slicer.vtkSlicerSequencesLogic),
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    app.SetColorLogic(logics["Colors"])
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    return scene, app, logics


def install(temporaryPath: str, slicerVersion: str = "5.10"):
    """Install the stand-ins, a real scene and ``slicer.app``; returns ``(scene, applicationLogic, logics)``."""
    import slicer

    sys.modules["qt"] = _widgetModule("qt", {"QIcon": QIcon})
    sys.modules["ctk"] = _widgetModule("ctk", {})
    for name, make in (("i18n", _i18nModule), ("ScriptedLoadableModule", _scriptedLoadableModuleModule),
                       ("parameterNodeWrapper", _parameterNodeWrapperModule)):
        module = make()
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    scene, app, logics = makeScene()
    slicer.mrmlScene = scene
    slicer.app = Application(app, temporaryPath, slicerVersion)
    slicer.modules = types.SimpleNamespace()
    return scene, app, logics
