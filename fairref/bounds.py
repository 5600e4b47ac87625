"""The theorems of SPEC §6 as functions that return both sides of each inequality.

Every function here evaluates one statement of ``theory/`` on concrete tensors: the
measured quantity (a KL, a flip indicator) next to the bound the theorem puts on it, so
that a test or a ``paper_repro`` script checks ``measured <= bound`` in one line.

- T1 (theory/T1_logit_bound.md)      :func:`kl_logit_bound`
- T1″ (theory/T1pp_two_sided_certificate.md) :func:`kl_certificate`, :func:`psi`,
  :func:`kl_divergence_log1p`
- T2 (theory/T2_hidden_state_lift.md) :func:`hidden_lift_bound`, :func:`lift_constant`,
  :func:`fisher_form` (its second-order term, for the surrogate's correlations)
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

import math
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


# -------------------------------------------------------------------------------- T1″

_PSI_SERIES_BELOW = 1e-2  # SPEC §6: ψ by its Taylor series for |x| < 1e-2, expm1 elsewhere
_EXP_OVERFLOW = 700.0  # above this eˣ is within a factor e^9.8 of float64's largest number


def psi(x: Tensor) -> Tensor:
    """ψ(x) = (eˣ − 1 − x)/x², ψ(0) = ½, elementwise in float64 (SPEC §6 T1″).

    ψ(x) = ∫₀¹ (1 − s) e^{sx} ds = Σₙ xⁿ/(n + 2)!, so ψ > 0 and ψ is increasing.
    |x| < 1e-2: the series to x⁶ (the first omitted term is < 6e-20 relative).
    Elsewhere (expm1(x) − x)/x²: expm1's last-bit error is amplified by ≤ 2/|x|, so the
    result is good to ≤ 200 ulps at |x| = 1e-2 and to a few ulps for |x| ≥ 1.
    For x > 700, (e^{x/2}/x)², finite up to x ≈ 723 and +∞ past float64's overflow.
    """
    x = torch.as_tensor(x, dtype=_F64)
    small = x.abs() < _PSI_SERIES_BELOW
    xs = torch.where(small, x, torch.zeros_like(x))  # series argument, |xs| < 1e-2
    # Horner form of ½ + x/3! + x²/4! + … + x⁶/8!
    series = 1 / 40320
    for k in (7, 6, 5, 4, 3, 2):  # coefficient of x^(k−2) is 1/k!
        series = series * xs + 1 / math.factorial(k)
    xb = torch.where(small, torch.ones_like(x), x)  # expm1 argument, never 0
    direct = (torch.expm1(xb) - xb) / (xb * xb)
    # Past x = 700, eˣ alone may overflow while ψ(x) ≈ eˣ/x² does not (up to x ≈ 723):
    # (e^{x/2}/x)² keeps the last bits, and 1 + x is below eˣ's rounding there.
    half = torch.exp(xb.clamp(min=_EXP_OVERFLOW) / 2) / xb.clamp(min=_EXP_OVERFLOW)
    direct = torch.where(xb > _EXP_OVERFLOW, half * half, direct)
    return torch.where(small, series, direct)


def _log_psi(x: Tensor) -> Tensor:
    """log ψ(x), finite also where ψ overflows: for x > 700, ψ = e^{x − 2 log x}(1 − (1 + x)e^{−x})."""
    xb = x.clamp(min=_EXP_OVERFLOW)
    big = xb - 2 * torch.log(xb) + torch.log1p(-(1 + xb) * torch.exp(-xb))
    return torch.where(x > _EXP_OVERFLOW, big, torch.log(psi(x.clamp(max=_EXP_OVERFLOW))))


def _log1p_a_psi(a: Tensor, x: Tensor) -> Tensor:
    """log1p(a·ψ(x)) for a ≥ 0, finite where a·ψ(x) overflows (then the 1 is below rounding)."""
    pos = a > 0
    a1 = torch.where(pos, a, torch.ones_like(a))  # keep log(a) finite where a = 0
    direct = torch.log1p(a1 * psi(x))
    via_logs = torch.log(a1) + _log_psi(x)  # log(a ψ(x)) ≥ 709 wherever `direct` is +∞
    out = torch.where(torch.isfinite(direct), direct, via_logs)
    return torch.where(pos, out, torch.zeros_like(out))


def _centered(base: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log p, p = softmax(base) and X = d − ⟨p, d⟩ with E_p X = 0 to the rounding of X.

    The mean is removed twice: the first pass leaves a residual of ~eps·max|d|, which the
    second reduces to ~eps·max|X| (for d = −1e3 + 1e-9·u the first residual alone would be
    1e-13, ten thousand times the spread of X).
    """
    lp = torch.log_softmax(base, dim=-1)  # (..., V)
    p = lp.exp()
    X = d - (p * d).sum(-1, keepdim=True)  # (..., V)
    X = X - (p * X).sum(-1, keepdim=True)
    return lp, p, X


