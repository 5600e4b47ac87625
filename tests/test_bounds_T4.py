"""T4, T4′ and T4s (theory/T4_frontier_flips.md, SPEC §6): what a flip costs in KL or ‖Δz‖².

T4: flip ⇒ g² ≤ 2 KL. T4′: flip from a to b ⇒ δ_b − δ_a ≥ m ⇒ 2‖δ − c·1‖² ≥ m², and
2/m² ≤ 1/(2g²). T4s: set flip at a step ⇒ some candidate has 2 KL_i ≥ gap² (top-1 prob).

Tolerances: ``kl_tol`` for measured KLs; probabilities from ``softmax`` carry a relative
error e₁ = ``log_softmax_err`` (they are exp of a log-softmax entry), so a probability
margin g or a confidence is off by ≤ 2e₁; a logit difference z_a − z_b by ≤ eps·|z_a − z_b|.

Legend: V vocabulary, C candidate slots at one sampler step.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_bounds_strategies import (
    EPS,
    heads,
    hidden_states,
    kl_tol,
    lift_slack,
    log_softmax_err,
    logit_pairs,
)

from fairref.bounds import flip_bounds, hidden_lift_bound, kl_divergence, rms_norm, set_flip_bound



def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _e1(*zs):
    return log_softmax_err(zs[0].shape[-1], float(max(np.abs(z).max() for z in zs)))


# ------------------------------------------------------------------------ T4, T4′


@given(logit_pairs())
def test_T4_flip_implies_prob_margin_squared_at_most_twice_kl(pair):
    """flip ⇒ TV ≥ g/2 (checked in numpy) and g² ≤ 2 KL (Pinsker)."""
    z, delta = pair
    r = flip_bounds(_t(z), _t(delta))
    if not bool(r.flipped):
        return
    z_q = z + delta
    e1, g = _e1(z, z_q), float(r.g)
    tv = 0.5 * float(np.abs(_softmax(z) - _softmax(z_q)).sum())
    assert tv >= g / 2 - 2 * e1 - 2 * e1  # g and TV each off by ≤ 2e₁
    # g² ≤ 2KL with g off by ≤ 2e₁ and KL by ≤ kl_tol:
    assert g * g <= 2 * float(r.kl) + 2 * kl_tol(z, z_q) + 4 * e1 * (g + e1)
    assert float(r.t4) >= min(1.0, (g * g - 2 * kl_tol(z, z_q) - 4 * e1 * (g + e1)) / max(g * g, 1e-300))


@given(logit_pairs(), st.floats(-5, 5))
def test_T4prime_flip_implies_centered_l2_at_least_half_margin_squared(pair, c):
    """flip a → b ⇒ δ_b − δ_a ≥ m ⇒ 2‖δ − c·1‖² ≥ m² for every c; t4_prime = 1."""
    z, delta = pair
    r = flip_bounds(_t(z), _t(delta))
    if not bool(r.flipped):
        return
    z_q = z + delta
    d = z_q - z  # realized perturbation
    a, b = int(np.argmax(z)), int(np.argmax(z_q))
    m = float(r.m)
    # d_b − d_a = (z_q,b − z_q,a) + (z_a − z_b) ≥ m, up to one rounding in each d and in m.
    slack = 2 * EPS * (abs(d[a]) + abs(d[b]) + m)
    assert d[b] - d[a] >= m - slack
    assert 2 * float(np.sum((d - c) ** 2)) >= (m - slack) ** 2
    assert float(r.t4_prime) == 1.0 or m - slack <= 0


@given(logit_pairs())
def test_T4prime_never_looser_than_T4_via_T1(pair):
    """g ≤ tanh(m/2) ≤ m/2, hence 2/m² ≤ 1/(2g²) and t4_prime ≤ t4_via_t1."""
    z, delta = pair
    r = flip_bounds(_t(z), _t(delta))
    g, m = float(r.g), float(r.m)
    e1 = _e1(z)
    assert g <= math.tanh(m / 2) + 2 * e1 + EPS * m  # g is off by ≤ 2e₁, m by ≤ eps·m
    assert math.tanh(m / 2) <= m / 2
    if m > 0:
        # Computed g ≤ m/2 + 2e₁, so t4_via_t1 ≥ min(1, 2‖δ − c‖²/(m + 4e₁)²) while
        # t4_prime = min(1, 2‖δ − c‖²/m²): they compare up to the factor (1 + 4e₁/m)².
        ratio = (1 + 4 * e1 / m + EPS) ** 2 * (1 + 8 * EPS)
        assert float(r.t4_prime) <= float(r.t4_via_t1) * ratio


@st.composite
def lifted_cases(draw):
    d, V = draw(st.integers(1, 8)), draw(st.integers(2, 8))
    eps = draw(st.sampled_from([1e-6, 1e-5]))
    h, dh = draw(hidden_states(d, eps))
    W, g = draw(heads(d, V))
    return h, dh, W, g, eps


@given(lifted_cases())
def test_T4prime_lifted_flip_implies_twice_L_squared_dh_squared_at_least_m_squared(case):
    """Through the head (T2): flip ⇒ 2 L²‖Δh‖² ≥ m², so #flips ≤ Σ min(1, 2L²‖Δh‖²/m²)."""
    h, dh, W, g, eps = case
    lift = hidden_lift_bound(_t(h), _t(dh), _t(W), _t(g), eps)
    z = rms_norm(_t(h), _t(g), eps) @ _t(W).T  # (V,) the logits T2 compares
    z_q = rms_norm(_t(h + dh), _t(g), eps) @ _t(W).T
    r = flip_bounds(z, z_q - z)
    if not bool(r.flipped):
        return
    # ‖Δz‖ ≤ L‖Δh‖ + 2e (lift_slack: rounding of both logit vectors and of h + Δh), and the
    # flip gives 2‖Δz‖² ≥ (m − one rounding of z_a − z_b and of δ_b − δ_a)².
    e = lift_slack(h, dh, W, g, eps)
    m = float(r.m)
    m_low = m - 2 * EPS * (m + 2 * float((z_q - z).abs().max()))
    L_dh = float(lift.L) * float(np.linalg.norm(dh))
    assert 2 * (L_dh * (1 + 256 * EPS) + 2 * e) ** 2 >= m_low**2 or m_low <= 0


