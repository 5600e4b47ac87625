"""T1 (theory/T1_logit_bound.md, SPEC §6): KL(p‖q) ≤ ¼‖δ − c·1‖² ∀c, ≤ (max δ − min δ)²/8.

Tolerances: ``kl_tol`` (test_bounds_strategies) is the derived float64 error of the
measured KL, ~eps·log2(V)·(8·max|z| + 4 ln V); the bounds themselves are sums of V
squares and carry a relative error ≤ (⌈log2 V⌉ + 4)·eps, covered by ``REL``.
"""

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from scipy.special import logsumexp
from test_bounds_strategies import EPS, kl_tol, log_softmax_err, logit_pairs

from fairref.bounds import kl_divergence, kl_logit_bound

REL = 1 + 64 * EPS  # relative rounding of a float64 sum of ≤ 2^16 squares, with room


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _realized(z, delta):
    """δ as the function sees it: fl(z + δ) − z (the perturbation actually measured)."""
    return (z + delta) - z


def _mp_kl(z_p, z_q, dps: int = 50) -> float:
    """Independent oracle: KL(softmax z_p ‖ softmax z_q) with 50 significant digits."""
    with mpmath.workdps(dps):
        zp = [mpmath.mpf(float(x)) for x in z_p]
        zq = [mpmath.mpf(float(x)) for x in z_q]
        lse_p = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in zp))
        lse_q = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in zq))
        return float(
            mpmath.fsum(mpmath.exp(a - lse_p) * ((a - lse_p) - (b - lse_q)) for a, b in zip(zp, zq))
        )


@given(logit_pairs(), st.floats(-5, 5))
def test_T1_kl_at_most_quarter_centered_l2(pair, c):
    """KL ≤ ¼‖δ − c·1‖² for the optimal c = mean(δ) and for an arbitrary c."""
    z, delta = pair
    r = kl_logit_bound(_t(z), _t(delta))
    tol = kl_tol(z, z + delta)
    d = _realized(z, delta)
    assert float(r.measured) <= float(r.bound_l2) * REL + tol
    # The "for every c" claim, evaluated independently in numpy (mean(δ) minimizes it).
    assert float(r.measured) <= 0.25 * float(np.sum((d - c) ** 2)) * REL + tol
    assert float(r.bound_l2) <= 0.25 * float(np.sum((d - c) ** 2)) * REL


@given(logit_pairs())
def test_T1_kl_at_most_range_squared_over_8_and_range_form_is_sharper(pair):
    """KL ≤ (max δ − min δ)²/8 ≤ ¼‖δ − c·1‖² (the range form never loses to the L2 form)."""
    z, delta = pair
    r = kl_logit_bound(_t(z), _t(delta))
    assert float(r.measured) <= float(r.bound_range) * REL + kl_tol(z, z + delta)
    assert float(r.bound_range) <= float(r.bound_l2) * REL


@given(logit_pairs())
def test_T1_kl_equals_lse_difference_minus_inner_product(pair):
    """KL = LSE(z+δ) − LSE(z) − ⟨p, δ⟩, with the right side from scipy (an independent path)."""
    z, delta = pair
    z_q = z + delta
    d = z_q - z
    p = np.exp(z - logsumexp(z))
    rhs = logsumexp(z_q) - logsumexp(z) - float(p @ d)
    measured = float(kl_divergence(_t(z), _t(z_q)))
    # The right side is ill-conditioned when |δ| is large (even for a constant shift): its
    # two LSEs add 2·e₁ and p (relative error e₁) multiplies δ, adding (e₁ + log2-depth·eps)·max|δ|.
    e1 = log_softmax_err(z.size, float(max(np.abs(z).max(), np.abs(z_q).max())))
    rhs_err = 2 * e1 + (e1 + (math.ceil(math.log2(z.size)) + 2) * EPS) * float(np.abs(d).max())
    assert abs(measured - rhs) <= kl_tol(z, z_q) + rhs_err


