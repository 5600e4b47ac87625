"""T3 (theory/T3_surrogate.md, SPEC §6): the reweighted hidden-state MSE bounds the weighted KL.

Last block: Σ_i w_i KL_i ≤ ¼ Σ_i w_i L_i² ‖Δh_i‖² ≤ ¼ L_glob² Σ_i w_i ‖Δh_i‖².
Inner block: with ‖Δh_i^N‖ ≤ Σ_j L_ij ‖Δh_j‖ and KL_i ≤ ¼ K_i² ‖Δh_i^N‖²,
Σ_i w_i KL_i ≤ ¼ Σ_j w̃_j ‖Δh_j‖², w̃_j = Σ_i w_i K_i² S_i L_ij, S_i = Σ_j L_ij.

The inner-block tests use a stand-in for "the blocks after ℓ" whose Jacobian blocks are
known in closed form: Φ(H)_i = h_i + Σ_j A_ij M tanh(h_j) (a residual mixing layer with a
fixed attention pattern A), so ∂Φ_i/∂h_j = δ_ij I + A_ij M diag(sech² h_j) and
L_ij = δ_ij + A_ij ‖M‖₂ holds on every segment.

Legend: n positions, d hidden size, V vocabulary.
"""

import math

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_bounds_strategies import ETA, EPS, heads, kl_tol, lift_slack

from fairref.bounds import (
    hidden_lift_bound,
    inner_surrogate_weights,
    lift_constant,
    spectral_norm,
    surrogate_bound,
)

REL = 1 + 256 * EPS  # SVD of ‖W‖₂, ‖M‖₂ and sums of ≤ 64 nonnegative terms


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _logits(h, W, g, eps):
    return W @ (g * h / math.sqrt(float(h @ h) / h.size + eps))  # (V,)


def _phi(H, A, M):
    """(n, d) → (n, d): h_i + Σ_j A_ij M tanh(h_j)."""
    return H + A @ (np.tanh(H) @ M.T)


@st.composite
def coupled_cases(draw):
    n = draw(st.integers(1, 6))
    d = draw(st.integers(2, 8))
    V = draw(st.integers(2, 8))
    eps = draw(st.sampled_from([1e-6, 1e-5]))
    H = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-1, 1)))
    H = H * draw(st.sampled_from([1e-4, 1.0, 10.0]))
    # Attention: soft, or hard one-hot rows (position i reads only position π(i)).
    S = draw(hnp.arrays(np.float64, (n, n), elements=st.floats(-1, 1)))
    S = S * draw(st.sampled_from([0.0, 1.0, 50.0]))
    A = np.exp(S - S.max(1, keepdims=True))
    A /= A.sum(1, keepdims=True)
    M = draw(hnp.arrays(np.float64, (d, d), elements=st.floats(-1, 1)))
    # Perturbation: at one position only, equal everywhere, or generic.
    U = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-1, 1)))
    kind = draw(st.sampled_from(["one_position", "equal", "generic"]))
    if kind == "one_position":
        U[1:] = 0.0
    elif kind == "equal":
        U[:] = U[0]
    dH = U * draw(st.sampled_from([1e-6, 1e-2, 1.0]))
    w = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 0.25, 1.0, 4.0, 100.0])))
    W, g = draw(heads(d, V))
    return H, dH, A, M, w, W, g, eps


@given(coupled_cases())
# found by the dev profile: bounds of ~1e-320, where only the underflow term holds
@example((np.zeros((1, 2)), np.array([[0.0, 1e-6]]), np.ones((1, 1)), np.zeros((2, 2)), np.array([4.0]),
          np.full((2, 2), 0.1), np.full(2, 5.40159806e-157), 1e-6))
@example((np.zeros((1, 2)), np.array([[6.25e-7, 0.0]]), np.ones((1, 1)), np.zeros((2, 2)), np.array([0.25]),
          np.full((2, 2), 0.1), np.full(2, 3.37726176e-157), 1e-6))
