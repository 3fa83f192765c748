"""The package's layering, read from the import statements: the model layer imports nothing from
deployment, the apps or the engine, and the modules an export ships import neither torch nor the
package."""

import ast
import pathlib
import sys

import pytest

import panoptic_ext

ROOT = pathlib.Path(panoptic_ext.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """Absolute names of every module `path` imports, anywhere in the file."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            names.update([base] + [f"{base}.{a.name}" for a in node.names])
    return names


@pytest.mark.parametrize("path", sorted(ROOT.glob("modeling/**/*.py")), ids=lambda p: p.name)
def test_modeling_imports_no_deploy_apps_or_engine(path):
    layers = ("panoptic_ext.deploy", "panoptic_ext.apps", "panoptic_ext.engine")
    bad = sorted(n for n in _imports(path) if n.startswith(layers))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("name", ["numpy_pipeline.py", "runner_io.py"])
def test_shipped_modules_are_torch_free(name):
    """`runner_io` may use the copied `panoptic_utils` (the package's utils/), nothing else."""
    allowed = set(sys.stdlib_module_names) | {"numpy", "PIL", "onnxruntime", "openvino",
                                              "panoptic_utils"}
    names = _imports(ROOT / "deploy" / name)
    bad = sorted(n for n in names if n.split(".")[0] not in allowed
                 and not n.startswith("panoptic_ext.utils"))
    assert not bad, f"deploy/{name} imports {bad}"


def test_import_resolution_sees_relative_imports():
    """The check above would pass vacuously if relative imports were misread."""
    names = _imports(ROOT / "modeling" / "meta_arch.py")
    assert "panoptic_ext.modeling.combine" in names and "torch" in names
