import os
import tempfile

# The default suite runs with the measuring planner off, so that the cost model's choices are
# what the plan tests check (tests/test_tuning.py turns it on where it is the subject), and any
# wisdom goes to a folder of its own, never the user's cache.
os.environ["HMFUSION_TUNE"] = "0"
os.environ["HMFUSION_WISDOM_DIR"] = tempfile.mkdtemp(prefix="hmfusion-test-wisdom-")

from hypothesis import HealthCheck, settings

# Property tests: a fixed budget that keeps the default suite fast; HYPOTHESIS_PROFILE=thorough
# for more examples.
settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=600, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# Device-generic tests take the ``device`` fixture: CPU by default, HMFUSION_TEST_DEVICE=cuda
# (or any torch device string) runs them there, skipped where that device is unavailable.
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("HMFUSION_TEST_DEVICE", "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        pytest.skip(f"HMFUSION_TEST_DEVICE={name!r} is not a torch device")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("HMFUSION_TEST_DEVICE=cuda but CUDA is not available")
    if chosen.type not in ("cpu", "cuda") and not hasattr(torch, chosen.type):
        pytest.skip(f"device type {chosen.type!r} is not available")
    return chosen


# The CPUs the plan-choice tests simulate (never the host's): the AVX-512 Xeon with AMX, whose
# bfloat16 and float16 GEMMs run on oneDNN, and the AVX2 EPYC, whose 16-bit GEMMs are slow.
SIMULATED_CPUS = {
    "avx512": (True, {torch.bfloat16: True, torch.float16: True}),
    "avx2": (False, {torch.bfloat16: False, torch.float16: False}),
}


@pytest.fixture(params=sorted(SIMULATED_CPUS))
def simulated_cpu(request, monkeypatch) -> str:
    """Each test that checks a plan runs once per simulated CPU (vector width, 16-bit GEMMs)."""
    from hmfusion.ops import costmodel, planner

    wide, half = SIMULATED_CPUS[request.param]
    monkeypatch.setattr(costmodel, "WIDE_VECTORS", wide)
    monkeypatch.setattr(costmodel, "HALF_GEMMS_FAST", half)
    monkeypatch.setattr(planner, "_CACHE", {})
    return request.param


def pytest_collection_modifyitems(config, items):
    """Slow tests (full training, compile, distributed) get 1800 s before pytest-timeout
    (pyproject: 300 s for the rest) calls them hung, unless they name their own."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(1800))
