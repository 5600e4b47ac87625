"""Shared Hypothesis strategies and the float64 tolerance for the SPEC §6 bound tests.

The strategies build the hard cases of theory/ *by construction*: exact and near ties at
the top, near-one-hot distributions, flat distributions, logits of magnitude 1e3,
degenerate perturbations (a constant shift, one coordinate, a swap of the top two) and
perturbation scales from 1e-9 to 10. Vocabularies stay ≤ 64 here; the 50k-vocabulary
cases are fixed examples inside the tests (generating them would be slow).

Legend: V vocabulary, d hidden size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

EPS = float(np.finfo(np.float64).eps)  # 2.22e-16, unit roundoff ×2 of float64
# The absolute error a float64 product or quotient may add when its result underflows:
# with gradual underflow fl(x∘y) = (x∘y)(1 + δ) + η, |δ| ≤ EPS/2, |η| ≤ 2⁻¹⁰⁷⁵ (half the
# smallest subnormal; sums and differences add no η). Relative tolerances alone fail on
# results below 2.2e-308 (e.g. a KL of 3e-323 from p ~ 1e-304 and δ ~ 1e-9). 2⁻¹⁰⁷⁵ is not
# a float64 (it rounds to 0), so ETA is the smallest subnormal 2⁻¹⁰⁷⁴, the next one up.
ETA = float(np.finfo(np.float64).smallest_subnormal)
assert ETA > 0

LOGIT_KINDS = ("generic", "tie", "near_tie", "one_hot", "flat", "tie_below_one_hot")
DELTA_KINDS = ("swap_top", "generic", "constant", "pair", "spike", "constant_plus_small")


def log_softmax_err(V: int, M: float) -> float:
    """Absolute float64 error of one log_softmax entry for |logits| ≤ M over V tokens.

    z_k − max (≤ eps·2M), the cascade sum of exps (relative ≤ (⌈log2 V⌉ + 1)·eps, so
    ≤ that much after the log), log s ≤ ln V (eps·ln V), the final subtraction of numbers
    ≤ 2M + ln V: all within (⌈log2 V⌉ + 3)·eps·(2M + ln V + 1).
    """
    return (math.ceil(math.log2(V)) + 3) * EPS * (2 * M + math.log(V) + 1)


def kl_tol(z: np.ndarray | torch.Tensor, z_q: np.ndarray | torch.Tensor) -> float:
    """Absolute float64 error of ``kl_divergence(z, z_q)`` (derived, not fitted).

    KL = Σ p_k (lp_k − lq_k): the two log-probs add 2·e₁ (the p_k sum to 1); p_k = exp(lp_k)
    has relative error e₁ + eps, multiplied by Σ p_k |lp_k − lq_k| ≤ R = max δ − min δ
    (lp_k − lq_k = −δ_k + [LSE(z+δ) − LSE(z)] and the bracket lies in [min δ, max δ]);
    the products and the cascade sum add (⌈log2 V⌉ + 2)·eps·R. At |z| ~ 1e3, V = 64 this
    is ~1e-11 + 4e-12·R: the "~1e-13·|z|" of LSE rounding times the depth of the sums.
    """
    z, z_q = np.asarray(z, dtype=np.float64), np.asarray(z_q, dtype=np.float64)
    V = z.shape[-1]
    M = float(max(np.abs(z).max(), np.abs(z_q).max()))
    d = z_q - z
    R = float(d.max() - d.min())
    e1 = log_softmax_err(V, M)
    return 2 * e1 + (e1 + (math.ceil(math.log2(V)) + 3) * EPS) * R


def lift_slack(h: np.ndarray, dh: np.ndarray, W: np.ndarray, g: np.ndarray, eps: float) -> float:
    """e with KL ≤ (√(¼L²‖Δh‖²) + e)² for the *computed* logits of W·RMSNorm_g (T2, T3).

    Each logit of W·(g ⊙ h / r) is off by ≤ (2d + 6)·eps·‖W_v‖·‖g‖_∞·√d (r: d + 3 roundings,
    h/r and g⊙: 2, the dot product: d; ‖g ⊙ h / r‖ ≤ ‖g‖_∞√d), for z and z_q alike, and
    fl(h + Δh) moves the applied step by ≤ eps·‖h + Δh‖, which the map amplifies by at most
    L_glob = ‖W‖₂‖g‖_∞/√ε. Halved because ¼‖a + b‖² = (½‖a‖ + ½‖b‖)².
    """
    d = h.shape[-1]
    g_inf = float(np.abs(g).max())
    e_logits = (2 * d + 6) * EPS * float(np.linalg.norm(W)) * g_inf * math.sqrt(d)
    L_glob = float(np.linalg.norm(W, 2)) * g_inf / math.sqrt(eps)
    e_step = L_glob * EPS * float(np.linalg.norm(h + dh))
    return e_logits + e_step / 2


@st.composite
def logits(draw, V_min: int = 2, V_max: int = 64) -> np.ndarray:
    """Teacher logits ``(V,)`` float64 of one of ``LOGIT_KINDS``, scale up to 1e3."""
    V = draw(st.integers(V_min, V_max))
    kind = draw(st.sampled_from(LOGIT_KINDS))
    scale = draw(st.sampled_from([1e-3, 1.0, 8.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 1e3, -1e3, 0.5]))
    base = draw(hnp.arrays(np.float64, V, elements=st.floats(-1, 1)))
    z = base * scale
    top = z.max()
    if kind == "tie":  # exact two-way tie at the top: margin m = g = 0
        z[0] = z[1] = top + 1.0
    elif kind == "near_tie":  # margin of 1e-12 … 1e-3
        z[0] = top + 1.0
        z[1] = z[0] - draw(st.sampled_from([1e-12, 1e-8, 1e-3]))
    elif kind == "one_hot":  # p₍₁₎ = 1 − e^-spike·V, up to exp(−700)
        z[0] = top + draw(st.sampled_from([20.0, 50.0, 700.0]))
    elif kind == "flat":  # uniform p
        z[:] = 0.0
    elif kind == "tie_below_one_hot":  # near-one-hot teacher whose runners-up are tied
        z[0] = top + 30.0
        z[1] = z[2 % V] = top
    return z + offset


@st.composite
def perturbations(draw, z: np.ndarray) -> np.ndarray:
    """A perturbation δ ``(V,)`` for logits ``z``, of one of ``DELTA_KINDS``."""
    V = z.shape[0]
    kind = draw(st.sampled_from(DELTA_KINDS))
    scale = draw(st.sampled_from([1e-9, 1e-4, 1e-2, 0.3, 2.0, 10.0]))
    base = draw(hnp.arrays(np.float64, V, elements=st.floats(-1, 1)))
    c = draw(st.sampled_from([0.0, 3.0, -1e3]))
    if kind == "generic":
        return base * scale
    if kind == "constant":  # softmax-invariant: KL must be 0 to rounding
        return np.full(V, c + scale)
    if kind == "constant_plus_small":
        return np.full(V, c) + base * scale
    if kind == "spike":  # all of ‖δ‖ on one coordinate
        delta = np.zeros(V)
        delta[draw(st.integers(0, V - 1))] = scale * draw(st.sampled_from([1.0, -1.0]))
        return delta
    # Move the teacher's top token a down and another token b up by t each, with t around
    # the half-margin, so that flips "just happen" (or just fail to).
    a = int(np.argmax(z))
    order = np.argsort(-z, kind="stable")
    b = int(order[1]) if kind == "swap_top" else draw(st.integers(0, V - 1))
    half = (z[a] - z[b]) / 2
    t = half * draw(st.sampled_from([1.0 + 1e-6, 1.0, 1.0 - 1e-6, 0.5, 2.0]))
    if half == 0:  # a teacher tie: any move of b up flips
        t = scale
    delta = np.zeros(V)
    delta[a] -= t
    delta[b] += t
    return delta


@st.composite
def logit_pairs(draw, V_max: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(z, δ) with z from :func:`logits` and δ from :func:`perturbations`."""
    z = draw(logits(V_max=V_max))
    return z, draw(perturbations(z))


