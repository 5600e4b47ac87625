"""T2 (theory/T2_hidden_state_lift.md, SPEC §6): KL_i ≤ ¼ L_i² ‖Δh_i‖² for z = W·RMSNorm_g(h).

Tolerances. The measured KL comes from float64 logits that already carry rounding;
``lift_slack`` (test_bounds_strategies) derives the resulting e with
measured ≤ (√bound·REL + e)² + kl_tol.

Legend: V vocabulary, d hidden size.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_bounds_strategies import EPS, heads, hidden_states, kl_tol, lift_slack

from fairref.bounds import hidden_lift_bound, lift_constant, rms_norm, spectral_norm

REL = 1 + 256 * EPS  # SVD ‖W‖₂ (backward stable, ≤ c·max(V, d)·eps) and a few products


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _u(h, eps):
    """The normalization h ↦ h / r(h) in numpy (g folded out)."""
    return h / math.sqrt(float(h @ h) / h.size + eps)


def _head_logits(h, W, g, eps):
    return W @ (g * _u(h, eps))  # (V,)


@st.composite
def lift_cases(draw):
    d = draw(st.integers(1, 12))
    V = draw(st.integers(2, 12))
    eps = draw(st.sampled_from([1e-6, 1e-5, 1e-2]))
    h, dh = draw(hidden_states(d, eps))
    W, g = draw(heads(d, V))
    return h, dh, W, g, eps


@given(lift_cases())
def test_T2_kl_at_most_quarter_L_squared_dh_squared(case):
    """The segment constant L_i bounds the head's KL, for tiny h, ‖Δh‖ > ‖h‖, Δh = −h, …"""
    h, dh, W, g, eps = case
    r = hidden_lift_bound(_t(h), _t(dh), _t(W), _t(g), eps)
    z, z_q = _head_logits(h, W, g, eps), _head_logits(h + dh, W, g, eps)
    slack = lift_slack(h, dh, W, g, eps)
    assert float(r.kl) <= (math.sqrt(float(r.bound)) * REL + slack) ** 2 + kl_tol(z, z_q)
    # The global constant ‖W‖₂‖g‖_∞/√ε dominates the segment constant everywhere.
    assert float(r.bound) <= float(r.bound_global) * REL
    # The measured KL is that of the numpy oracle logits, to rounding.
    assert abs(float(r.kl) - _np_kl(z, z_q)) <= 2 * kl_tol(z, z_q) + 4 * slack * (
        math.sqrt(float(r.bound_global)) + slack
    )


def _np_kl(z, z_q):
    lp = z - z.max() - math.log(np.exp(z - z.max()).sum())
    lq = z_q - z_q.max() - math.log(np.exp(z_q - z_q.max()).sum())
    return float(np.sum(np.exp(lp) * (lp - lq)))


@given(st.integers(1, 16).flatmap(lambda d: hidden_states(d, 1e-5)))
def test_T2_normalization_jacobian_norm_equals_inverse_r(pair):
    """‖∂(h/r(h))/∂h‖₂ = 1/r(h) (d ≥ 2), ≤ 1/r(h) (d = 1): the lemma behind L_i.

    J = (I − h hᵀ/(d r²))/r has eigenvalue 1/r on h^⊥ and ε/r³ along h.
    """
    h, _ = pair
    eps = 1e-5
    ht = _t(h).requires_grad_(False)
    J = torch.autograd.functional.jacobian(lambda x: rms_norm(x, torch.ones_like(x), eps), ht)
    r = math.sqrt(float(h @ h) / h.size + eps)
    J_norm = float(torch.linalg.matrix_norm(J, ord=2))
    tol = 64 * h.size * EPS / r  # autograd's J is exact to a few roundings per entry
    assert J_norm <= 1 / r + tol
    if h.size >= 2:
        assert abs(J_norm - 1 / r) <= tol
    assert torch.allclose(J, J.T, rtol=0, atol=tol)  # symmetric: ‖J‖₂ is its top eigenvalue


@given(st.integers(1, 16).flatmap(lambda d: hidden_states(d, 1e-5)))
def test_T2_normalization_chord_at_most_segment_constant(pair):
    """‖u(h + Δh) − u(h)‖ ≤ ‖Δh‖ / √(max(‖h‖ − ‖Δh‖, 0)²/d + ε), u(h) = h/r(h)."""
    h, dh = pair
    eps = 1e-5
    chord = float(np.linalg.norm(_u(h + dh, eps) - _u(h, eps)))
    L = float(lift_constant(_t(h), _t(dh), 1.0, 1.0, eps))
    # u has ‖u‖ ≤ √d; each entry carries ≤ (d + 4) roundings.
    assert chord <= L * float(np.linalg.norm(dh)) * REL + 2 * (h.size + 4) * EPS * math.sqrt(h.size)


