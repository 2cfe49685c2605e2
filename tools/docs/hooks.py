"""MkDocs hooks for the hmfusion site (mkdocs.yml: ``hooks:``).

- The benchmark's artefacts stay where the benchmark writes them (``benchmarks/``); the site
  serves them as ``benchmark/speedup.png`` and ``benchmark/results.json`` without copies, so
  the benchmark page (which includes ``benchmarks/RESULTS.md``) keeps its relative links.
- The benchmark page leads with the run's headline (the targets met) and its one plot; the
  rest of ``benchmarks/RESULTS.md`` follows, its generated tables folded (pymdownx.details)
  and its hand-written notes open. ``RESULTS.md`` stays one document for GitHub readers; the
  page rearranges it where it includes it (``on_page_markdown``), so both say the same.
- Every name a reference page documents must have a docstring of its own: mkdocstrings shows
  undocumented names silently, so this hook logs a warning for each one, and ``--strict``
  turns the warnings into a failed build. The names checked are those in ``__all__`` of every
  module a page renders with ``::: module``; a class's public methods and properties are
  checked too.
- The search index holds what a reader sees: the formulas' TeX without the ``\\(…\\)`` and
  ``\\[…\\]`` delimiters that arithmatex wraps them in for KaTeX (the search results show
  text, not rendered math); the reference pages carry no source (``show_source: false``).
- The public API is stated once, here (``PUBLIC``), and docs/reference/index.md says it in
  words (a test checks that both name the same modules). Each public module has a page under
  Reference; every other module without a leading _ is an internal (``hmfusion.ops``,
  ``hmfusion.apps``, the modules behind a package's names) and has its page under Internals,
  apart from the public API, so that cross-references from the docstrings resolve. A module
  that no page under docs/ renders with ``::: module`` gets a generated page,
  ``reference/<name>.md`` or ``internals/<name>.md`` holding ``::: module``, listed in its
  section after the written ones. Write the page (and its nav entry) to give a module an
  introduction.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.hmfusion")

ROOT = Path(__file__).resolve().parents[2]
_SRC = str(ROOT / "src")
BENCHMARK_FILES = {
    "benchmark/speedup.png": "benchmarks/speedup.png",
    "benchmark/results.json": "benchmarks/results.json",
}
#: The public API: the modules a user imports from. Their names (``__all__``) are what the
#: package promises; everything else may change without notice.
PUBLIC = (
    "hmfusion",  # the fusion layers (defined in hmfusion.fusion)
    "hmfusion.planner",
    "hmfusion.structures",
    "hmfusion.structures.blocksizes",
    "hmfusion.structures.fitting",
    "hmfusion.compat.tinybig",
    "hmfusion.data",
)
#: The packages whose modules are walked for internals (a page each, under Internals).
PACKAGES = (
    "hmfusion",
    "hmfusion.compat",
    "hmfusion.structures",
    "hmfusion.ops",
    "hmfusion.apps",
    "hmfusion.apps.train",
    "hmfusion.apps.bench",
)
# Modules that need no page of their own: the entry point's dispatch, ``python -m``, the
# packages whose pages are their modules' pages, and the modules whose names a public page
# shows (``hmfusion.fusion``'s on the page of ``hmfusion``, ``hmfusion.structures``' own).
NOT_REFERENCED = {
    "hmfusion.__main__",
    "hmfusion.apps",
    "hmfusion.apps.bench",
    "hmfusion.apps.cli",
    "hmfusion.apps.train",
    "hmfusion.compat",
    "hmfusion.fusion",
    "hmfusion.ops",
    *(f"hmfusion.structures.{name}" for name in ("base", "dense", "kronecker", "random_matrix")),
}
#: The navigation sections: the public API, and the internals (for contributors).
SECTIONS = {"reference": "Reference", "internals": "Internals"}
# arithmatex's delimiters around TeX in the HTML: \( … \) inline, \[ … \] display
_MATH = re.compile(r"\\\((.*?)\\\)|\\\[(.*?)\\\]", re.S)
BENCHMARK_PAGE = "benchmark/index.md"
BENCHMARK_INCLUDE = '--8<-- "benchmarks/RESULTS.md"'
_PLOT = re.compile(r"^!\[[^\]]*\]\(speedup\.png\)\s*$", re.M)
_DIRECTIVE = re.compile(r"^:::\s+([\w.]+)", re.M)
# module -> URI of its generated reference page (filled by on_config for this build)
_GENERATED: dict[str, str] = {}


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    if _SRC not in sys.path:  # document this checkout's package, whatever is installed
        sys.path.insert(0, _SRC)
    written = _documented_modules(Path(config.docs_dir))
    _GENERATED.clear()
    for module_name in sorted(set(PUBLIC) - written):
        _GENERATED[module_name] = f"reference/{reference_slug(module_name)}.md"
    for module_name in sorted(internal_modules() - written):
        _GENERATED[module_name] = f"internals/{reference_slug(module_name)}.md"
    for entry in config.nav or []:
        for folder, title in SECTIONS.items():
            if isinstance(entry, dict) and isinstance(entry.get(title), list):
                entry[title].extend(
                    {name: uri} for name, uri in _GENERATED.items() if uri.startswith(folder + "/")
                )
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, source in BENCHMARK_FILES.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    for module_name, uri in _GENERATED.items():
        content = f"# {module_name}\n\n::: {module_name}\n"
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != BENCHMARK_PAGE:
        return markdown
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    if BENCHMARK_INCLUDE not in markdown:
        raise PluginError(f"{BENCHMARK_PAGE} must include the results: {BENCHMARK_INCLUDE}")
    return markdown.replace(BENCHMARK_INCLUDE, benchmark_page(results))


def benchmark_page(results: str) -> str:
    """``benchmarks/RESULTS.md`` for the benchmark page: the targets' headline and the plot first,
    then how the run was made, the generated tables folded, and the notes open.

    ``RESULTS.md`` is a title, its introduction, and ``## `` sections; those whose title starts
    with ``Notes`` are written by hand and stay open, the others are tables and fold.
    """
    head, *sections = re.split(r"^## ", results, flags=re.M)
    intro = "\n".join(line for line in head.splitlines() if not line.startswith("# ")).strip()
    folded, notes, headline = [], [], ""
    for section in sections:
        title, _, body = section.partition("\n")
        body = _PLOT.sub("", body).strip()
        if title.startswith("Notes"):
            notes.append(f"## {title}\n\n{body}")
            continue
        if title.startswith("Targets"):
            headline = title
        indented = "\n".join(f"    {line}" if line else "" for line in body.splitlines())
        folded.append(f'??? note "{title}"\n\n{indented}')
    lead = f"**{headline}.**\n\n" if headline else ""
    return (
        f"{lead}![Measured and ideal speed-up of hmfusion over dense](speedup.png)\n\n"
        f"## How the run was made\n\n{intro}\n\n"
        "## The tables\n\nEvery figure of the run "
        "([`results.json`](results.json)); click a title to unfold it.\n\n"
        + "\n\n".join(folded)
        + "\n\n"
        + "\n\n".join(notes)
        + "\n"
    )


def on_pre_build(config: MkDocsConfig) -> None:
    documented = _documented_modules(Path(config.docs_dir)) | set(_GENERATED)
    for module_name in sorted(documented):
        for name in undocumented_names(module_name):
            log.warning("%s has no docstring of its own (every public name needs one)", name)


def on_post_build(config: MkDocsConfig) -> None:
    index = Path(config.site_dir) / "search" / "search_index.json"
    if not index.is_file():
        return
    data = json.loads(index.read_text(encoding="utf-8"))
    for doc in data.get("docs", []):
        for key in ("title", "text"):
            if key in doc:
                doc[key] = strip_math_delimiters(doc[key])
    index.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")


def strip_math_delimiters(text: str) -> str:
    """``a \\(W\\) b`` -> ``a W b``: TeX as written, without arithmatex's delimiters."""
    return _MATH.sub(lambda match: (match.group(1) or match.group(2) or "").strip(), text)


