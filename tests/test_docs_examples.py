"""The documentation site's Python examples run as written (like tests/test_readme.py).

Every ```python block of every page under docs/ runs in a fresh namespace, compiled with the
page's line numbers so that a failure points at the line of the page. Pages are plain Markdown;
nothing here needs MkDocs.
"""

from __future__ import annotations

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def python_blocks(page: pathlib.Path) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) for each ```python block."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in _BLOCK.finditer(text)
    ]


PAGES = sorted(page for page in DOCS.rglob("*.md") if python_blocks(page))
EXAMPLES = [(page, line, code) for page in PAGES for line, code in python_blocks(page)]


def test_the_pages_with_examples_are_found():
    names = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert {"getting-started.md", "how-it-works.md", "family.md"} <= names


def test_block_line_numbers_point_into_the_page():
    for page, line, code in EXAMPLES:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[line - 2] == "```python"
        assert lines[line - 1] == code.splitlines()[0]


@pytest.mark.parametrize(
    ("page", "line", "code"),
    EXAMPLES,
    ids=[f"{page.relative_to(DOCS).as_posix()}:{line}" for page, line, _ in EXAMPLES],
)
def test_docs_example_runs(page, line, code, capsys):
    # Leading newlines make the traceback's line numbers those of the page.
    source = "\n" * (line - 1) + code
    exec(compile(source, str(page), "exec"), {"__name__": "__docs__"})
