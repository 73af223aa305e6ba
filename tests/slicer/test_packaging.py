"""Static checks of the Slicer extension: CMake layout, module structure, widgets against their .ui files.

These need neither Slicer nor slicer-core (the module files import Qt and are only parsed here). The
installed layout derived from the CMakeLists is checked and loaded in ``test_loading.py``.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ("GaussianSVR", "GaussianCine")  # the visible modules (with a panel)
SHARED_WIDGET = REPO / "GaussianMRI" / "GaussianMRILib" / "widget.py"


def test_resource_names_are_unique_and_extension_cmake_is_complete():
    names = [p.name for m in (*MODULES, "GaussianMRI") for p in (REPO / m / "Resources").rglob("*") if p.is_file()]
    assert len(names) == len(set(names)), f"resource names must be unique across modules (one Resources folder when installed): {names}"
    assert (REPO / "Resources" / "Icons" / "GaussianMRI.png").is_file()
    top = (REPO / "CMakeLists.txt").read_text()
    for needle in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                   "EXTENSION_SCREENSHOTURLS", 'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(GaussianMRI)", "add_subdirectory(GaussianSVR)",
                   "add_subdirectory(GaussianCine)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                   "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in top, needle
    assert top.index("add_subdirectory(GaussianMRI)") < top.index("add_subdirectory(GaussianSVR)")
    for module in (*MODULES, "GaussianMRI"):
        cmake = (REPO / module / "CMakeLists.txt").read_text()
        assert "slicerMacroBuildScriptedModule" in cmake and "SCRIPTS ${MODULE_PYTHON_SCRIPTS}" in cmake


def test_minimum_slicer_version_is_read_by_cmake_from_the_one_declaration():
    """CMake parses MINIMUM_SLICER_VERSION out of dependencies.py (no second copy of the number)."""
    import shutil
    import subprocess

    source = (REPO / "GaussianMRI" / "GaussianMRILib" / "dependencies.py").read_text()
    declared = re.search(r'^MINIMUM_SLICER_VERSION = "([0-9.]+)"$', source, re.M).group(1)
    top = (REPO / "CMakeLists.txt").read_text()
    assert declared not in top, "the version number must not be repeated in CMakeLists.txt"
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is needed for this check (apt-get install cmake)")
    block = top[top.index("# Minimum Slicer version"):top.index("#-----", top.index("# Minimum Slicer version"))]
    for major, minor, fails in ((5, 8, True), (5, 10, False), (6, 0, False)):
        script = f"set(CMAKE_CURRENT_SOURCE_DIR {REPO})\nset(Slicer_VERSION_MAJOR {major})\nset(Slicer_VERSION_MINOR {minor})\n{block}"
        path = Path(subprocess.check_output(["mktemp", "--suffix=.cmake"], text=True).strip())
        path.write_text(script)
        proc = subprocess.run([cmake, "-P", str(path)], capture_output=True, text=True)
        path.unlink()
        assert (proc.returncode != 0) == fails, (major, minor, proc.stderr)
        if fails:
            assert f"needs Slicer {declared} or newer" in proc.stderr


# ------------------------------------------------------------------------------------------ .ui parsing
def _ui(module: str) -> ET.Element:
    return ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()


def _property(widget: ET.Element, name: str):
    prop = next((p for p in widget.findall("property") if p.get("name") == name), None)
    if prop is None:
        return None
    value = prop[0]
    if value.tag == "stringlist":
        return [s.text for s in value.findall("string")]
    if value.tag in ("double", "number"):
        return float(value.text)
    if value.tag == "bool":
        return value.text == "true"
    return value.text


def _boundWidgets(module: str) -> dict[str, ET.Element]:
    return {_property(w, "SlicerParameterName"): w for w in _ui(module).iter("widget")
            if _property(w, "SlicerParameterName") is not None}


def _moduleTree(module: str) -> ast.Module:
    return ast.parse((REPO / module / f"{module}.py").read_text())


def _parameterFields(module: str) -> dict[str, ast.AnnAssign]:
    node = next(n for n in _moduleTree(module).body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
    return {s.target.id: s for s in node.body if isinstance(s, ast.AnnAssign)}


def _annotation(field: ast.AnnAssign) -> tuple[str, dict]:
    """``(base type name, {"range": (lo, hi), "choices": [...], "nodeTypes": [...]})`` of a field's annotation."""
    ann, extras = field.annotation, {}
    if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "Annotated":
        base, *rest = ann.slice.elts
        for extra in rest:
            name = extra.func.id
            args = [ast.literal_eval(a) for a in extra.args]
            if name == "WithinRange":
                extras["range"] = tuple(float(a) for a in args)
            elif name == "Choice":
                extras["choices"] = list(args[0])
        ann = base
    if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) in ("Union", "Optional"):
        elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        extras["nodeTypes"] = [e.id for e in elts if getattr(e, "id", "").startswith("vtkMRML")]
        return "node", extras
    name = ann.id
    if name.startswith("vtkMRML"):
        extras["nodeTypes"] = [name]
        return "node", extras
    return name, extras


