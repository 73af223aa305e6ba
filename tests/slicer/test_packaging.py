"""Static checks of the Slicer extension: CMake lists every script, the widgets match the .ui files.

These need neither Slicer nor slicer-core, so they run everywhere (the module files import Qt and
are only parsed here, never imported).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ("GaussianSVR", "GaussianCine")


def _cmakeList(cmakeText: str, variable: str, moduleName: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", cmakeText, re.S)
    assert match, f"set({variable} ...) not found"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [i.replace("${MODULE_NAME}", moduleName) for i in items if i]


@pytest.mark.parametrize("module", MODULES)
def test_every_module_script_is_listed_and_exists(module):
    folder = REPO / module
    cmake = (folder / "CMakeLists.txt").read_text()
    listed = set(_cmakeList(cmake, "MODULE_PYTHON_SCRIPTS", module))
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "Testing" not in p.parts}
    assert present - listed == set(), f"add these to MODULE_PYTHON_SCRIPTS in {module}/CMakeLists.txt"
    assert {p for p in listed if not (folder / p).is_file()} == set(), "listed scripts that do not exist"
    assert "slicerMacroBuildScriptedModule" in cmake and "SCRIPTS ${MODULE_PYTHON_SCRIPTS}" in cmake
    resources = _cmakeList(cmake, "MODULE_PYTHON_RESOURCES", module)
    assert f"Resources/UI/{module}.ui" in resources and f"Resources/Icons/{module}.png" in resources
    assert all((folder / r).is_file() for r in resources)


def test_every_engine_script_is_shipped():
    cmake = (REPO / "GaussianSVR" / "CMakeLists.txt").read_text()
    listed = set(_cmakeList(cmake, "GAUSSIAN_MRI_ENGINE_SCRIPTS", "GaussianSVR"))
    present = {p.relative_to(REPO).as_posix() for p in (REPO / "gaussian_mri").rglob("*.py")}
    missing = sorted(present - listed)
    assert not missing, f"add to GAUSSIAN_MRI_ENGINE_SCRIPTS in GaussianSVR/CMakeLists.txt: {missing}"
    assert sorted(listed - present) == [], "engine scripts listed but absent"
    assert "list(APPEND MODULE_PYTHON_SCRIPTS ${CMAKE_CURRENT_BINARY_DIR}/${engine_script})" in cmake


def test_resource_names_are_unique_and_extension_cmake_is_complete():
    names = [p.name for m in MODULES for p in (REPO / m / "Resources").rglob("*") if p.is_file()]
    assert len(names) == len(set(names)), f"resource names must be unique across modules: {names}"
    assert (REPO / "Resources" / "Icons" / "GaussianMRI.png").is_file()
    top = (REPO / "CMakeLists.txt").read_text()
    for needle in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                   "EXTENSION_SCREENSHOTURLS", 'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(GaussianSVR)", "add_subdirectory(GaussianCine)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in top, needle


def _uiWidgets(module: str) -> tuple[set[str], dict[str, str]]:
    root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
    names = {w.get("name") for w in root.iter("widget")}
    params = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                params[widget.get("name")] = prop.find("string").text
    return names, params


def _moduleSource(module: str) -> tuple[str, ast.Module]:
    text = (REPO / module / f"{module}.py").read_text()
    return text, ast.parse(text)


@pytest.mark.parametrize("module", MODULES)
def test_widget_names_used_in_code_exist_in_ui(module):
    text, _tree = _moduleSource(module)
    used = set(re.findall(r"self\.ui\.(\w+)", text))
    names, _params = _uiWidgets(module)
    assert used, "the widget uses no self.ui.<name>?"
    assert used - names == set(), f"self.ui names missing from Resources/UI/{module}.ui"


@pytest.mark.parametrize("module", MODULES)
def test_ui_parameter_names_are_parameter_node_fields(module):
    _text, tree = _moduleSource(module)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}ParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
    fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    _names, params = _uiWidgets(module)
    unknown = {w: p for w, p in params.items() if p not in fields}
    assert not unknown, f"SlicerParameterName without a {module}ParameterNode field: {unknown}"


@pytest.mark.parametrize("module", MODULES)
def test_module_file_has_slicer_template_classes(module):
    _text, tree = _moduleSource(module)
    classes = {n.name: [getattr(b, "id", None) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes[module]
    assert "ScriptedLoadableModuleWidget" in classes[f"{module}Widget"]
    assert "ScriptedLoadableModuleLogic" in classes[f"{module}Logic"]
    assert "ScriptedLoadableModuleTest" in classes[f"{module}Test"]
    for path in (REPO / module).rglob("*.py"):  # Slicer style: `is None`, never `== None` / `== True`
        assert not re.search(r"[=!]=\s*(None|True|False)\b", path.read_text()), path
