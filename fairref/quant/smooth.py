"""SmoothQuant per-channel smoothing factors ζ and where they go (SPEC §4.4, §4.3d).

For a site (the shared input of one or more linears) with inputs X (T, K) and the
concatenated weights W (N, K) of its linears,

    ζ_j = max(max_t |X_tj|^α / max_n |W_nj|^(1−α), 1e-5),   ζ_j = 1 where max_n |W_nj| = 0,

default α = ½ (Xiao et al. 2023; FlatQuant's code uses 0.3). The linear then computes
(x ⊘ ζ) (W diag ζ)ᵀ = x Wᵀ: activation outliers move into the weight. Where an RMSNorm with
weight g feeds the linear, ζ is folded: g ⊘ ζ (``fold_into_norm``) and W diag(ζ)
(``fold_into_weight``), so inference pays nothing; elsewhere the activation is divided at
run time (``smooth_activation``). A weight column that is all zero carries nothing to
balance against: ζ_j = 1 there leaves that channel untouched (and avoids 0^(−½)).

All pure functions, float32 results; the statistics are taken in float64.
Legend: T tokens, K input features (channels), N output channels of the site's weights.
Written from SPEC §4.4 (SmoothQuant, Xiao et al. 2023); checked by the defining identities
in tests/test_quant_smooth.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the floor of ζ (SPEC §4.4), as SmoothQuant's ``clamp(min=1e-5)``
ZETA_MIN = 1e-5


def smooth_factors(x_absmax: Tensor, W: Tensor, alpha: float = 0.5) -> Tensor:
    """ζ (K,) float32 from the per-channel activation maxima max_t |X_tj| (K,) and W (N, K).

    ``W`` is the site's weights concatenated along N (e.g. q, k, v stacked). The powers are
    taken in float64 and the result rounded once to float32.
    """
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1] (SmoothQuant's migration strength), "
                         f"got {alpha!r}")
    if W.ndim != 2:
        raise ValueError(f"W must be the site's (N, K) weights, got shape {tuple(W.shape)}")
    if x_absmax.ndim != 1 or x_absmax.shape[0] != W.shape[1]:
        raise ValueError(f"x_absmax must have shape (K,) = ({W.shape[1]},), "
                         f"got {tuple(x_absmax.shape)}")
    for name, t in (("x_absmax", x_absmax), ("W", W)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf; the smoothing factors would be undefined")
    if (x_absmax < 0).any():
        raise ValueError("x_absmax must be non-negative (it is max_t |X_tj|)")
    a = x_absmax.to(torch.float64)  # (K,)
    w = W.to(torch.float64).abs().amax(dim=0)  # (K,) max_n |W_nj|
    dead = w == 0
    zeta = a.pow(alpha) / torch.where(dead, torch.ones_like(w), w).pow(1.0 - alpha)
    zeta = torch.clamp(zeta, min=ZETA_MIN)
    return torch.where(dead, torch.ones_like(zeta), zeta).to(torch.float32)  # (K,)


def activation_absmax(X: Tensor, weights: Tensor | None = None) -> Tensor:
    """max_t |X_tj| (K,) over the rows of X (..., K) whose weight is positive (all if None).

    Rows of weight 0 (padding) are not calibration data and must not set the scale.
    """
    X2 = X.reshape(-1, X.shape[-1])  # (T, K)
    if weights is not None:
        keep = weights.reshape(-1) > 0  # (T,)
        if keep.shape[0] != X2.shape[0]:
            raise ValueError(f"weights hold {keep.shape[0]} rows but X holds {X2.shape[0]}")
        X2 = X2[keep]
    if X2.shape[0] == 0:
        return torch.zeros(X.shape[-1], dtype=torch.float32, device=X.device)
    return X2.abs().amax(dim=0).to(torch.float32)  # (K,)


def smooth_activation(x: Tensor, zeta: Tensor) -> Tensor:
    """x ⊘ ζ for x (..., K): SmoothQuant applied at run time (no norm to fold into)."""
    return x / zeta


def fold_into_norm(g: Tensor, zeta: Tensor) -> Tensor:
    """g ⊘ ζ (K,): the RMSNorm weight that makes the norm emit x ⊘ ζ."""
    return g.to(torch.float32) / zeta


def fold_into_weight(W: Tensor, zeta: Tensor) -> Tensor:
    """W diag(ζ) (N, K): the weight that undoes the division, column j times ζ_j."""
    return W.to(torch.float32) * zeta