def test_T3_last_block_weighted_kl_at_most_weighted_lift(case):
    """Σ w_i KL_i ≤ ¼ Σ w_i L_i² ‖Δh_i‖² ≤ ¼ L_glob² Σ w_i ‖Δh_i‖² (w with zeros and 100s)."""
    H, dH, _, _, w, W, g, eps = case
    r = surrogate_bound(_t(H), _t(dH), _t(W), _t(g), eps, _t(w))
    per = hidden_lift_bound(_t(H), _t(dH), _t(W), _t(g), eps)
    # Per position, T2's rounding chain KL_i ≤ (√bound_i·REL + e_i)² + kl_tol_i (lift_slack).
    b = per.bound.numpy()
    chain = np.array(
        [
            (math.sqrt(b[i]) * REL + lift_slack(H[i], dH[i], W, g, eps)) ** 2
            + kl_tol(_logits(H[i], W, g, eps), _logits(H[i] + dH[i], W, g, eps))
            for i in range(len(w))
        ]
    )
    assert float(r.weighted_kl) <= float(r.bound) + float(w @ (chain - b))
    assert float(r.bound) <= float(r.bound_global) * REL
    # The right side is L_glob²/4 times Σ w times the Stage II objective L_N (SPEC §4.2).
    L_glob = float(np.linalg.norm(W, 2)) * float(np.abs(g).max()) / math.sqrt(eps)
    objective = float(w @ (dH * dH).sum(1))  # Σ_n w_n ‖ΔY_n‖²
    # (‖W‖₂ from two SVDs, squared; sums of ≤ 6 nonnegative terms: within REL − 1; and
    # each side's ≤ 2n + 4 products may underflow, adding ≤ η each: ETA.)
    assert abs(float(r.bound_global) - 0.25 * L_glob**2 * objective) <= (REL - 1) * float(
        r.bound_global
    ) + 2 * (2 * len(w) + 4) * ETA
    assert abs(float(r.weighted_kl) - float(w @ per.kl.numpy())) <= 8 * EPS * float(w @ np.abs(per.kl.numpy()))


@given(coupled_cases())
def test_T3_inner_block_weighted_kl_at_most_tilde_weighted_mse(case):
    """Through an attention-coupled stack: Σ_i w_i KL_i ≤ ¼ Σ_j w̃_j ‖Δh_j‖²."""
    H, dH, A, M, w, W, g, eps = case
    n, d = H.shape
    Hq = H + dH
    a = np.linalg.norm(Hq - H, axis=1)  # (n,) ‖Δh_j‖ of the realized step
    F, Fq = _phi(H, A, M), _phi(Hq, A, M)  # (n, d) final hidden states
    L = np.eye(n) + A * float(np.linalg.norm(M, 2))  # (n, n) L_ij
    W_norm, g_inf = spectral_norm(_t(W)), float(np.abs(g).max())
    K = lift_constant(_t(F), _t(Fq - F), W_norm, g_inf, eps).numpy()  # (n,)
    w_tilde = inner_surrogate_weights(_t(w), _t(K), _t(L)).numpy()  # (n,)
    kl = hidden_lift_bound(_t(F), _t(Fq - F), _t(W), _t(g), eps).kl.numpy()  # (n,)
    rhs = 0.25 * float(w_tilde @ a**2)
    s = L @ a  # (n,) Σ_j L_ij ‖Δh_j‖
    # The Cauchy–Schwarz step alone (pure algebra, exact up to REL):
    assert 0.25 * float(w @ (K**2 * s**2)) <= rhs * REL + 1e-300
    # End to end. Rounding of Φ (each entry ≤ n + d + 4 roundings of terms ≤ ‖h‖ + ‖M‖_F√d,
    # twice) and of the logits (as in test_bounds_T2) loosen each position's chain
    # KL_i ≤ ¼K_i²(s_i + e_i)²; kl_tol covers the KL itself.
    e = 2 * (n + d + 4) * EPS * (
        np.linalg.norm(H, axis=1) + np.linalg.norm(Hq, axis=1) + 2 * np.linalg.norm(M) * math.sqrt(d)
    )
    e_z = np.array([lift_slack(F[i], Fq[i] - F[i], W, g, eps) for i in range(n)])
    kl_tols = np.array([kl_tol(_logits(F[i], W, g, eps), _logits(Fq[i], W, g, eps)) for i in range(n)])
    chain = (0.5 * K * (s + e) * REL + e_z) ** 2 + kl_tols  # (n,)
    slack = float(w @ (chain - 0.25 * K**2 * s**2))
    assert float(w @ kl) <= rhs * REL + slack


