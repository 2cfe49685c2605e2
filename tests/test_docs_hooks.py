"""The site's build hook (tools/docs/hooks.py) finds what it must fail the strict build on."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import re
import sys
import types
from typing import NamedTuple

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed")
yaml = pytest.importorskip("yaml", reason="pyyaml (the test extra) is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Loader(yaml.SafeLoader):
    """mkdocs.yml's own tags (``!!python/name:``) read as plain strings."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


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


def test_public_and_internal_modules_are_apart(hooks):
    internal = hooks.internal_modules()
    assert not internal & set(hooks.PUBLIC)
    assert {"hmfusion.ops.planner", "hmfusion.ops.costmodel", "hmfusion.apps.common"} <= internal
    assert not any(name.rsplit(".", 1)[1].startswith("_") for name in internal)
    for name in hooks.PUBLIC:  # every public module imports and documents itself
        assert importlib.import_module(name).__doc__


def test_modules_without_a_written_page_get_a_generated_one(hooks, tmp_path):
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "fusion.md").write_text("# x\n\n::: hmfusion\n")
    config = types.SimpleNamespace(
        docs_dir=str(tmp_path),
        nav=[
            {"Home": "index.md"},
            {"Reference": ["reference/index.md"]},
            {"Internals": ["internals/index.md"]},
        ],
    )
    hooks.on_config(config)
    public = dict(pair for entry in config.nav[1]["Reference"][1:] for pair in entry.items())
    internal = dict(pair for entry in config.nav[2]["Internals"][1:] for pair in entry.items())
    assert set(public) == set(hooks.PUBLIC) - {"hmfusion"}
    assert public["hmfusion.compat.tinybig"] == "reference/compat-tinybig.md"
    assert internal["hmfusion.ops.planner"] == "internals/ops-planner.md"
    assert set(internal) == hooks.internal_modules()
    assert not hooks.NOT_REFERENCED & (set(public) | set(internal))


def _nav_modules(section: list) -> set[str]:
    """The modules the pages of a nav section render (``::: module``)."""
    pages = [
        uri for entry in section for uri in (entry.values() if isinstance(entry, dict) else [entry])
    ]
    return {
        name
        for uri in pages
        for name in re.findall(r"^:::\s+([\w.]+)", (ROOT / "docs" / uri).read_text(), re.M)
    }


def test_the_reference_shows_the_public_api_and_the_index_says_so(hooks):
    # The nav's Reference renders exactly the public modules (the hook adds none that are written),
    # Internals none of them, and docs/reference/index.md's table names each public module once.
    nav = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)["nav"]
    sections = {
        title: pages for entry in nav if isinstance(entry, dict) for title, pages in entry.items()
    }
    written_public = _nav_modules(sections["Reference"])
    assert written_public <= set(hooks.PUBLIC)
    assert not _nav_modules(sections["Internals"]) & set(hooks.PUBLIC)
    index = (ROOT / "docs" / "reference" / "index.md").read_text()
    table = re.findall(r"^\| \[`([\w.]+)`\]", index, re.M)
    assert sorted(table) == sorted(hooks.PUBLIC)
