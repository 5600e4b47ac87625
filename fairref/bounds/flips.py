"""T4, T4′ and T4s of SPEC §6: what a flip of the sampler's decision costs.

- T4, T4′ (theory/T4_frontier_flips.md, SPEC §6 T4 and T4′): :func:`flip_bounds`, an
  argmax flip at a position needs g² ≤ 2 KL (the teacher's probability margin g) and
  ‖δ − c·1‖² ≥ m²/2 (its logit margin m).
- T4s (theory/T4_frontier_flips.md, SPEC §6 T4s): :func:`set_flip_bound`,
  1[set flip at t] ≤ Σ_{i ∈ M_t ∩ A_t} min(1, 2 KL_i / gap_t²) at one sampler step.

KL in nats, the teacher first, measured by :func:`fairref.bounds.logits.kl_divergence`;
everything in float64. Division by zero follows theory/README.md: min(1, x/0) := 1.

Checked against: numpy re-derivations of every bound (tests/test_bounds_T4.py) and the
closed-form tight families of theory/T4_frontier_flips.md.

Legend: ... leading (batch, position) dims, V vocabulary, C sampler candidates at one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fairref.bounds._float64 import _F64, _f64
from fairref.bounds.logits import kl_divergence


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """min(1, num/den) with the convention min(1, x/0) = 1 (a zero margin/gap proves nothing)."""
    ratio = num / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, ratio.clamp(max=1.0), torch.ones_like(num))


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