@given(logit_pairs())
# found by the dev profile: mean(d) rounds at |c| ~ 1e3 although every d_i is equal
@example((np.full(5, 1000.0), np.full(5, -999.995)))
def test_T1_constant_shift_gives_zero_kl(pair):
    """δ = c·1 leaves softmax unchanged: KL = 0 and both bounds 0, to rounding."""
    z, delta = pair
    shift = float(delta[0])
    r = kl_logit_bound(_t(z), _t(np.full_like(z, shift)))
    tol = kl_tol(z, z + shift)
    assert abs(float(r.measured)) <= tol
    # d = fl(fl(z + c) − z) differs from c by ≤ u·|z + c| + u·|d| per entry (u = eps/2, one
    # rounding per operation), so the spread of d is ≤ eps·(M + D), M = max|z + c|,
    # D = max|d|. The bounds are 0 up to that spread, and bound_l2 also carries the
    # rounding of mean(d): ≤ V·u·D in any summation order, so |d − mean d| ≤ spread + V·u·D.
    d = _realized(z, np.full_like(z, shift))  # the same IEEE operations as the function's
    D = float(np.abs(d).max())
    spread = EPS * (float(np.abs(z + shift).max()) + D) * REL
    assert float(r.bound_range) <= spread**2 / 8 * REL
    centred = spread + z.size * (EPS / 2) * D
    assert float(r.bound_l2) <= 0.25 * z.size * centred**2 * REL


@given(logit_pairs())
def test_T1_second_order_remainder_at_most_range_cubed_over_24(pair):
    """|KL − ½ Var_p(δ)| ≤ (max δ − min δ)³/24: the second-order term is exact to O(‖δ‖³)."""
    z, delta = pair
    r = kl_logit_bound(_t(z), _t(delta))
    d = _realized(z, delta)
    R = float(d.max() - d.min())
    # second_order is a p-weighted sum of squares ≤ R²: rounding ≤ REL·R²; KL as before.
    tol = kl_tol(z, z + delta) + 64 * EPS * R * R
    assert abs(float(r.measured) - float(r.second_order)) <= R**3 / 24 + tol


@given(logit_pairs())
def test_T1_reverse_kl_obeys_the_same_bounds(pair):
    """KL(q‖p) ≤ ¼‖δ − c·1‖² and ≤ range²/8, and its second-order term uses Var_q."""
    z, delta = pair
    r = kl_logit_bound(_t(z), _t(delta), reverse=True)
    fwd = kl_logit_bound(_t(z + delta), _t(-delta))  # KL(q‖p) as a forward KL from z + δ
    tol = kl_tol(z, z + delta)
    assert float(r.measured) <= float(r.bound_range) * REL + tol
    assert float(r.measured) <= float(r.bound_l2) * REL + tol
    assert abs(float(r.measured) - float(fwd.measured)) <= 2 * tol
    d = _realized(z, delta)
    R = float(d.max() - d.min())
    assert abs(float(r.measured) - float(r.second_order)) <= R**3 / 24 + tol + 64 * EPS * R * R


def test_T1_batched_over_leading_dims_equals_rowwise():
    """Leading dims are batch dims: a (2, 3, V) call equals the six (V,) calls, bit for bit."""
    rng = np.random.default_rng(5)
    z, delta = rng.normal(size=(2, 3, 9)) * 4, rng.normal(size=(2, 3, 9))
    r = kl_logit_bound(_t(z), _t(delta))
    for i in range(2):
        for j in range(3):
            rij = kl_logit_bound(_t(z[i, j]), _t(delta[i, j]))
            for field in ("measured", "bound_l2", "bound_range", "second_order"):
                assert torch.equal(getattr(r, field)[i, j], getattr(rij, field))


@pytest.mark.parametrize("bad", ["z", "delta"])
def test_T1_rejects_non_finite_input_by_name(bad):
    """A NaN would make every `measured <= bound` check pass vacuously: it is an error."""
    args = {"z": torch.zeros(4, dtype=torch.float64), "delta": torch.zeros(4, dtype=torch.float64)}
    args[bad][1] = float("nan")
    with pytest.raises(ValueError, match=bad):
        kl_logit_bound(**args)