def test_T2_local_constant_alone_is_not_a_finite_step_bound():
    """The Jacobian norm 1/r(h) *at h* is not a Lipschitz constant for a finite step.

    h = (1, 0), h + Δh = (−s, t) with t ≪ s ≪ 1 and ε → 0: u jumps from √2·(1, 0) to
    ≈ √2·(−1, 0), a chord of 2√2, while ‖Δh‖/r(h) ≈ √2·(1 + s): the ratio tends to 2 (more
    than the √2 that SPEC §6 mentions). With the head W = [[c, 0], [−c, 0]] the KL then
    exceeds the "local" bound ¼(‖W‖₂/r(h))²‖Δh‖² (≈ 1.4× at ε = 1e-5, → 4× as ε → 0),
    while the segment constant, which sees ‖h‖ − ‖Δh‖ < 0 and falls back to √ε, holds.
    """
    eps = 1e-5
    h = np.array([1.0, 0.0])
    dh = np.array([-1.0 - 1e-3, 1e-6])
    chord = float(np.linalg.norm(_u(h + dh, 1e-12) - _u(h, 1e-12)))
    local = float(np.linalg.norm(dh)) / math.sqrt(float(h @ h) / 2 + 1e-12)
    assert chord / local > 1.99  # 2/(1 + s) with s = 1e-3, minus O(t/s)
    for c in [0.1, 0.3]:
        W = np.array([[c, 0.0], [-c, 0.0]])
        r = hidden_lift_bound(_t(h), _t(dh), _t(W), _t(np.ones(2)), eps)
        local_bound = 0.25 * (np.linalg.norm(W, 2) / math.sqrt(0.5 + eps)) ** 2 * float(dh @ dh)
        assert float(r.kl) > 1.2 * local_bound  # the local constant would be violated
        assert float(r.kl) <= float(r.bound)  # T2 holds (with a margin of 30× here)


def test_T2_tight_for_small_orthogonal_step_on_two_token_head():
    """d = 2, V = 2, h = (1, 0), Δh = (0, η), g = 1, W = [[0, 1], [0, −1]]: ratio → 1.

    KL = ln cosh(u₂) with u₂ = η/√((1 + η²)/2 + ε); the bound is η²/(2((1 − η)²/2 + ε)):
    ratio = [((1 − η)²/2 + ε)/((1 + η²)/2 + ε)]·(1 − u₂²/6 + …) = 1 − 2η + O(η²).
    """
    eps = 1e-5
    h = np.array([1.0, 0.0])
    W = np.array([[0.0, 1.0], [0.0, -1.0]])
    g = np.ones(2)
    ratios = []
    for eta in [1e-2, 1e-3, 1e-4]:
        r = hidden_lift_bound(_t(h), _t([0.0, eta]), _t(W), _t(g), eps)
        ratio = float(r.kl) / float(r.bound)
        # 3η covers 2η + O(η²); the KL's own rounding is kl_tol relative to a KL of ~η²/2.
        slack = kl_tol(np.zeros(2), np.array([eta, -eta]) * 1.5) / (eta**2 / 2)
        assert 1 - 3 * eta - slack <= ratio <= 1 + slack
        ratios.append(ratio)
    assert ratios[0] < ratios[1] < ratios[2]


def test_T2_tiny_hidden_state_uses_the_global_constant():
    """‖h‖, ‖Δh‖ ≪ √(εd): r ≈ √ε on the whole segment, so L_i → ‖W‖₂‖g‖_∞/√ε."""
    eps, d = 1e-5, 8
    rng = np.random.default_rng(1)
    h, dh = rng.normal(size=d) * 1e-9, rng.normal(size=d) * 1e-9
    W, g = rng.normal(size=(5, d)), rng.normal(size=d)
    r = hidden_lift_bound(_t(h), _t(dh), _t(W), _t(g), eps)
    L_glob = spectral_norm(_t(W)) * float(np.abs(g).max()) / math.sqrt(eps)
    # L = L_glob/√(1 + (‖h‖−‖Δh‖)²/(dε)) ≥ L_glob(1 − ‖h‖²/(2dε)) with ‖h‖²/(dε) < 1e-12.
    assert abs(float(r.L) / L_glob - 1) <= 1e-12
    assert float(r.kl) <= float(r.bound_global) * REL + kl_tol(np.zeros(5), np.zeros(5))


@pytest.mark.parametrize(
    "kwargs, word",
    [(dict(eps=0.0), "eps"), (dict(W=torch.ones(3, 5)), "W")],
)
def test_T2_rejects_bad_arguments_by_name(kwargs, word):
    """A zero ε (RMSNorm undefined at 0) or a head of the wrong width is named in the error."""
    args = dict(h=torch.ones(4), dh=torch.ones(4), W=torch.ones(3, 4), g=torch.ones(4), eps=1e-5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        hidden_lift_bound(**args)
