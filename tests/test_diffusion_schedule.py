"""Commit schedules (SPEC §2): LLaDA's even split and Dream's float32 timestep rule.

Each schedule is compared with an independent oracle written here: a Python loop for
LLaDA, IEEE float32 arithmetic in NumPy for Dream.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion.schedule import (
    dream_timesteps,
    dream_transfer_count,
    llada_transfer_counts,
)


@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(1, 64))
def test_llada_counts_split_evenly_with_remainder_to_earliest_steps(n, steps):
    """Each row sums to its masked count, entries differ by at most one, and the larger
    entries come first — the per-block schedule of the public loop."""
    got = llada_transfer_counts(torch.tensor(n), steps)
    assert got.shape == (len(n), steps)
    for b, n_b in enumerate(n):
        oracle = [n_b // steps + (1 if i < n_b % steps else 0) for i in range(steps)]
        assert got[b].tolist() == oracle
        assert sum(got[b].tolist()) == n_b


def test_llada_counts_reject_zero_steps():
    with pytest.raises(ValueError, match="steps"):
        llada_transfer_counts(torch.tensor([4]), 0)


@given(st.integers(1, 512), st.sampled_from([1e-3, 1e-5, 0.5, 0.999]))
def test_dream_timesteps_are_float32_from_one_to_eps_decreasing(steps, eps):
    """The grid starts at exactly 1, ends at float32(eps), decreases strictly, and each
    entry is within one float32 ulp (relative 2^-23, plus the rounding of the float64
    reference) of the exact linspace."""
    ts = dream_timesteps(steps, eps)
    assert ts.dtype == torch.float32 and ts.shape == (steps + 1,)
    assert ts[0].item() == 1.0 and ts[-1].item() == np.float32(eps)
    assert bool((ts[1:] < ts[:-1]).all())
    exact = np.linspace(1.0, eps, steps + 1)  # float64
    assert np.all(np.abs(ts.numpy() - exact) <= 2 * 2.0**-23 * np.abs(exact))


@given(st.integers(0, 4096), st.integers(2, 256), st.integers(0, 255),
       st.sampled_from([1e-3, 1e-5, 0.1]), st.booleans())
def test_dream_transfer_count_is_float32_floor_of_n_times_one_minus_s_over_t(
        n_total, steps, i, eps, halves):
    """int(n̄ (1 − s/t)) evaluated in float32, n̄ a batch mean (halves: B = 2, odd sums)."""
    i = i % (steps - 1)  # a non-final step
    B = 2 if halves else 1
    n_mean = torch.tensor(n_total) / B  # float32, as mask_index.sum() / B
    ts = dream_timesteps(steps, eps)
    got = dream_transfer_count(n_mean, ts[i], ts[i + 1], last=False)
    f32 = np.float32
    t, s = f32(ts[i].item()), f32(ts[i + 1].item())
    oracle = int(f32(f32(n_total) / f32(B)) * (f32(1) - s / t))
    assert got == oracle
    assert dream_transfer_count(n_mean, ts[i], ts[i + 1], last=True) == int(n_total / B)


@given(st.integers(0, 200), st.integers(1, 80))
def test_dream_schedule_commits_everything_by_the_last_step(n0, steps):
    """Following the rule for one row, the counts never exceed what is left and sum to n0."""
    ts = dream_timesteps(steps, 1e-3)
    n = n0
    for i in range(steps):
        k = dream_transfer_count(torch.tensor(n) / 1, ts[i], ts[i + 1], last=i == steps - 1)
        assert 0 <= k <= n
        n -= k
    assert n == 0


def test_dream_schedule_rejects_bad_eps():
    with pytest.raises(ValueError, match="eps"):
        dream_timesteps(8, 0.0)
