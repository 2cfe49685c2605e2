"""A griffe extension for the hmfusion site (mkdocs.yml: the python handler's ``extensions``).

The house style writes a docstring's example as ``Example:`` followed by an indented ``>>>``
block (as PyTorch and Napoleon do). Griffe's Google parser knows only ``Examples:`` as the
section whose ``>>>`` lines become code; ``Example:`` it reads as an admonition whose text is
Markdown, where ``>>>`` is three nested block quotes. This extension renames the heading
before griffe parses the docstring, so the examples render as Python sessions.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# an "Example:" line of its own, at any indentation (a section heading, not prose)
_EXAMPLE_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


def examples_heading(docstring: str) -> str:
    """``Example:`` section headings renamed ``Examples:``; everything else as it was."""
    return _EXAMPLE_HEADING.sub(r"\1Examples:", docstring)


class ExampleSections(griffe.Extension):
    """Renames ``Example:`` to ``Examples:`` in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = examples_heading(obj.docstring.value)
