"""The application modules: their docstring examples run, and each stays a small room."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

APP_MODULES = [
    "apps.common",
    "apps.outputs",
    "apps.manifest",
    "apps.train.model",
    "apps.train.checkpoint",
    "apps.train.loop",
    "apps.train.results",
    "apps.train.budgets",
    "apps.train.sweep",
    "apps.train.sweep_report",
    "apps.train.distributed",
    "apps.reporting",
    "apps.train.command",
    "apps.predict",
    "apps.cli",
    "data.files",
    "data.tables",
    "data.arrays",
    "data.dataset",
]


@pytest.mark.parametrize("name", APP_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"hmfusion.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("name", APP_MODULES)
def test_module_is_well_under_500_lines(name):
    module = importlib.import_module(f"hmfusion.{name}")
    assert len(Path(module.__file__).read_text(encoding="utf-8").splitlines()) < 400


def test_train_and_predict_keep_only_arguments_and_main():
    for name in ("apps.train.command", "apps.predict"):
        module = importlib.import_module(f"hmfusion.{name}")
        public = {
            n
            for n in vars(module)
            if not n.startswith("_")
            and getattr(vars(module)[n], "__module__", None) == module.__name__
        }
        assert public <= {"add_arguments", "main", "predict"}, public
