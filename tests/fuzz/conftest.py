"""The fuzz tests' hypothesis profile: reproducible by default, deeper on request.

Without ``DUET_FUZZ_EXAMPLES`` every property runs the count its test names, derandomized
(the same inputs every run, as CI needs). ``DUET_FUZZ_EXAMPLES=N`` runs each with ``N``
examples (the socket properties with a quarter of them) and explores at random; a failure
prints the ``@reproduce_failure`` blob that replays it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.fuzz.strategies import DEEPER

settings.register_profile(
    "duet-fuzz",
    deadline=None,  # 2 shared cores: the time of one example says nothing
    derandomize=not DEEPER,
    database=None,  # nothing written into the checkout
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
settings.load_profile("duet-fuzz")
