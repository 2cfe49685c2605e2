"""tinybig's own fusion unit tests, run against hmfusion.compat.tinybig.

The five files are tinybig's ``tests/unit_tests/fusion/`` (commit d132d99, MIT licence in
``LICENSE``, Copyright (c) 2024-Present Jiawei Zhang, IFM Lab, UC Davis) with only their import
lines changed. Against tinybig 0.2.1 all 39 pass; here the cases below fail because of a
deliberate fix (listed in docs/tinybig.md), marked ``xfail(strict=True)`` so that a change in
either direction is noticed.
"""

import pytest

DELIBERATE_FIXES = {
    "test_basic_fusion.py::test_weighted_summation_fusion_invalid_weights":
        "two inputs for three weights raise ValueError naming the counts, not AssertionError",
    "test_basic_fusion.py::test_parameterized_weighted_summation_fusion_no_weights":
        "a missing w raises ValueError ('w is required'), not AssertionError",
    "test_concatenation_fusion.py::test_post_process_called":
        "the inputs are checked against dims: two inputs to a fusion built with dims=[2, 2, 2] "
        "raise ValueError (tinybig concatenates them into a width calculate_n() does not report)",
}


def pytest_collection_modifyitems(items):
    for item in items:
        for suffix, reason in DELIBERATE_FIXES.items():
            if item.nodeid.endswith(suffix):
                item.add_marker(pytest.mark.xfail(strict=True, raises=ValueError, reason=reason))

