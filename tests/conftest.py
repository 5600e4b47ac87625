"""Shared test configuration.

Hypothesis profiles (select with ``--hypothesis-profile=NAME`` or ``HYPOTHESIS_PROFILE``):

- ``ci``  — derandomized, bounded examples, no deadline: what ``.ci/run`` uses, so CI is
  deterministic.
- ``dev`` — a deeper random search for local runs (the default).
"""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# SPEC §1: reduced-precision matmul modes are off everywhere in the reference.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# One intra-op thread: the test tensors are tiny, and on a 2-core machine a second thread
# only adds a hand-off of milliseconds to every small LAPACK/softmax call.
torch.set_num_threads(1)