def test_T4_example_p_002_001_weights_4_2_vs_5000():
    """p₍₁₎ = 0.02, p₍₂₎ = 0.01: the T4′ weight 2/m² = 2/ln²2 ≈ 4.16, T4's 1/(2g²) = 5000."""
    V = 200
    p = np.full(V, 0.97 / (V - 2))  # ≈ 0.0049 < 0.01 each
    p[0], p[1] = 0.02, 0.01
    z = np.log(p)
    delta = np.zeros(V)
    delta[5] = 1e-3  # small enough that neither term is clamped at 1
    r = flip_bounds(_t(z), _t(delta))
    s2 = float(np.sum((delta - delta.mean()) ** 2))
    assert abs(float(r.t4_prime) / s2 - 2 / math.log(2) ** 2) <= 1e-9
    assert abs(float(r.t4_via_t1) / s2 - 1 / (2 * 0.01**2)) <= 1e-9 * 5000
    assert 4.1 < 2 / math.log(2) ** 2 < 4.2


@pytest.mark.parametrize("x", [1e-1, 1e-2, 1e-3])
def test_T4_tight_on_two_token_family(x):
    """z = (x, −x) (g = tanh x), z + δ = (−η, η) with η = x² (a flip just past the tie):
    g²/(2KL) = (1 + tanh η/tanh x)⁻²·(1 − O(x²)) → 1; ≤ 1 is T4 itself."""
    eta = x * x
    z = np.array([x, -x])
    r = flip_bounds(_t(z), _t(np.array([-eta, eta]) - z))
    assert bool(r.flipped)
    ratio = float(r.g) ** 2 / (2 * float(r.kl))
    slack = (kl_tol(z, np.array([-eta, eta])) + 4 * _e1(z)) / float(r.kl)
    assert 1 - 3 * x - 2 * x * x - slack <= ratio <= 1 + slack


@pytest.mark.parametrize("V", [2, 50_000])
def test_T4prime_bound_crosses_one_exactly_where_the_flip_happens(V):
    """z = (m, 0, z_rest ≤ 0), δ = t·(−1, 1, 0, …): the flip happens at t = m/2, where
    2‖δ‖²/m² = 4t²/m² crosses 1 (mean δ = 0 exactly): T4′ is tight for every m."""
    rng = np.random.default_rng(3)
    m = 0.7
    z = np.concatenate([[m, 0.0], -rng.uniform(0.5, 5.0, V - 2)])
    for rel in [1 - 1e-6, 1 + 1e-6]:
        t = rel * m / 2
        delta = np.zeros(V)
        delta[0], delta[1] = -t, t
        r = flip_bounds(_t(z), _t(delta))
        raw = 2 * 2 * t * t / (m * m)  # = rel²
        assert bool(r.flipped) == (rel > 1)
        assert abs(float(r.t4_prime) - min(1.0, raw)) <= 8 * EPS
    assert float(r.m) == m