@pytest.mark.parametrize("V", [2, 64, 50_000])
def test_T1_range_form_tight_along_half_split_family(V):
    """p uniform, δ = ε·v, v = +1 on half the tokens, −1 on the other: KL / (range²/8) → 1.

    Var_p(v) = 1 = range(v)²/4 and the third central moment is 0, so
    KL = ε²/2 − O(ε⁴): the ratio is 1 − O(ε²), increasing to 1.
    """
    z = np.zeros(V)
    v = np.where(np.arange(V) < V // 2, 1.0, -1.0)
    ratios = []
    for eps_ in [1e-1, 1e-2, 1e-3]:
        r = kl_logit_bound(_t(z), _t(eps_ * v))
        ratio = float(r.measured) / float(r.bound_range)
        # KL(ε) = ln cosh ε = ε²/2 − ε⁴/12 + …, so 1 − ratio ≈ ε²/6; allow ε² plus the
        # relative rounding of a KL of size ε²/2 (kl_tol / (ε²/2)).
        slack = kl_tol(z, eps_ * v) / (eps_**2 / 2)
        assert 1 - eps_**2 - slack <= ratio <= 1 + slack
        ratios.append(ratio)
    assert ratios[0] < ratios[1] < ratios[2]


@pytest.mark.parametrize("V", [2, 50_000])
def test_T1_l2_form_tight_on_two_token_family(V):
    """p ≈ (½, ½, 0, …), δ = ε(1, −1, 0, …): KL / (¼‖δ − c*·1‖²) → 1 as ε → 0.

    mean(δ) = 0 so c* = 0 and ¼‖δ‖² = ε²/2; the other V − 2 tokens carry mass
    (V − 2)·e^-60 ≈ 4e-22, so KL = ln cosh ε = ε²/2 − ε⁴/12 + …: ratio = 1 − ε²/6 + O(ε⁴).
    """
    z = np.full(V, -60.0)
    z[:2] = 0.0
    v = np.zeros(V)
    v[0], v[1] = 1.0, -1.0
    for eps_ in [1e-1, 1e-2]:
        r = kl_logit_bound(_t(z), _t(eps_ * v))
        ratio = float(r.measured) / float(r.bound_l2)
        # 2ε² covers ε²/6; the KL rounding is kl_tol relative to a KL of ε²/2.
        assert abs(ratio - 1) <= 2 * eps_**2 + kl_tol(z, z + eps_ * v) / (eps_**2 / 2)
        assert ratio <= 1 + kl_tol(z, z + eps_ * v) / (eps_**2 / 2)


@pytest.mark.parametrize(
    "z, delta",
    [
        ([1000.0, 999.999999, -1000.0, 3.0], [0.0, 1e-6, 5.0, -2.0]),  # huge near-tie
        ([700.0, 0.0, 0.0], [-1e-9, 1e-9, 0.0]),  # one-hot, tiny δ
        ([0.0] * 5, [1.0, -1.0, 0.5, 0.25, -0.75]),  # uniform
        ([1e3, -1e3, 1e3, 0.0], [-30.0, 30.0, 0.0, 1e3]),  # large δ, exact tie
    ],
)
def test_T1_kl_matches_mpmath_oracle(z, delta):
    """kl_divergence agrees with a 50-digit mpmath evaluation to kl_tol on hard cases."""
    z, delta = np.array(z), np.array(delta)
    z_q = z + delta
    assert abs(float(kl_divergence(_t(z), _t(z_q))) - _mp_kl(z, z_q)) <= kl_tol(z, z_q)


def test_T1_bounds_hold_on_fixed_50k_vocabulary_examples():
    """V = 50 000 with logits of magnitude 1e3, a near-one-hot teacher and a spike δ.

    The measured KL also matches a scipy oracle (log-sum-exp in numpy) to kl_tol.
    """
    rng = np.random.default_rng(0)
    V = 50_000
    cases = []
    z = rng.normal(size=V) * 1e3
    cases.append((z, rng.normal(size=V) * 1e-3))
    z2 = rng.normal(size=V)
    z2[17] += 40.0
    spike = np.zeros(V)
    spike[3] = 25.0
    cases.append((z2, spike))
    cases.append((np.zeros(V), rng.normal(size=V) * 0.5 + 7.0))
    for z, delta in cases:
        z_q = z + delta
        r = kl_logit_bound(_t(z), _t(delta))
        tol = kl_tol(z, z_q)
        lp, lq = z - logsumexp(z), z_q - logsumexp(z_q)
        oracle = float(np.sum(np.exp(lp) * (lp - lq)))
        assert abs(float(r.measured) - oracle) <= 2 * tol
        assert float(r.measured) <= float(r.bound_range) * REL + tol
        assert float(r.bound_range) <= float(r.bound_l2) * REL
        d = z_q - z
        R = float(d.max() - d.min())
        assert abs(float(r.measured) - float(r.second_order)) <= R**3 / 24 + tol + 64 * EPS * R * R
