"""The theorems of SPEC §6 as functions that return both sides of each inequality.

Every function here evaluates one statement of ``theory/`` on concrete tensors: the
measured quantity (a KL, a flip indicator) next to the bound the theorem puts on it, so
that a test or a ``paper_repro`` script checks ``measured <= bound`` in one line.

- T1 (theory/T1_logit_bound.md)      :func:`kl_logit_bound`
- T2 (theory/T2_hidden_state_lift.md) :func:`hidden_lift_bound`, :func:`lift_constant`
- T3 (theory/T3_surrogate.md)        :func:`surrogate_bound`, :func:`inner_surrogate_weights`
- T4, T4′ (theory/T4_frontier_flips.md) :func:`flip_bounds`
- T4s (theory/T4_frontier_flips.md)  :func:`set_flip_bound`

Conventions (theory/README.md): KL in nats, the teacher first, KL = KL(p ‖ q) with
p = softmax(z) the teacher and q = softmax(z + δ) the quantized model. Everything is
computed in float64 through ``log_softmax`` so that logits of magnitude 1e3 and
vocabularies of 1e5 stay accurate to ~1e-13·max|z|.

Inputs are the teacher's and the quantized model's logits (or final hidden states) at
the same states, batched over positions: any leading dims ``...``, the vocabulary last.

Checked against: independent oracles in the tests (a 50-digit mpmath KL, a scipy
log-sum-exp KL at V = 50 000, autograd Jacobians of RMSNorm, numpy re-derivations of every
bound), and the closed-form tight families of each theory/ file.

Legend: ... leading (batch, position) dims, V vocabulary, d hidden size,
n positions coupled by attention, C sampler candidates at one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_F64 = torch.float64


def _f64(x: Tensor | float, name: str) -> Tensor:
    """Cast to float64, refusing non-finite inputs (a NaN would pass every ``<=`` silently)."""
    x = torch.as_tensor(x).to(_F64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or ±inf; bounds need finite inputs")
    return x


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """min(1, num/den) with the convention min(1, x/0) = 1 (a zero margin/gap proves nothing)."""
    ratio = num / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, ratio.clamp(max=1.0), torch.ones_like(num))


# --------------------------------------------------------------------------------- T1


def kl_divergence(z_p: Tensor, z_q: Tensor) -> Tensor:
    """KL(softmax(z_p) ‖ softmax(z_q)) in nats, float64, over the last dim (SPEC §5, §6).

    ``(..., V), (..., V) -> (...)``. Computed as Σ p (log p − log q) with both logs from
    ``log_softmax``, never log of a softmax, so huge logits and tiny probabilities are fine.
    """
    lp = torch.log_softmax(_f64(z_p, "z_p"), dim=-1)  # (..., V)
    lq = torch.log_softmax(_f64(z_q, "z_q"), dim=-1)  # (..., V)
    if lp.shape != lq.shape:
        raise ValueError(f"z_p {tuple(lp.shape)} and z_q {tuple(lq.shape)} must match")
    return (lp.exp() * (lp - lq)).sum(-1)  # (...)


@dataclass(frozen=True)
class BoundResult:
    """Both sides of T1, per position (each ``(...)``, float64)."""

    measured: Tensor  # KL(p ‖ q) (or KL(q ‖ p) with reverse=True), in nats
    bound_l2: Tensor  # ¼ ‖δ − c·1‖² with the optimal c = mean(δ)
    bound_range: Tensor  # (max δ − min δ)² / 8, never larger than bound_l2
    second_order: Tensor  # ½ Var_p(δ) (Var_q with reverse=True): the limit as δ → 0


def kl_logit_bound(z: Tensor, delta: Tensor, reverse: bool = False) -> BoundResult:
    """T1: KL(p ‖ q) ≤ ¼‖δ − c·1‖² (every c) and ≤ (max δ − min δ)²/8.

    ``z`` teacher logits ``(..., V)``; ``delta`` the perturbation (quantized − teacher)
    ``(..., V)``. ``reverse=True`` measures KL(q ‖ p) instead; the bounds are the same
    (they are symmetric under δ → −δ) and the second-order term uses Var_q.
    The bounds are evaluated on d = fl(z + δ) − z, the perturbation actually measured.
    """
    z = _f64(z, "z")  # (..., V)
    z_q = z + _f64(delta, "delta")  # (..., V)
    if z.shape[-1] < 2:
        raise ValueError(f"z needs a vocabulary of at least 2, got shape {tuple(z.shape)}")
    d = z_q - z  # (..., V) the realized perturbation
    # The minimizer of ‖d − c·1‖² over c is the unweighted mean.
    d_c = d - d.mean(-1, keepdim=True)  # (..., V)
    bound_l2 = 0.25 * (d_c * d_c).sum(-1)
    spread = d.amax(-1) - d.amin(-1)  # (...)
    bound_range = spread * spread / 8.0
    # Var under the distribution at the expansion point: p forward, q reverse.
    base = z_q if reverse else z
    prob = torch.softmax(base, dim=-1)  # (..., V)
    mean = (prob * d).sum(-1, keepdim=True)
    var = (prob * (d - mean) ** 2).sum(-1)
    measured = kl_divergence(z_q, z) if reverse else kl_divergence(z, z_q)
    return BoundResult(measured, bound_l2, bound_range, 0.5 * var)


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


# --------------------------------------------------------------------------------- T4


@dataclass(frozen=True)
class FlipResult:
    """T4 and T4′ per position (each ``(...)``, float64 except ``flipped``)."""

    flipped: Tensor  # bool: argmax(z + δ) ≠ argmax(z) (torch.argmax, first index on ties)
    kl: Tensor  # KL(p ‖ q)
    g: Tensor  # teacher probability margin p₍₁₎ − p₍₂₎
    m: Tensor  # teacher logit margin z₍₁₎ − z₍₂₎
    t4: Tensor  # min(1, 2 KL / g²)            (T4; 1 when g = 0)
    t4_prime: Tensor  # min(1, 2 ‖δ − c·1‖² / m²), c = mean(δ)  (T4′; 1 when m = 0)
    t4_via_t1: Tensor  # min(1, ‖δ − c·1‖² / (2 g²)): T4 after T1, the currency of T4′


def flip_bounds(z: Tensor, delta: Tensor) -> FlipResult:
    """T4 and T4′: 1[flip_i] ≤ t4_prime_i ≤ t4_via_t1_i, and 1[flip_i] ≤ t4_i.

    ``z`` teacher logits ``(..., V)``, ``delta`` the perturbation ``(..., V)``.
    A flip counts every q-argmax b ≠ a with z_b + δ_b ≥ z_a + δ_a, so ties count as flips
    under any tie-breaking rule; the indicator reported is torch.argmax's (first index).
    """
    z = _f64(z, "z")  # (..., V)
    z_q = z + _f64(delta, "delta")  # (..., V)
    if z.shape[-1] < 2:
        raise ValueError(f"z needs a vocabulary of at least 2, got shape {tuple(z.shape)}")
    d = z_q - z  # (..., V) realized perturbation
    flipped = z_q.argmax(-1) != z.argmax(-1)  # (...)
    top_z = z.topk(2, dim=-1).values  # (..., 2)
    m = top_z[..., 0] - top_z[..., 1]
    top_p = torch.softmax(z, dim=-1).topk(2, dim=-1).values  # (..., 2)
    g = top_p[..., 0] - top_p[..., 1]
    kl = kl_divergence(z, z_q)
    d_c = d - d.mean(-1, keepdim=True)  # (..., V)
    s2 = (d_c * d_c).sum(-1)  # (...) ‖δ − c·1‖² at the optimal c
    return FlipResult(
        flipped=flipped,
        kl=kl,
        g=g,
        m=m,
        t4=_safe_ratio(2.0 * kl, g * g),
        t4_prime=_safe_ratio(2.0 * s2, m * m),
        t4_via_t1=_safe_ratio(s2, 2.0 * g * g),
    )


@dataclass(frozen=True)
class SetFlipResult:
    """T4s at one sampler step, per step (each ``(...)``)."""

    flipped: Tensor | None  # bool: the student's top-k set ≠ the teacher's (None if not given)
    bound: Tensor  # Σ_{i ∈ M_t ∩ A_t} min(1, κ KL_i / gap²)   (0 when no swap is possible)
    bound_max: Tensor  # min(1, κ max_i KL_i / gap²): the sharper form the proof gives
    gap: Tensor  # teacher confidence gap between ranks k and k + 1 (+inf if none)


# κ of T4s, 1[set flip] ≤ Σ_i min(1, κ KL_i / gap²): a confidence that is λ-Lipschitz in TV
# moves by ≤ λ√(KL/2), and some candidate must move by gap/2, so κ = 2λ². The top-1
# probability has λ = 1 (κ = 2), the top-1 − top-2 probability λ = 2 (κ = 8).
_KAPPA = {"top1_prob": 2.0, "margin_prob": 8.0}


def _top_k_set(conf: Tensor, k: Tensor) -> Tensor:
    """Boolean ``(..., C)`` mask of the k most confident; ties to the lowest index (SPEC §2)."""
    C = conf.shape[-1]
    order = torch.sort(conf, dim=-1, descending=True, stable=True).indices  # (..., C)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(C).expand_as(order))
    return rank < k.unsqueeze(-1)


def set_flip_bound(
    conf_teacher: Tensor, kl: Tensor, k: Tensor | int, conf_student: Tensor | None = None,
    confidence: str = "top1_prob",
) -> SetFlipResult:
    """T4s: 1[set flip at t] ≤ Σ_{i ∈ M_t ∩ A_t} min(1, 2 KL_i / gap_t²).

    ``conf_teacher`` ``(..., C)`` the teacher's confidences over the step's slots, −inf at
    slots that are not candidates (outside M_t ∩ A_t, as the samplers do); ``kl`` ``(..., C)``
    the per-slot KL(p_i ‖ q_i); ``k`` ``(...)`` or int, the commit count k_t;
    ``conf_student`` the quantized model's confidences (same shape) to report the
    left side. ``confidence``: ``"top1_prob"`` (LLaDA ``low_confidence`` and Dream
    ``maskgit_plus`` at temperature 0; constant 2) or ``"margin_prob"`` (Dream
    ``topk_margin``, constant 8). Entropy confidences are not covered (theory/T4).
    Ties in either ranking go to the lowest slot index; a measured KL that rounding made
    slightly negative counts as 0.
    """
    if confidence not in _KAPPA:
        raise ValueError(f"confidence must be one of {sorted(_KAPPA)}, got {confidence!r}")
    c = torch.as_tensor(conf_teacher).to(_F64)  # (..., C)
    kl = _f64(kl, "kl")
    if torch.isnan(c).any() or (c == float("inf")).any():
        raise ValueError("conf_teacher may hold −inf for non-candidates but no NaN/+inf")
    cand = c > float("-inf")  # (..., C) M_t ∩ A_t
    n_cand = cand.sum(-1)  # (...)
    k = torch.as_tensor(k).expand(c.shape[:-1]).to(torch.int64)
    if (k < 0).any() or (k > n_cand).any():
        raise ValueError("k must lie in [0, number of candidates] at every step")
    if kl.shape != c.shape:
        raise ValueError(
            f"kl must have the shape of conf_teacher {tuple(c.shape)}, got {tuple(kl.shape)}"
        )
    # A measured KL can be −1e-17 from rounding (p = q): count it as 0.
    kl = kl.clamp(min=0.0)
    srt = torch.sort(c, dim=-1, descending=True).values  # (..., C)
    C = c.shape[-1]
    kk = k.clamp(1, max(C - 1, 1)).unsqueeze(-1)  # (..., 1) safe gather index
    gap = (srt.gather(-1, kk - 1) - srt.gather(-1, kk)).squeeze(-1)  # (...)
    # With k = 0 or every candidate committed, no pair can swap: no set flip is possible.
    swap_possible = (k > 0) & (k < n_cand)
    gap = torch.where(swap_possible, gap, torch.full_like(gap, float("inf")))
    kappa = _KAPPA[confidence]
    kl_c = torch.where(cand, kl, torch.zeros_like(kl))  # (..., C) only candidates count
    gap2 = (gap * gap).unsqueeze(-1).expand_as(kl_c)
    terms = _safe_ratio(kappa * kl_c, gap2)  # (..., C)
    terms = torch.where(cand, terms, torch.zeros_like(terms))
    bound = torch.where(swap_possible, terms.sum(-1), torch.zeros_like(gap))
    bound_max = torch.where(swap_possible, terms.amax(-1), torch.zeros_like(gap))
    flipped = None
    if conf_student is not None:
        c_s = torch.as_tensor(conf_student).to(_F64)
        c_s = torch.where(cand, c_s, torch.full_like(c_s, float("-inf")))
        flipped = (_top_k_set(c, k) != _top_k_set(c_s, k)).any(-1)
    return SetFlipResult(flipped, bound, bound_max, gap)