def test_T4prime_exact_ties_count_as_flips():
    """A q-tie between the teacher's top a and some b meets δ_b − δ_a = m with equality:
    the bound is 1 whether torch's argmax (first index) reports a flip or not."""
    for z, z_q, reported in [([1.0, 3.0, 0.0], [3.0, 3.0, 0.0], True), ([3.0, 1.0, 0.0], [3.0, 3.0, 0.0], False)]:
        z, z_q = np.array(z), np.array(z_q)
        r = flip_bounds(_t(z), _t(z_q - z))
        assert bool(r.flipped) == reported
        assert float(r.t4_prime) == 1.0  # 2‖δ − mean‖²/m² = 2·(24/9)/4 > 1


def test_flip_bounds_batched_equals_rowwise():
    """Leading dims are batch dims: a (2, 3, V) call equals the six (V,) calls."""
    rng = np.random.default_rng(4)
    z, delta = rng.normal(size=(2, 3, 7)) * 3, rng.normal(size=(2, 3, 7))
    r = flip_bounds(_t(z), _t(delta))
    for i in range(2):
        for j in range(3):
            rij = flip_bounds(_t(z[i, j]), _t(delta[i, j]))
            for field in ("kl", "g", "m", "t4", "t4_prime", "t4_via_t1", "flipped"):
                assert torch.equal(getattr(r, field)[i, j], getattr(rij, field))


# ------------------------------------------------------------------------------ T4s


@given(logit_pairs())
def test_T4s_top1_prob_moves_at_most_tv_at_most_sqrt_half_kl(pair):
    """|Δp₍₁₎| ≤ TV ≤ √(KL/2), and |Δ(p₍₁₎ − p₍₂₎)| ≤ 2 TV: the Lipschitz lemmas of T4s."""
    z, delta = pair
    z_q = z + delta
    p, q = np.sort(_softmax(z))[::-1], np.sort(_softmax(z_q))[::-1]
    tv = 0.5 * float(np.abs(_softmax(z) - _softmax(z_q)).sum())
    e1 = _e1(z, z_q)
    assert abs(q[0] - p[0]) <= tv + 4 * e1
    kl = float(kl_divergence(_t(z), _t(z_q)))
    assert tv <= math.sqrt(max(kl + kl_tol(z, z_q), 0) / 2) + 2 * e1
    if z.size >= 2:
        assert abs((q[0] - q[1]) - (p[0] - p[1])) <= 2 * tv + 8 * e1


@st.composite
def sampler_steps(draw):
    """One sampler step: C slots with teacher/student logits (V tokens); near-one-hot and
    near-tied rows, duplicated teacher rows (exact confidence ties), slots that are not
    candidates, k in [0, #candidates]."""
    C = draw(st.integers(2, 10))
    V = draw(st.integers(2, 6))
    Z = draw(hnp.arrays(np.float64, (C, V), elements=st.floats(-1, 1)))
    Z = Z * draw(st.sampled_from([1e-3, 1.0, 8.0]))
    # Distinct confidences by construction (a staircase on token 0), then the hard cases.
    Z[:, 0] += np.linspace(0.0, 1.0, C) * draw(st.sampled_from([0.1, 2.0, 1e-6]))
    spikes = draw(hnp.arrays(np.float64, C, elements=st.sampled_from([0.0, 0.0, 0.0, 20.0, 700.0])))
    Z[:, 0] += spikes  # near-one-hot rows
    if draw(st.booleans()):
        Z[:, 1] = Z[:, 0] - draw(st.sampled_from([0.0, 1e-9]))  # (near-)tied top two
    if draw(st.booleans()):
        Z[1] = Z[0]  # a confidence tie between two slots
    scale = draw(st.sampled_from([1e-6, 1e-2, 0.3, 3.0]))
    D = draw(hnp.arrays(np.float64, (C, V), elements=st.floats(-1, 1))) * scale
    Zq = Z + D
    cand = draw(hnp.arrays(np.bool_, C, elements=st.booleans()))
    cand[:2] = True
    n = int(cand.sum())  # ≥ 2
    # Mostly 0 < k < n (a swap is possible); k = 0 and k = n are the no-swap edge cases.
    k = draw(st.one_of(st.integers(1, n - 1), st.integers(1, n - 1), st.sampled_from([0, n])))
    if 0 < k < n and draw(st.sampled_from(["swap", "swap", "noise_only"])) == "swap":
        # The teacher's rank-k and rank-(k+1) slots trade places by a fraction t: their
        # confidences cross at t = ½, so the set flips "just" (t = ½ ± 1e-6), sits at an
        # exact tie (½), or flips fully (1).
        conf = np.where(cand, _softmax(Z).max(1), -np.inf)
        order = np.argsort(-conf, kind="stable")
        i, j = order[k - 1], order[k]
        t = draw(st.sampled_from([1.0, 0.5 + 1e-6, 0.5, 0.5 - 1e-6]))
        Zq[i], Zq[j] = Z[i] + t * (Z[j] - Z[i]) + D[i] * 1e-6, Z[j] + t * (Z[i] - Z[j])
    return Z, Zq, cand, k


