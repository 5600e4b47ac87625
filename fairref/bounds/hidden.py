"""T2 and T3 of SPEC §6: from a perturbation of the final hidden states to the output KL.

Logits z = W · RMSNorm_g(h), RMSNorm_g(h) = g ⊙ h / r(h), r(h) = √(‖h‖²/d + ε); the KL is
measured by :func:`fairref.bounds.logits.kl_divergence` (teacher first, nats).

- T2 (theory/T2_hidden_state_lift.md, SPEC §6 T2): :func:`hidden_lift_bound`,
  KL_i ≤ ¼ L_i² ‖Δh_i‖²; :func:`lift_constant` for L alone; :func:`rms_norm` and
  :func:`spectral_norm`, its pieces; :func:`fisher_form` (its second-order term, for the
  surrogate's correlations).
- T3 (theory/T3_surrogate.md, SPEC §6 T3 and §4.2): :func:`surrogate_bound`,
  Σ_i w_i KL_i ≤ ¼ Σ_i w_i L_i² ‖Δh_i‖² at the last block; :func:`inner_surrogate_weights`,
  the w̃ of an inner block.

Everything is computed in float64.

Checked against: autograd Jacobians of RMSNorm (tests/test_bounds_T2.py, and for
:func:`fisher_form` tests/test_bounds_T1pp.py), numpy re-derivations of every bound
(tests/test_bounds_T2.py, tests/test_bounds_T3.py), and the closed-form tight families of
both theory/ files.

Legend: ... leading (batch, position) dims, V vocabulary, d hidden size,
n positions coupled by attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fairref.bounds._float64 import _f64
from fairref.bounds.logits import kl_divergence


# --------------------------------------------------------------------------------- T2


def rms_norm(h: Tensor, g: Tensor, eps: float) -> Tensor:
    """RMSNorm_g(h) = g ⊙ h / r(h), r(h) = √(‖h‖²/d + ε), in float64.

    ``(..., d) -> (..., d)``."""
    h = _f64(h, "h")
    r = torch.sqrt((h * h).mean(-1, keepdim=True) + eps)  # (..., 1)
    return _f64(g, "g") * h / r


def spectral_norm(W: Tensor) -> float:
    """‖W‖₂, the largest singular value, in float64 (an SVD: fine up to toy/8B-head sizes)."""
    return float(torch.linalg.matrix_norm(_f64(W, "W"), ord=2))


def lift_constant(
    h: Tensor, dh: Tensor, W_norm: float, g_inf: float, eps: float
) -> Tensor:
    """T2's L = ‖W‖₂‖g‖_∞ / √(max(‖h‖ − ‖Δh‖, 0)²/d + ε), per position.

    ``(..., d), (..., d) -> (...)``.

    max(‖h‖ − ‖Δh‖, 0) lower-bounds the norm of every point on the segment h → h + Δh,
    so 1/√(·) bounds the Jacobian norm 1/r of h ↦ h/r(h) along the whole segment.
    """
    h, dh = _f64(h, "h"), _f64(dh, "dh")  # (..., d)
    d = h.shape[-1]
    low = (torch.linalg.vector_norm(h, dim=-1) - torch.linalg.vector_norm(dh, dim=-1)).clamp(min=0)
    return W_norm * g_inf / torch.sqrt(low * low / d + eps)  # (...)


@dataclass(frozen=True)
class LiftResult:
    """Both sides of T2, per position."""

    kl: Tensor  # (...) KL(p ‖ q) of the logits W·RMSNorm_g(h) and W·RMSNorm_g(h + Δh)
    bound: Tensor  # (...) ¼ L² ‖Δh‖²
    L: Tensor  # (...) the segment constant of T2
    bound_global: Tensor  # (...) ¼ (‖W‖₂‖g‖_∞/√ε)² ‖Δh‖², valid for any h


def _check_head(h: Tensor, W: Tensor, g: Tensor, eps: float) -> None:
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (the RMSNorm epsilon, e.g. 1e-5), got {eps}")
    if W.ndim != 2 or W.shape[1] != h.shape[-1] or g.shape != (h.shape[-1],):
        raise ValueError(
            f"need h (..., d), W (V, d), g (d,); got h {tuple(h.shape)}, "
            f"W {tuple(W.shape)}, g {tuple(g.shape)}"
        )


def hidden_lift_bound(
    h: Tensor, dh: Tensor, W: Tensor, g: Tensor, eps: float, W_norm: float | None = None
) -> LiftResult:
    """T2: KL_i ≤ ¼ L_i² ‖Δh_i‖² for logits z = W · RMSNorm_g(h).

    ``h`` teacher final hidden states ``(..., d)``, ``dh`` their perturbation ``(..., d)``,
    ``W`` the LM head ``(V, d)``, ``g`` the final-norm weight ``(d,)``, ``eps`` its ε > 0.
    ``W_norm`` may pass a precomputed ‖W‖₂ (default: computed by SVD).
    """
    h, dh, W, g = _f64(h, "h"), _f64(dh, "dh"), _f64(W, "W"), _f64(g, "g")
    _check_head(h, W, g, eps)
    if dh.shape != h.shape:
        raise ValueError(f"dh {tuple(dh.shape)} must have the shape of h {tuple(h.shape)}")
    W_norm = spectral_norm(W) if W_norm is None else float(W_norm)
    g_inf = float(g.abs().max())
    z = rms_norm(h, g, eps) @ W.T  # (..., V)
    z_q = rms_norm(h + dh, g, eps) @ W.T  # (..., V)
    L = lift_constant(h, dh, W_norm, g_inf, eps)  # (...)
    dh2 = (dh * dh).sum(-1)  # (...) ‖Δh‖²
    L_glob = W_norm * g_inf / eps**0.5
    return LiftResult(kl_divergence(z, z_q), 0.25 * L * L * dh2, L, 0.25 * L_glob**2 * dh2)


def fisher_form(h: Tensor, dh: Tensor, W: Tensor, g: Tensor, eps: float) -> Tensor:
    """½ Δhᵀ Jᵀ Cov_p J Δh = ½ Var_p(J Δh), J = ∂z/∂h of z = W · RMSNorm_g(h), per position.

    ``(..., d), (..., d) -> (...)``, p = softmax(z). The second-order term of the KL in Δh
    (T1's ½ Var_p(δ) with δ linearized, δ ≈ J Δh): what T2 bounds by ¼ L²‖Δh‖² and what a
    Fisher-weighted objective would minimize. J Δh = W (g ⊙ (Δh − h ⟨h, Δh⟩/(d r²)) / r),
    r = r(h), the RMSNorm Jacobian applied to Δh; Cov_p = diag(p) − p pᵀ.
    """
    h, dh, W, g = _f64(h, "h"), _f64(dh, "dh"), _f64(W, "W"), _f64(g, "g")
    _check_head(h, W, g, eps)
    d = h.shape[-1]
    r2 = (h * h).mean(-1, keepdim=True) + eps  # (..., 1) r(h)²
    u = (dh - h * (h * dh).sum(-1, keepdim=True) / (d * r2)) / r2.sqrt()  # (..., d)
    Jdh = (g * u) @ W.T  # (..., V)
    p = torch.softmax(rms_norm(h, g, eps) @ W.T, dim=-1)  # (..., V)
    mean = (p * Jdh).sum(-1, keepdim=True)
    return 0.5 * (p * (Jdh - mean) ** 2).sum(-1)


# --------------------------------------------------------------------------------- T3


@dataclass(frozen=True)
class SurrogateResult:
    """Both sides of T3 at the last block (scalars, summed over all positions)."""

    weighted_kl: Tensor  # Σ_i w_i KL_i
    bound: Tensor  # ¼ Σ_i w_i L_i² ‖Δh_i‖²
    bound_global: Tensor  # ¼ L_glob² Σ_i w_i ‖Δh_i‖²: the weighted MSE, up to a constant


def surrogate_bound(
    h: Tensor, dh: Tensor, W: Tensor, g: Tensor, eps: float, w: Tensor,
    W_norm: float | None = None,
) -> SurrogateResult:
    """T3 at the last block:
    Σ_i w_i KL_i ≤ ¼ Σ_i w_i L_i² ‖Δh_i‖² ≤ ¼ L_glob² Σ_i w_i ‖Δh_i‖².

    ``h, dh`` ``(..., d)`` as in :func:`hidden_lift_bound`; ``w`` ``(...)`` token weights ≥ 0
    (SPEC §3.4). Dividing both sides by Σ w turns the right side into L_glob²/4 times the
    Stage II objective L_N of SPEC §4.2.
    """
    w = _f64(w, "w")
    if w.shape != h.shape[:-1] or (w < 0).any():
        raise ValueError(f"w must be ≥ 0 with shape {tuple(h.shape[:-1])}, got {tuple(w.shape)}")
    r = hidden_lift_bound(h, dh, W, g, eps, W_norm)
    return SurrogateResult((w * r.kl).sum(), (w * r.bound).sum(), (w * r.bound_global).sum())


def inner_surrogate_weights(w: Tensor, K: Tensor, L: Tensor) -> Tensor:
    """T3 at an inner block: w̃ with Σ_i w_i KL_i ≤ ¼ Σ_j w̃_j ‖Δh_j‖².

    ``w`` ``(..., n)`` token weights ≥ 0; ``K`` ``(..., n)`` the T2 constants of the final
    hidden states (KL_i ≤ ¼ K_i² ‖Δh_i^N‖²); ``L`` ``(..., n, n)`` with
    ‖Δh_i^N‖ ≤ Σ_j L_ij ‖Δh_j‖ (e.g. L_ij = sup ‖∂h_i^N/∂h_j‖₂ on the segment).
    Returns w̃_j = Σ_i w_i K_i² S_i L_ij, S_i = Σ_j L_ij (Cauchy–Schwarz weighted by L_i·).
    """
    w, K, L = _f64(w, "w"), _f64(K, "K"), _f64(L, "L")
    n = w.shape[-1]
    if K.shape != w.shape or L.shape != (*w.shape, n):
        raise ValueError(
            f"need w (..., n), K (..., n), L (..., n, n); got {tuple(w.shape)}, "
            f"{tuple(K.shape)}, {tuple(L.shape)}"
        )
    if (w < 0).any() or (L < 0).any():
        raise ValueError("w and L must be ≥ 0 (weights and norms)")
    S = L.sum(-1)  # (..., n) row sums S_i
    a = w * K * K * S  # (..., n) the factor of row i
    return (a.unsqueeze(-1) * L).sum(-2)  # (..., n) w̃_j = Σ_i a_i L_ij
