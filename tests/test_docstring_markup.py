"""Docstrings of the core, kernel, bench, fusion and compat modules are Markdown (mkdocstrings).

The reference site renders docstrings as Markdown (Google style): reST markup shows up raw
(`:class:`X``), a reST table is a block of `=` signs, and an `Args:` line naming two parameters
("device, dtype: …") is one bogus parameter that griffe warns about. Each docstring is read
from the source (ast), so a docstring built by an expression is not skipped.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "hmfusion"
FILES = sorted(SRC.rglob("*.py"))  # every module of the package

REST_ROLE = re.compile(r":(class|func|mod|meth|attr|data|obj|exc|math|ref):`")
REST_LITERAL = re.compile(r"(?<!`)``[^`\n]+``(?!`)")
REST_TABLE = re.compile(r"^\s*={3,}(\s+={3,})+\s*$", re.MULTILINE)
REST_HEADING = re.compile(r"\n[^\n]+\n\s*[-=~^]{4,}\s*\n")
# "Example::" is reST's literal block; Google style (griffe) wants "Example:" and an indented block
REST_BLOCK = re.compile(r"^\s*\w[\w ]*::\s*$", re.MULTILINE)
# math is $…$ (house rule); \( … \) and \[ … \] are the LaTeX delimiters the site does not expect
LATEX_DELIMITER = re.compile(r"\\[(\[]")
SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
ENTRY = re.compile(r"^(\s*)([^:\s][^:]*?):\s")


def docstrings(path: pathlib.Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append((getattr(node, "name", path.stem), doc))
    return found


def multi_name_args(doc: str) -> list[str]:
    """`Args:` entries whose name part holds more than one parameter ("a, b: …")."""
    bad, indent = [], None
    for line in doc.splitlines():
        section = SECTION.match(line)
        if section:
            indent = len(section.group(1)) + 4
            continue
        if indent is None:
            continue
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            indent = None  # the section ended
            continue
        entry = ENTRY.match(line)
        if entry and len(entry.group(1)) == indent:
            name = entry.group(2).split(" (")[0]
            if not re.fullmatch(r"\*{0,2}[A-Za-z_]\w*", name):
                bad.append(line.strip())
    return bad


def test_the_files_exist():
    assert len(FILES) > 15 and all(path.is_file() for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_docstrings_are_markdown(path):
    problems = []
    for name, doc in docstrings(path):
        for pattern, what in (
            (REST_ROLE, "reST role"),
            (REST_LITERAL, "reST ``literal``"),
            (REST_TABLE, "reST table"),
            (REST_HEADING, "reST underlined heading"),
            (REST_BLOCK, "reST literal block (::)"),
            (LATEX_DELIMITER, "LaTeX delimiter (write $…$)"),
        ):
            if pattern.search(doc):
                problems.append(f"{name}: {what}: {pattern.search(doc).group(0)!r}")
        problems += [
            f"{name}: Args entry with several names: {line!r}" for line in multi_name_args(doc)
        ]
    assert problems == []


@pytest.mark.parametrize(
    "doc, bad",
    [
        ("Do.\n\nArgs:\n    device, dtype: factory arguments.\n", 1),
        ("Do.\n\nArgs:\n    x: one.\n        continued: not an entry.\n    *args: more.\n", 0),
        ("Do.\n\nArgs:\n    name, n, dims, and the keyword arguments: as in X.\n", 1),
        ("Do.\n\nArgs:\n    x (int): typed.\n\nReturns:\n    a, b: not args.\n", 0),
    ],
)
def test_multi_name_args_finds_what_griffe_warns_about(doc, bad):
    assert len(multi_name_args(doc)) == bad


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("See :class:`X`.", REST_ROLE),
        ("Use ``x``.", REST_LITERAL),
        ("=====  =====\na      b\n=====  =====", REST_TABLE),
        ("Intro.\nConventions\n-----------\nText.", REST_HEADING),
        ("Do.\n\nExample::\n\n    >>> 1\n", REST_BLOCK),
        ("with :math:`b = 1`", REST_ROLE),
        ("with \\(b = 1\\)", LATEX_DELIMITER),
        ("\\[ b = 1 \\]", LATEX_DELIMITER),
    ],
)
def test_the_rest_patterns_match_rest(text, pattern):
    assert pattern.search(text)


def test_markdown_is_not_mistaken_for_rest():
    text = (
        "Use `x` and [`y`][hmfusion.y]; ```code``` fences.\n\n| a | b |\n| --- | --- |\n\n"
        "Example:\n    >>> f(x[0])\n\nwith $b = \\sqrt{3}$ and $$W = A \\otimes B.$$"
    )
    for pattern in (REST_ROLE, REST_LITERAL, REST_TABLE, REST_HEADING, REST_BLOCK, LATEX_DELIMITER):
        assert not pattern.search(text)
