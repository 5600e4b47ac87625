"""T1 and T1″ of SPEC §6: the KL of a logit perturbation, bounded above and pinned from both sides.

p = softmax(z) the teacher, q = softmax(z + δ) the quantized model, KL = KL(p ‖ q) in nats
(the teacher first; ``reverse=True`` gives KL(q ‖ p)), δ the perturbation quantized − teacher.

- T1 (theory/T1_logit_bound.md, SPEC §6 T1): :func:`kl_logit_bound`,
  KL ≤ ¼‖δ − c·1‖² (every c) and ≤ (max δ − min δ)²/8; :func:`kl_divergence`, the
  measured KL (also the one :mod:`.hidden` and :mod:`.flips` report).
- T1″ (theory/T1pp_two_sided_certificate.md, SPEC §6 T1″): :func:`kl_certificate`,
  max(log1p(V ψ(−r₋)), V ψ(−r)) ≤ KL ≤ log1p(V ψ(r₊)) ≤ V ψ(r₊); :func:`psi`;
  :func:`kl_divergence_log1p`, the same KL in the stable form log1p(E_p[X² ψ(X)]).

Everything is computed in float64 through ``log_softmax`` so that logits of magnitude 1e3
and vocabularies of 1e5 stay accurate to ~1e-13·max|z|; T1″'s KL keeps its relative
accuracy also as δ → 0, where Σ p (log p − log q) does not.

Checked against: a 50-digit mpmath KL and a scipy log-sum-exp KL at V = 50 000
(tests/test_bounds_T1.py), the theorem at 60 digits with mpmath
(tests/test_bounds_T1pp.py), numpy re-derivations of every bound, and the closed-form
tight families of both theory/ files.

Legend: ... leading (batch, position) dims, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fairref.bounds._float64 import _F64, _f64


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
