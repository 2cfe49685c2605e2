"""The site's build hook (tools/docs/hooks.py) finds what it must fail the strict build on."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types
from typing import NamedTuple

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools/docs/hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SHAPE = "\n    Shape: (*, n)\n"


class _Base:
    """A documented base."""

    def apply(self) -> None:
        """Documented once, here."""


class _Concatenated(_Base):
    """Looks documented, but a concatenation is an expression, not a docstring.""" + _SHAPE

    def apply(self) -> None:  # overrides a documented method: inherits its docstring
        pass

    def extra(self) -> None:
        pass

    @property
    def size(self) -> int:
        return 1


class _Point(NamedTuple):
    x: int


def _documented() -> None:
    """Has one."""


def _bare() -> None:
    pass


@pytest.fixture
def module():
    mod = types.ModuleType("fake_public_module", "The module's own docstring.")
    for name, obj in [
        ("Concatenated", _Concatenated),
        ("Point", _Point),
        ("documented", _documented),
        ("bare", _bare),
        ("CONSTANT", 3),
    ]:
        setattr(mod, name, obj)
    mod.__all__ = ["Concatenated", "Point", "documented", "bare", "CONSTANT"]
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def test_undocumented_names_are_found(hooks, module):
    assert _Concatenated.__doc__ is None
    assert sorted(hooks.undocumented_names(module.__name__)) == [
        "fake_public_module.Concatenated",
        "fake_public_module.Concatenated.extra",
        "fake_public_module.Concatenated.size",
        "fake_public_module.Point",
        "fake_public_module.bare",
    ]


def test_a_module_without_docstring_is_found(hooks, module):
    module.__doc__ = None
    assert "fake_public_module" in hooks.undocumented_names(module.__name__)


def test_every_public_module_is_listed(hooks):
    modules = hooks.public_modules()
    assert {"hmfusion.fusion", "hmfusion.structures", "hmfusion.planner"} <= modules
    assert "hmfusion.compat.tinybig" in modules
    assert not any(name.rsplit(".", 1)[1].startswith("_") for name in modules)


def test_modules_without_a_written_page_get_a_generated_one(hooks, tmp_path):
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "fusion.md").write_text("# x\n\n::: hmfusion.fusion\n")
    config = types.SimpleNamespace(
        docs_dir=str(tmp_path), nav=[{"Home": "index.md"}, {"Reference": ["reference/index.md"]}]
    )
    hooks.on_config(config)
    generated = dict(pair for entry in config.nav[1]["Reference"][1:] for pair in entry.items())
    assert "hmfusion.fusion" not in generated
    assert generated["hmfusion.structures"] == "reference/structures.md"
    assert generated["hmfusion.compat.tinybig"] == "reference/compat-tinybig.md"
    assert not hooks.NOT_REFERENCED & set(generated)
    assert set(generated) == hooks.public_modules() - hooks.NOT_REFERENCED - {"hmfusion.fusion"}