def _kl_centered(lp: Tensor, p: Tensor, X: Tensor) -> Tensor:
    """KL = log E_p eˣ = log1p(E_p[X² ψ(X)]) for centered X (SPEC §6 T1″), ``(..., V) -> (...)``.

    Every term p_k (e^{X_k} − 1 − X_k) is ≥ 0, so the sum has no cancellation and a tiny KL
    keeps its relative accuracy; a constant error c in X moves the result by only ~c·KL
    (the −X absorbs it), where log E_p eˣ would move by c itself. Where E_p[X²ψ(X)] > 1
    (KL > log 2) the log-sum-exp form is used instead: no cancellation is left to avoid,
    and it cannot overflow.
    """
    # p_k X_k² ψ(X_k); for X_k > 700 as e^{log p_k + X_k} − p_k (1 + X_k), which stays finite
    # when p_k is tiny (a rare token whose logit jumps by 1e3)
    near = X <= _EXP_OVERFLOW
    t_near = p * X * X * psi(torch.where(near, X, torch.zeros_like(X)))
    t_far = torch.exp(lp + X) - p * (1 + X)
    S = torch.where(near, t_near, t_far).sum(-1)  # (...) E_p[X² ψ(X)] ≥ 0
    lse = torch.logsumexp(lp + X, dim=-1)  # (...) log E_p eˣ
    return torch.where(S <= 1, torch.log1p(S), lse)


def kl_divergence_log1p(z_p: Tensor, z_q: Tensor) -> Tensor:
    """KL(softmax(z_p) ‖ softmax(z_q)) in nats in the stable form of SPEC §6 T1″.

    ``(..., V), (..., V) -> (...)``. The same quantity as :func:`kl_divergence`, but
    computed as log1p(E_p[X² ψ(X)]), X = δ − ⟨p, δ⟩, δ = z_q − z_p, so it keeps its relative
    accuracy as δ → 0 (Σ p (log p − log q) has an absolute error ~eps·max|z|: at |z| ~ 10
    and δ ~ 1e-7 that is a median 70% of the KL; theory/T1_logit_bound.md, Numerics).
    """
    z_p, z_q = _f64(z_p, "z_p"), _f64(z_q, "z_q")
    if z_p.shape != z_q.shape:
        raise ValueError(f"z_p {tuple(z_p.shape)} and z_q {tuple(z_q.shape)} must match")
    return _kl_centered(*_centered(z_p, z_q - z_p))


@dataclass(frozen=True)
class CertificateResult:
    """Both sides of T1″ per position (each ``(...)``, float64): lower ≤ kl ≤ upper."""

    kl: Tensor  # KL(p ‖ q) (KL(q ‖ p) with reverse=True), stable log1p form, nats
    lower: Tensor  # max(lower_log1p, lower_integral)
    upper: Tensor  # log1p(V ψ(r₊)); never larger than V ψ(r₊)
    lower_log1p: Tensor  # log1p(V ψ(−r₋)): X ≥ −r₋ in the log1p form
    lower_integral: Tensor  # V ψ(−r): the integral form with p_s/p ≥ e^(−s r)
    var: Tensor  # V = Var_p(δ) (Var_q with reverse=True); both sides → ½V as δ → 0
    r_plus: Tensor  # r₊ = max X, X the centered perturbation
    r_minus: Tensor  # r₋ = −min X


def kl_certificate(z: Tensor, delta: Tensor, reverse: bool = False) -> CertificateResult:
    """T1″: max(log1p(V ψ(−r₋)), V ψ(−r)) ≤ KL ≤ log1p(V ψ(r₊)) ≤ V ψ(r₊).

    ``z`` teacher logits ``(..., V)``; ``delta`` the perturbation (quantized − teacher)
    ``(..., V)``, evaluated as realized, d = fl(z + δ) − z (as :func:`kl_logit_bound`).
    X = d − ⟨p, d⟩ takes values in [−r₋, r₊], r = r₊ + r₋ = max d − min d, V = Var_p(d).
    ``reverse=True`` certifies KL(q ‖ p): the same with q and X = ⟨q, d⟩ − d.
    The two sides are within a factor e^r of each other (theory/T1pp_two_sided_certificate.md),
    so for small r the certificate pins the KL: a KL in the wrong unit or with p and q
    swapped falls outside it. V = 0 gives 0 on all three.
    """
    z = _f64(z, "z")  # (..., V)
    z_q = z + _f64(delta, "delta")  # (..., V)
    if z.shape[-1] < 2:
        raise ValueError(f"z needs a vocabulary of at least 2, got shape {tuple(z.shape)}")
    d = z_q - z  # (..., V) the realized perturbation
    # KL(q ‖ p) is the forward KL from base z + δ along −δ (theory/T1, part 4)
    base, d = (z_q, -d) if reverse else (z, d)
    lp, p, X = _centered(base, d)  # (..., V) each
    var = (p * X * X).sum(-1)  # (...) V = E_p X²
    r_plus, r_minus = X.amax(-1), -X.amin(-1)  # (...) X ∈ [−r₋, r₊]
    lower_log1p = torch.log1p(var * psi(-r_minus))
    lower_integral = var * psi(-(r_plus + r_minus))
    upper = _log1p_a_psi(var, r_plus)
    return CertificateResult(
        kl=_kl_centered(lp, p, X),
        lower=torch.maximum(lower_log1p, lower_integral),
        upper=upper,
        lower_log1p=lower_log1p,
        lower_integral=lower_integral,
        var=var,
        r_plus=r_plus,
        r_minus=r_minus,
    )


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
