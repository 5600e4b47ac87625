"""Stage II solver (b): weighted clip search (SPEC §4.3).

The activation clip ratio of a site is chosen from ``ACT_CLIP_GRID``
(1.00, 0.95, …, 0.60) by the block loss L_ℓ with RTN weights (``search_act_clip``, the
caller supplies L_ℓ(c)); then each output channel's weight clip from ``WEIGHT_CLIP_GRID``
(c = 1 − i/100, i < 20) by the weighted output error of its linear,
Σ_n w_n ((W − Ŵ_c) x̃_n)_i² ∝ (E H Eᵀ)_ii with E = W − Ŵ_c and H the weighted Hessian
(``search_weight_clip``). Both scan candidates in descending order and keep a candidate
only on a strict improvement, so ties go to the larger c.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from fairref.quant.grid import ACT_CLIP_GRID, WEIGHT_CLIP_GRID, QuantSpec, fake_quantize

def search_act_clip(loss_of: Callable[[float], float],
                    candidates: Sequence[float] = ACT_CLIP_GRID) -> float:
    """The activation clip ratio minimizing ``loss_of(c)`` (L_ℓ with RTN weights, SPEC §4.3b).

    Candidates are scanned from the largest down; only a strict improvement wins, so a tie
    keeps the larger ratio.
    """
    cands = sorted({float(c) for c in candidates}, reverse=True)
    if not cands or not all(0.0 < c <= 1.0 for c in cands):
        raise ValueError(f"candidates must be non-empty ratios in (0, 1], got {candidates!r}")
    best_c, best = cands[0], loss_of(cands[0])
    for c in cands[1:]:
        loss = loss_of(c)
        if loss < best:  # strict: ties keep the larger (earlier) ratio
            best_c, best = c, loss
    return best_c


def search_weight_clip(W: Tensor, H: Tensor, spec: QuantSpec,
                       candidates: Sequence[float] = WEIGHT_CLIP_GRID) -> Tensor:
    """Per output channel, the clip ratio minimizing (E H Eᵀ)_ii, E = W − RTN_c(W) (SPEC §4.3b).

    W (N, K) the weight as the quantized linear holds it (rotated/transformed), H (K, K)
    the weighted Hessian of its quantized-path inputs (any positive multiple gives the same
    choice). Returns (N, 1) float32 ratios; ties go to the larger ratio.
    """
    if W.ndim != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"W must be (N, K) and H (K, K); got {tuple(W.shape)} and {tuple(H.shape)}")
    cands = sorted({float(c) for c in candidates}, reverse=True)
    if not cands or not all(0.0 < c <= 1.0 for c in cands):
        raise ValueError(f"candidates must be non-empty ratios in (0, 1], got {candidates!r}")
    H64 = H.to(torch.float64)
    best_err = best_c = None
    for c in cands:
        E = W.to(torch.float64) - fake_quantize(W, spec, clip=c, name="W").to(torch.float64)
        err = ((E @ H64) * E).sum(dim=1, keepdim=True)  # (N, 1): Σ_n w_n (e_i · x̃_n)² up to a factor
        c_t = torch.full_like(err, c)
        if best_err is None:
            best_err, best_c = err, c_t
        else:
            better = err < best_err  # strict: ties keep the larger ratio
            best_err, best_c = torch.where(better, err, best_err), torch.where(better, c_t, best_c)
    return best_c.to(torch.float32)
