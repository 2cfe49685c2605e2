"""The sweep results quoted in the docs and the README come from the committed results files.

Every accuracy `a ± b %` in the training page's "Where structure pays" section and in the
README's summary must be a point's mean ± std over seeds in a committed
results.json; every `N parameters` a point's fusion-parameter count; every `N.NN s per epoch` a
point's training time per epoch; every `took N min` (or `N s`) a sweep's total time. The committed tables
must be those the results render to.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from hmfusion.apps.train.sweep_report import sweep_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "docs" / "training").glob("sweep-*/results.json"))
NAMES = ["mfeat-encoded", "mfeat-raw", "nutrimouse", "mfeat-literature"]
#: Published figures quoted beside ours, with their source (not ours to check).
PUBLISHED = {"98.51 ± 0.15": "trusted multi-view classification (Han et al., ICLR 2021), mfeat"}


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else None]


def quoted_texts() -> list[tuple[str, str]]:
    page = (ROOT / "docs" / "training" / "index.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [
        ("docs/training/index.md", section(page, "## Where structure pays")),
        ("README.md", section(readme, "## Where structure pays")),
    ]


def summaries() -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in SWEEPS]


def test_every_documented_sweep_is_committed():
    assert sorted(path.parent.name for path in SWEEPS) == sorted(f"sweep-{n}" for n in NAMES)
    for path in SWEEPS:
        summary = json.loads(path.read_text(encoding="utf-8"))
        assert summary["complete"] is True
        assert all(len(point["seeds"]) >= 3 for point in summary["points"])
        assert (path.parent / "sweep.png").stat().st_size > 10_000


@pytest.mark.parametrize("path", SWEEPS, ids=[p.parent.name for p in SWEEPS])
def test_committed_tables_are_what_the_results_render_to(path):
    summary = json.loads(path.read_text(encoding="utf-8"))
    assert (path.parent / "results.md").read_text(encoding="utf-8") == sweep_table(summary) + "\n"


@pytest.mark.parametrize("where, text", quoted_texts(), ids=["docs", "readme"])
def test_quoted_numbers_come_from_the_results(where, text):
    points = [point for summary in summaries() for point in summary["points"]]
    accuracies = {
        f"{100 * p['test_accuracy_mean']:.2f} ± {100 * p['test_accuracy_std']:.2f}"
        for p in points
    } | set(PUBLISHED)
    parameters = {f"{p['fusion_parameters']:,}" for p in points}
    per_epoch = {f"{p['seconds_per_epoch']:.2f}" for p in points}
    minutes = {f"{s['total_seconds'] / 60:.0f}" for s in summaries()}
    seconds = {f"{s['total_seconds']:.0f}" for s in summaries()}
    text = " ".join(text.split())  # a number may be broken over lines
    found = {
        "accuracy": re.findall(r"(\d+\.\d\d ± \d+\.\d\d) ?%", text),
        "parameters": re.findall(r"(\d[\d,]*) parameters", text),
        "per epoch": re.findall(r"(\d+\.\d\d) s per epoch", text),
        "minutes": re.findall(r"took (\d+) min", text),
        "seconds": re.findall(r"took (\d+) s\b", text),
    }
    assert found["accuracy"] and found["parameters"], f"{where} quotes no sweep numbers"
    for kind, allowed in [
        ("accuracy", accuracies),
        ("parameters", parameters),
        ("per epoch", per_epoch),
        ("minutes", minutes),
        ("seconds", seconds),
    ]:
        unknown = [value for value in found[kind] if value not in allowed]
        assert not unknown, f"{where}: {kind} {unknown} are in no committed results file"