#: parameter-node fields without a widget of their own, and why
UNBOUND = {
    "device": "the device selector is filled from the engine's device list and set by the widget",
    "outputVolume": "set by the widget to the last reconstruction (no selector)",
}

#: widget classes the parameter-node connectors of Slicer 5.10 bind to each type
#: (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py)
CONNECTOR_WIDGETS = {
    "bool": {"QCheckBox", "ctkCheckBox"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "qMRMLSpinBox"},
    "str": {"QLineEdit", "QComboBox", "ctkComboBox"},
    "node": {"qMRMLNodeComboBox"},
}


@pytest.mark.parametrize("module", MODULES)
def test_parameter_node_annotations_agree_with_the_ui(module):
    fields = _parameterFields(module)
    bound = _boundWidgets(module)
    assert set(bound) - set(fields) == set(), f"SlicerParameterName without a {module}ParameterNode field"
    assert set(fields) - set(bound) <= set(UNBOUND), f"fields without a widget: {set(fields) - set(bound) - set(UNBOUND)}"
    for name, widget in bound.items():
        kind, extras = _annotation(fields[name])
        cls = widget.get("class")
        assert cls in CONNECTOR_WIDGETS[kind], f"{name}: a {cls} cannot represent {kind}"
        if kind == "node":
            # the connector replaces the widget's nodeTypes with the annotation's classes
            assert _property(widget, "nodeTypes") == extras["nodeTypes"], name
        if cls in ("QComboBox", "ctkComboBox"):
            assert "choices" in extras, f"{name}: a combo box needs Choice(...)"
            assert [i.find("property/string").text for i in widget.findall("item")] == extras["choices"], name
        if kind in ("int", "float") and cls not in ("QComboBox",):
            assert "range" in extras, f"{name}: numeric widget without WithinRange (the connector makes it unbounded)"
            assert (_property(widget, "minimum"), _property(widget, "maximum")) == extras["range"], name
            default = ast.literal_eval(fields[name].value)
            assert extras["range"][0] <= default <= extras["range"][1], name


def test_the_ui_check_catches_a_mismatch(tmp_path, monkeypatch):
    """The agreement check fails on the mismatch the issue found (cine typed vtkMRMLNode)."""
    text = (REPO / "GaussianCine" / "GaussianCine.py").read_text()
    bad = re.sub(r"    cine: Union\[[^\]]*\]", "    cine: vtkMRMLNode", text)
    assert bad != text
    tree = ast.parse(bad)
    monkeypatch.setattr(__import__(__name__), "_moduleTree", lambda module: tree)
    with pytest.raises(AssertionError, match="cine"):
        test_parameter_node_annotations_agree_with_the_ui("GaussianCine")


def _uiNames(module: str) -> set[str]:
    return {w.get("name") for w in _ui(module).iter("widget")}


@pytest.mark.parametrize("module", MODULES)
def test_widget_names_used_in_code_exist_in_ui(module):
    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / module / f"{module}.py").read_text()))
    shared = set(re.findall(r"self\.ui\.(\w+)", SHARED_WIDGET.read_text()))
    assert used and shared
    assert (used | shared) - _uiNames(module) == set(), f"self.ui names missing from Resources/UI/{module}.ui"


@pytest.mark.parametrize("module", MODULES)
def test_module_file_has_slicer_template_classes(module):
    tree = _moduleTree(module)
    classes = {n.name: [getattr(b, "id", None) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes[module]
    assert "EngineModuleWidget" in classes[f"{module}Widget"]
    assert "ScriptedLoadableModuleLogic" in classes[f"{module}Logic"]
    assert "ScriptedLoadableModuleTest" in classes[f"{module}Test"]
    for path in (REPO / module).rglob("*.py"):  # Slicer style: `is None`, never `== None` / `== True`
        assert not re.search(r"[=!]=\s*(None|True|False)\b", path.read_text()), path


def test_visible_modules_share_code_only_through_the_hidden_module():
    """GaussianSVR and GaussianCine never import each other; shared code lives in GaussianMRILib."""
    for module, other in (("GaussianSVR", "GaussianCine"), ("GaussianCine", "GaussianSVR")):
        for path in (REPO / module).rglob("*.py"):
            text = path.read_text()
            assert not re.search(rf"^\s*(from|import)\s+{other}", text, re.M), f"{path} imports {other}"
    for path in (REPO / "GaussianMRI").rglob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+Gaussian(SVR|Cine)", path.read_text(), re.M), path
