"""The package's layers: imports flow one way, from the applications down to the kernels.

Every `import` and `from … import` in every module (at module level or inside a function) is
read with `ast`; a module may import from its own layer or one below it, never from one above.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "hmfusion"

#: (prefix, layer): the longest matching prefix decides; higher layers may import lower ones.
LAYERS = {
    "hmfusion.ops": 0,
    "hmfusion.data": 0,
    "hmfusion.structures": 1,
    "hmfusion._validation": 1,
    "hmfusion.fusion": 2,
    "hmfusion.planner": 3,
    "hmfusion": 3,  # the package's __init__ (the public names)
    "hmfusion.compat": 4,
    "hmfusion.apps": 5,
    "hmfusion.__main__": 5,
}


def layer_of(module: str) -> int:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(matches, key=len)]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from hmfusion import fusion` imports the module hmfusion.fusion; `from
            # hmfusion.fusion import HMConcatFusion` a name of the module hmfusion.fusion
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _is_module(submodule) else node.module)
    return {name for name in found if name == "hmfusion" or name.startswith("hmfusion.")}


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert MODULES
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_flow_down(path):
    name = module_name(path)
    upward = {
        target
        for target in imported_modules(path)
        if _is_module(target) and layer_of(target) > layer_of(name)
    }
    assert not upward, f"{name} (layer {layer_of(name)}) imports from above: {sorted(upward)}"


def _is_module(dotted: str) -> bool:
    """Whether `dotted` names a module or package of the source tree (not a class in one)."""
    relative = pathlib.Path(*dotted.split("."))
    return (SRC / relative).with_suffix(".py").exists() or (SRC / relative).is_dir()


def test_a_planted_upward_import_is_found(tmp_path):
    # the check itself can fail: an ops module importing the fusion modules is caught
    planted = tmp_path / "x.py"
    planted.write_text("def f():\n    from hmfusion.fusion import HMConcatFusion\n")
    targets = imported_modules(planted)
    assert "hmfusion.fusion" in targets
    assert layer_of("hmfusion.fusion") > layer_of("hmfusion.ops.planner")
