import os

from hypothesis import HealthCheck, settings

# Property tests: a fixed budget that keeps the default suite fast; HYPOTHESIS_PROFILE=thorough
# for more examples.
settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=600, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