@st.composite
def hidden_states(draw, d: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(h, Δh) ``(d,)`` each: ordinary, tiny (‖h‖ ≪ √(εd)), ‖Δh‖ > ‖h‖, Δh ∝ −h, just past 0."""
    h = draw(hnp.arrays(np.float64, d, elements=st.floats(-1, 1)))
    h = h * draw(st.sampled_from([1e-7 * math.sqrt(eps), 1e-2, 1.0, 30.0]))
    u = draw(hnp.arrays(np.float64, d, elements=st.floats(-1, 1)))
    kind = draw(st.sampled_from(["relative", "through_zero", "past_zero", "absolute"]))
    h_norm = float(np.linalg.norm(h))
    if kind == "through_zero":  # the segment passes through (or past) h = 0
        return h, -h * draw(st.sampled_from([0.5, 1.0, 2.0]))
    if kind == "past_zero":  # just past −0·h, slightly off the line: u(h) flips to ≈ −u(h)
        # while ‖Δh‖ ≈ ‖h‖, the case where the local constant 1/r(h) is 2× too small.
        u_perp = u - (u @ h) / (h @ h or 1.0) * h
        return h, -h * (1 + 1e-3) + 1e-6 * u_perp * h_norm
    if kind == "relative":  # ‖Δh‖ from 1e-6·‖h‖ to 100·‖h‖
        ratio = draw(st.sampled_from([1e-6, 0.1, 0.9, 1.0, 2.0, 100.0]))
        u_norm = float(np.linalg.norm(u)) or 1.0
        return h, u / u_norm * ratio * h_norm
    return h, u * draw(st.sampled_from([1e-6, 1e-2, 1.0]))


@st.composite
def heads(draw, d: int, V: int) -> tuple[np.ndarray, np.ndarray]:
    """An LM head W ``(V, d)`` (generic, rank one, a dominant row, or rows (w, −w, 0…)) and g ``(d,)``."""
    W = draw(hnp.arrays(np.float64, (V, d), elements=st.floats(-1, 1)))
    kind = draw(st.sampled_from(["generic", "rank_one", "outlier_row", "antisymmetric"]))
    if kind == "antisymmetric":  # z = (s, −s, 0, …): a centered Δz, T1's tight direction
        W[1] = -W[0]
        W[2:] = 0.0
    elif kind == "rank_one":
        W = np.outer(W[:, 0], W[0, :])
    elif kind == "outlier_row":
        W[0] *= 50.0
    W = W * draw(st.sampled_from([0.1, 1.0, 10.0]))
    g = draw(hnp.arrays(np.float64, d, elements=st.floats(-3, 3)))
    return W, g


@given(logit_pairs())
def test_logit_strategy_emits_finite_float64_pairs(pair):
    """The generators' contract: finite float64 vectors of equal length ≥ 2."""
    z, delta = pair
    assert z.dtype == delta.dtype == np.float64 and z.shape == delta.shape and z.shape[0] >= 2
    assert np.isfinite(z).all() and np.isfinite(delta).all()


def test_strategies_reach_the_hard_cases():
    """Each hard case is reachable: an exact tie, a 1e-12 near tie, a one-hot, |z| ≥ 1e3."""
    from hypothesis import find

    # find() raises NoSuchExample when no generated input satisfies the predicate
    gap = lambda z: np.sort(z)[-1] - np.sort(z)[-2]  # noqa: E731
    assert gap(find(logits(), lambda z: gap(z) == 0)) == 0
    assert 0 < gap(find(logits(), lambda z: 0 < gap(z) < 1e-10)) < 1e-10
    assert gap(find(logits(), lambda z: gap(z) > 600)) > 600
    assert np.abs(find(logits(), lambda z: np.abs(z).max() >= 1e3)).max() >= 1e3
