"""The README's Python example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run(capsys):
    blocks = python_blocks()
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})


def test_readme_usage_prints_what_it_says(capsys):
    block = python_blocks()[0]
    exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.splitlines()
    claimed = [line.split("# ")[1].split("  (")[0].strip() for line in block.splitlines()
               if line.startswith("print(") and "# " in line]
    assert [p.strip() for p in printed] == claimed