@pytest.mark.parametrize("confidence, lip", [("top1_prob", 1.0), ("margin_prob", 2.0)])
@given(step=sampler_steps())
def test_T4s_set_flip_implies_a_candidate_with_kappa_kl_at_least_gap_squared(confidence, lip, step):
    """Set flip ⇒ some candidate moved its confidence by ≥ gap/2 ⇒ κ KL_i ≥ gap²
    (κ = 2 for top-1 prob, 8 for the top-1 − top-2 margin); bound ≥ bound_max ≥ the flip."""
    Z, Zq, cand, k = step
    P, Q = _softmax(Z), _softmax(Zq)
    conf = lambda p: np.sort(p, 1)[:, -1] - (np.sort(p, 1)[:, -2] if confidence == "margin_prob" else 0)
    c_t = np.where(cand, conf(P), -np.inf)
    c_s = np.where(cand, conf(Q), -np.inf)
    kl = kl_divergence(_t(Z), _t(Zq)).numpy()
    r = set_flip_bound(_t(c_t), _t(kl), k, conf_student=_t(c_s), confidence=confidence)
    gap = float(r.gap)
    # numpy oracle of both sides of the bound
    kappa = 2.0 if confidence == "top1_prob" else 8.0
    if 0 < k < cand.sum():
        srt = np.sort(c_t[cand])[::-1]
        assert gap == srt[k - 1] - srt[k]
        kl_c = np.maximum(kl[cand], 0.0)  # a −1e-17 measured KL counts as 0 (documented)
        terms = np.where(gap > 0, np.minimum(1, kappa * kl_c / max(gap * gap, 1e-300)), 1.0)
        assert abs(float(r.bound) - terms.sum()) <= 8 * EPS * terms.sum()
        assert float(r.bound_max) == terms.max()
    else:
        assert float(r.bound) == 0.0 and not bool(r.flipped)
    assert float(r.bound) >= float(r.bound_max)
    if bool(r.flipped):
        # |Δconf_i| ≤ lip·TV_i + 4·lip·e₁ ≤ lip·√(KL_i/2) + …, and one of them is ≥ gap/2.
        e1 = _e1(Z, Zq)
        kl_up = kl + np.array([kl_tol(Z[i], Zq[i]) for i in range(len(kl))])
        moved = lip * np.sqrt(np.maximum(kl_up[cand], 0) / 2) + 4 * lip * e1
        assert moved.max() >= gap / 2


def test_T4s_bound_max_crosses_one_where_the_set_flips():
    """Two candidates, two tokens, confidences ½ + u ± γ/2, student ½ + u ∓ s: the set
    flips at s = 0⁺ ... the top-1 probability is Bernoulli, TV = |Δc|, and KL = 2TV²(1 + O(u²)),
    so 2 KL/gap² = (1 + 2s/γ)²(1 + O(u²)): bound_max → 1 exactly at the swap."""
    u, gam = 1e-3, 1e-3
    logit = lambda c: np.array([math.log(c / (1 - c)), 0.0])
    Z = np.stack([logit(0.5 + u + gam / 2), logit(0.5 + u - gam / 2)])
    for s, flips in [(-gam * 1e-3, False), (gam * 1e-3, True)]:
        Zq = np.stack([logit(0.5 + u - s), logit(0.5 + u + s)])
        P, Q = _softmax(Z), _softmax(Zq)
        kl = kl_divergence(_t(Z), _t(Zq)).numpy()
        r = set_flip_bound(_t(P.max(1)), _t(kl), 1, conf_student=_t(Q.max(1)))
        assert bool(r.flipped) == flips
        raw = 2 * kl.max() / float(r.gap) ** 2
        assert abs(raw - (1 + 2 * s / gam) ** 2) <= 10 * u * u + 1e-6  # O(u²) + rounding
        assert (raw >= 1) == flips


def test_T4s_rejects_k_above_candidates_and_unknown_confidence():
    """Bad k and an unsupported confidence (entropy) are named errors."""
    c = torch.tensor([0.5, 0.3, float("-inf")])
    with pytest.raises(ValueError, match="k"):
        set_flip_bound(c, torch.zeros(3), 3)
    with pytest.raises(ValueError, match="confidence"):
        set_flip_bound(c, torch.zeros(3), 1, confidence="entropy")