def reference_slug(module_name: str) -> str:
    """``hmfusion.compat.tinybig`` -> ``compat-tinybig``: the page name of a module."""
    return module_name.removeprefix("hmfusion.").replace(".", "-")


def internal_modules() -> set[str]:
    """Every module without a leading _ in ``PACKAGES``, less ``PUBLIC`` and ``NOT_REFERENCED``."""
    names = set(PACKAGES)
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__, prefix=package_name + "."):
            if not info.name.rsplit(".", 1)[1].startswith("_"):
                names.add(info.name)
    return names - set(PUBLIC) - NOT_REFERENCED


def _documented_modules(docs_dir: Path) -> set[str]:
    return {
        match
        for page in docs_dir.rglob("*.md")
        for match in _DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    }


def _own_doc(obj: Any) -> str | None:
    """The object's own docstring; for a class, not one inherited or generated for it."""
    if not inspect.isclass(obj):
        return getattr(obj, "__doc__", None)
    doc = obj.__dict__.get("__doc__")
    # NamedTuple and dataclass write "Name(field, ...)", 3.11's Enum "An enumeration."
    if doc and (doc == "An enumeration." or re.fullmatch(rf"{obj.__name__}\(.*\)", doc, re.S)):
        return None
    return doc


def undocumented_names(module_name: str) -> list[str]:
    """Dotted names exported by the module (``__all__``) that have no docstring of their own."""
    module = importlib.import_module(module_name)
    missing = [] if module.__doc__ else [module_name]
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        qualified = f"{module_name}.{name}"
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants and aliases: documented by a ``#:`` comment or the module
        if not _own_doc(obj):
            missing.append(qualified)
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property) or inspect.isfunction(value):
                    # a method overriding a documented one may keep the base's docstring
                    if not inspect.getdoc(
                        getattr(obj, attr) if inspect.isfunction(value) else value
                    ):
                        missing.append(f"{qualified}.{attr}")
    return missing
