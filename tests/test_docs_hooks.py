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


_RESULTS = """# Benchmarks: title

Generated by a run.

**Machine.** a CPU.

## Targets: 3 of 4 checks met

| target | met |
|---|---|
| a | yes |

## Every figure

| m | x |
|---|---|
| 1 | 2 |

![speed-up vs ideal](speedup.png)

## Notes (hand-written)

**Why.** Because.
"""


def test_the_benchmark_page_leads_with_the_headline_and_one_plot(hooks):
    page = hooks.benchmark_page(_RESULTS)
    assert page.count("speedup.png") == 1
    headline, plot = page.index("**Targets: 3 of 4 checks met.**"), page.index("speedup.png")
    assert headline < plot < page.index("## How the run was made") < page.index("Generated by")
    assert "# Benchmarks" not in page  # the page has its own title
    # the generated sections fold, indented under their title; the notes stay open
    assert '??? note "Targets: 3 of 4 checks met"\n\n    | target | met |' in page
    assert '??? note "Every figure"\n\n    | m | x |' in page
    assert "\n## Notes (hand-written)\n\n**Why.** Because." in page
    assert page.index("??? note") < page.index("## Notes")


def test_the_benchmark_page_includes_the_committed_results(hooks):
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    page = hooks.benchmark_page(results)
    assert page.count("](speedup.png)") == 1 and "??? note" in page
    assert hooks.BENCHMARK_INCLUDE in (ROOT / "docs" / "benchmark" / "index.md").read_text()


@pytest.mark.parametrize(
    "text, plain",
    [
        ("a \\(W\\) b", "a W b"),
        ("\\[ W = A \\otimes B \\] then", "W = A \\otimes B then"),
        ("\\(\\left(x\\right)^\\top\\) and \\(y\\)", "\\left(x\\right)^\\top and y"),
        ("no math (here) [or] here", "no math (here) [or] here"),
    ],
)
def test_the_search_index_keeps_tex_without_delimiters(hooks, text, plain):
    assert hooks.strip_math_delimiters(text) == plain


@pytest.fixture(scope="module")
def griffe_examples():
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    path = ROOT / "tools/docs/griffe_examples.py"
    spec = importlib.util.spec_from_file_location("griffe_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_sections_render_as_code(griffe_examples):
    import griffe

    doc = "Do.\n\nExample:\n    >>> f(1)\n    2\n"
    before = griffe.Docstring(doc).parse("google")
    assert [s.kind.value for s in before][-1] == "admonition"  # what griffe does on its own
    renamed = griffe_examples.examples_heading(doc)
    after = griffe.Docstring(renamed).parse("google")
    assert after[-1].kind.value == "examples"
    assert after[-1].value[0][1] == ">>> f(1)\n2"  # a Python session, as code
    prose = "See the Example: below.\n    Example: x\n"
    assert griffe_examples.examples_heading(prose) == prose