def test_T3_inner_weights_without_coupling_are_sensitivity_scaled_w():
    """L = diag(λ) (no attention): w̃_j = w_j K_j² λ_j², the last-block form rescaled."""
    rng = np.random.default_rng(0)
    w, K, lam = rng.uniform(0, 3, 5), rng.uniform(0.5, 2, 5), rng.uniform(0.1, 4, 5)
    w_tilde = inner_surrogate_weights(_t(w), _t(K), _t(np.diag(lam))).numpy()
    assert np.allclose(w_tilde, w * K**2 * lam**2, rtol=8 * EPS, atol=0)


def test_T3_inner_tight_for_uniform_mixing_of_equal_perturbations():
    """Φ(H) = mean of the h_j (L_ij = 1/n exactly), the same Δh = (0, η) at every j, and the
    two-token head of the T2 tight family: triangle and Cauchy–Schwarz hold with equality,
    so Σ w KL / (¼ Σ w̃ ‖Δh‖²) → 1 as η → 0 (1 − 2η + O(η²), as in T2)."""
    n, eps = 4, 1e-5
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(n, 2)) * 0.3
    H = np.array([1.0, 0.0]) + noise - noise.mean(0)  # mean state exactly ≈ (1, 0)
    A = np.full((n, n), 1.0 / n)
    W, g = np.array([[0.0, 1.0], [0.0, -1.0]]), np.ones(2)
    w = np.array([0.0, 1.0, 2.0, 5.0])
    ratios = []
    for eta in [1e-2, 1e-3, 1e-4]:
        dH = np.tile([0.0, eta], (n, 1))
        F, Fq = A @ H, A @ (H + dH)
        K = lift_constant(_t(F), _t(Fq - F), 1.0 * spectral_norm(_t(W)), 1.0, eps).numpy()
        w_tilde = inner_surrogate_weights(_t(w), _t(K), _t(A)).numpy()
        kl = hidden_lift_bound(_t(F), _t(Fq - F), _t(W), _t(g), eps).kl.numpy()
        ratio = float(w @ kl) / (0.25 * float(w_tilde @ (dH * dH).sum(1)))
        # F carries ~1e-16 noise from the mean, so the family is T2's up to O(1e-16/η).
        slack = kl_tol(np.zeros(2), np.array([eta, -eta]) * 1.5) / (eta**2 / 2) + 1e-12 / eta
        assert 1 - 3 * eta - slack <= ratio <= 1 + slack
        ratios.append(ratio)
    assert ratios[0] < ratios[1] < ratios[2]


def test_T3_reusing_w_at_inner_block_is_not_a_bound():
    """Position 0 (weight 1) reads only position 1 (weight 0); perturb position 1 only.

    Σ_j w_j ‖Δh_j‖² = 0 while Σ_i w_i KL_i > 0: no constant makes the w-weighted MSE of an
    inner block a bound. w̃ moves the weight to position 1, and the T3 bound holds.
    """
    eps = 1e-5
    H = np.array([[1.0, 0.0], [0.5, 0.5]])
    dH = np.array([[0.0, 0.0], [0.0, 0.1]])
    A = np.array([[0.0, 1.0], [0.0, 1.0]])  # Φ(H) = A H: both read position 1
    W, g = np.array([[0.0, 1.0], [0.0, -1.0]]), np.ones(2)
    w = np.array([1.0, 0.0])
    F, Fq = A @ H, A @ (H + dH)
    kl = hidden_lift_bound(_t(F), _t(Fq - F), _t(W), _t(g), eps).kl.numpy()
    assert float(w @ (dH * dH).sum(1)) == 0.0 and float(w @ kl) > 1e-4
    K = lift_constant(_t(F), _t(Fq - F), spectral_norm(_t(W)), 1.0, eps).numpy()
    w_tilde = inner_surrogate_weights(_t(w), _t(K), _t(A)).numpy()
    assert w_tilde[0] == 0.0 and w_tilde[1] > 0.0
    assert float(w @ kl) <= 0.25 * float(w_tilde @ (dH * dH).sum(1))
