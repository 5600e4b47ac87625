"""Weighted GPTQ: a weight and a Hessian in, a quantized weight out (SPEC §4.3a).

Minimizes tr((W − Ŵ) H (W − Ŵ)ᵀ) over Ŵ on the SPEC §1 grid, column by column, with the
optimal-brain-surgeon update of the not-yet-quantized columns (GPTQ, Frantar et al. 2023,
Algorithm 1). Token weights enter only through H = 2 Σ w x xᵀ / Σ w (``hessian.py``), so
the solver is the ordinary GPTQ solver. Order of operations, as in the reference
(IST-DASLab/gptq ``GPTQ.fasterquant``):

1. per-channel (or per-tensor) scales from the input W, through ``grid.qparams``;
2. dead columns (H_ii = 0: the input feature is always 0) get H_ii := 1 and W[:, i] := 0;
3. static group scales (default) from this W, one per group of g original columns;
4. act-order (optional): permute columns by descending diag H (stable: ties keep index order);
5. damping λ = percdamp · mean(diag H) on the diagonal; U = upper Cholesky factor of
   (H + λI)⁻¹. On a Cholesky failure λ ×= 10 with a warning, at most 3 times, then plain
   RTN with a warning;
6. columns in blocks of ``blocksize``: quantize column i with ``grid.quantize_to_grid`` (so
   the rounding is the golden one), err = (w_i − ŵ_i)/U_ii, update the rest of the block at
   once and the columns right of the block lazily with one matmul per block.

Dynamic groups ("the reference's behaviour") take a group's scale from the updated W when
its first column is reached. Blocks are split at group starts so that this W has received
every earlier column's update: the result then does not depend on ``blocksize`` and equals
column-by-column Algorithm 1. (The reference reads W before the in-block updates when a
group starts inside a block, g < blocksize; for g a multiple of blocksize the two agree.)

``loss`` is the reference's error estimate ½ Σ_rows Σ_i err_i², which equals
½ tr((W₀ − Ŵ)(H + λI)(W₀ − Ŵ)ᵀ) exactly in real arithmetic (W₀: W with dead columns zeroed),
because W₀ − Ŵ = Err · U and (H + λI) = U⁻¹U⁻ᵀ.

Legend: N output channels (rows of W), K input features (columns), g group size,
G = K/g groups, B columns in the current block.
Checked against: a float64 NumPy transcription of Algorithm 1 (tests/gptq_oracle.py).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from fairref.quant.grid import QuantSpec, check_finite, dequantize, qparams, quantize, quantize_to_grid

#: how often the damping is raised ×10 after a Cholesky failure before falling back to RTN
MAX_DAMP_RETRIES = 3


@dataclass(frozen=True)
class GPTQResult:
    """What ``gptq_quantize`` returns; every tensor is in the original column order."""

    W_hat: Tensor  # (N, K) float32: dequantize(q, scale, zero), what the model computes with
    q: Tensor  # (N, K) int32 grid values in [spec.qmin, spec.qmax]
    scale: Tensor  # float32: (N, 1) channel, (N, G) group, (1, 1) tensor
    zero: Tensor  # int32, same shape as scale (all zeros when symmetric)
    loss: float  # ½ Σ err², the reference's estimate of ½ tr(E (H + λI) Eᵀ)
    perm: Tensor | None  # (K,) processing order when act_order, else None
    damp: float  # λ actually added to diag H (NaN when it fell back to RTN)
    fell_back_to_rtn: bool  # True when no damping made H + λI Cholesky-factorizable


def _check_inputs(W: Tensor, H: Tensor, spec: QuantSpec, blocksize: int, percdamp: float,
                  act_order: bool, static_groups: bool, dtype: torch.dtype) -> None:
    for name, t in (("W", W), ("H", H)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor")
    if W.ndim != 2:
        raise ValueError(f"W must be a 2-D weight (N, K), got shape {tuple(W.shape)}")
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square (K, K) matrix, got shape {tuple(H.shape)}")
    if H.shape[0] != W.shape[1]:
        raise ValueError(
            f"shape mismatch: W is {tuple(W.shape)} (N, K) but H is {tuple(H.shape)}; H must be "
            "(K, K) with K = W.shape[1], the linear's input features"
        )
    check_finite(W, "W")
    check_finite(H, "H")
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if spec.granularity == "token":
        raise ValueError("spec.granularity='token' is for activations; GPTQ quantizes a weight "
                         "with 'channel', 'group' or 'tensor'")
    if spec.granularity == "group" and W.shape[1] % spec.group_size != 0:
        raise ValueError(f"spec.group_size={spec.group_size} must divide K={W.shape[1]}")
    if spec.granularity == "group" and act_order and not static_groups:
        raise ValueError(
            "act_order with dynamic groups (static_groups=False) makes a group a run of "
            "*permuted* columns, which the (N, K/g) scale layout cannot express; use "
            "static_groups=True or act_order=False"
        )
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int (128 is the reference), got {blocksize!r}")
    if not (isinstance(percdamp, (int, float)) and math.isfinite(percdamp) and percdamp > 0):
        raise ValueError(f"percdamp must be a finite number > 0 (default 0.01), got {percdamp!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 (the reference) or torch.float64, got {dtype}")


def _check_clip(clip: Tensor | float | None, N: int) -> None:
    if clip is None:
        return
    c = torch.as_tensor(clip, dtype=torch.float64)
    if not torch.isfinite(c).all() or (c <= 0).any() or (c > 1).any():
        raise ValueError("clip must hold ratios in (0, 1] (a scalar or a per-channel (N, 1) tensor)")
    if c.ndim > 2 or (c.ndim >= 1 and c.numel() not in (1, N)):
        raise ValueError(f"clip must be a scalar or shaped (N, 1) = ({N}, 1), got {tuple(c.shape)}")


def _upper_cholesky_of_inverse(H_d: Tensor) -> Tensor | None:
    """U upper triangular with (H_d)⁻¹ = Uᵀ U, or None when H_d is not positive definite.

    The reference's route: Cholesky of H_d, inverse from that factor, Cholesky again (upper).
    Row i of U is row i of the inverse of H restricted to columns ≥ i, divided by √ of its
    diagonal: exactly the OBS update direction once columns < i are fixed.
    """
    L, info = torch.linalg.cholesky_ex(H_d)  # (K, K) lower
    if int(info) != 0:
        return None
    Hinv = torch.cholesky_inverse(L)  # (K, K)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)  # (K, K) upper
    if int(info) != 0 or not torch.isfinite(U).all():
        return None
    return U


def _damped_factor(H: Tensor, percdamp: float) -> tuple[Tensor | None, float]:
    """Add λ = percdamp · mean(diag H) to the diagonal; on failure λ ×= 10, up to 3 times."""
    damp = percdamp * float(torch.diagonal(H).mean())
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)  # (K, K)
    for attempt in range(MAX_DAMP_RETRIES + 1):
        U = _upper_cholesky_of_inverse(H + damp * eye)
        if U is not None:
            return U, damp
        if attempt < MAX_DAMP_RETRIES:
            warnings.warn(
                f"GPTQ: Cholesky of H + λI failed with λ={damp:.3g} (H is not positive "
                f"definite in {H.dtype}); retrying with λ={10 * damp:.3g}",
                RuntimeWarning, stacklevel=3,
            )
            damp *= 10
    warnings.warn(
        f"GPTQ: Cholesky still failed after {MAX_DAMP_RETRIES} damping increases (last "
        f"λ={damp:.3g}); falling back to round-to-nearest for this weight. Check that H is "
        "a Hessian of real inputs (symmetric positive semi-definite).",
        RuntimeWarning, stacklevel=3,
    )
    return None, math.nan


def _rtn_result(W: Tensor, H: Tensor, spec: QuantSpec, clip) -> GPTQResult:
    """The fallback: plain RTN of the input W (the method that needs no data).

    Its loss is ½ tr(E H Eᵀ) with the H given (undamped: no damping worked), in float64.
    """
    q, scale, zero = quantize(W, spec, clip=clip, name="W")
    W_hat = dequantize(q, scale, zero, spec)
    E = (W.to(torch.float64) - W_hat.to(torch.float64))  # (N, K)
    loss = 0.5 * float(((E @ H.to(torch.float64)) * E).sum())  # ½ tr(E H Eᵀ), no damping
    return GPTQResult(W_hat, q, scale, zero, loss, None, math.nan, True)


def gptq_quantize(W: Tensor, H: Tensor, spec: QuantSpec, blocksize: int = 128,
                  percdamp: float = 0.01, act_order: bool = False, static_groups: bool = True,
                  clip: Tensor | float | None = None,
                  dtype: torch.dtype = torch.float32) -> GPTQResult:
    """Quantize W (N, K) against the Hessian H (K, K) with GPTQ (SPEC §4.3a).

    spec: grid and granularity ('channel' default, 'group', 'tensor'); blocksize: columns per
    lazy-update block (128, the reference; does not change the result); percdamp: damping as
    a fraction of mean(diag H) (0.01); act_order: process columns by descending H_ii (False);
    static_groups: group scales from W up front (True) or from the updated W at each group
    start (False, the reference's default); clip: clip ratio, a scalar or (N, 1), passed to
    ``qparams`` (None: spec.clip); dtype: working precision of W, H and the factor
    (float32 as the reference; float64 for oracle comparisons). Quantization itself is
    always the float32 golden rounding of SPEC §1.
    """
    _check_inputs(W, H, spec, blocksize, percdamp, act_order, static_groups, dtype)
    N, K = W.shape
    _check_clip(clip, N)
    W_in = W = W.to(torch.float32)  # SPEC §1: the input is cast to float32 first
    H_in, H = H, H.to(dtype).clone()
    col_spec = dataclasses.replace(spec, granularity="channel", group_size=None)
    grouped = spec.granularity == "group"
    g = spec.group_size if grouped else K
    G = K // g

    # 1. scales from the input W (per channel / per tensor), as the reference.
    if not grouped:
        scale, zero = qparams(W, spec, clip=clip, name="W")  # (N, 1) or (1, 1)
    # 2. dead columns: an input feature that is always 0 leaves the objective unchanged
    #    whatever W[:, i] is; fixing H_ii := 1 keeps H invertible and W[:, i] := 0 picks q = 0.
    dead = torch.diagonal(H) == 0  # (K,)
    H[dead, dead] = 1
    W = W_in.to(dtype, copy=True)  # (N, K) working copy, updated in place below
    W[:, dead] = 0
    # 3. static group scales from the dead-zeroed W (the reference's order).
    if grouped:
        scale = torch.empty(N, G, dtype=torch.float32, device=W.device)  # (N, G)
        zero = torch.zeros(N, G, dtype=torch.int32, device=W.device)  # (N, G)
        if static_groups:
            scale, zero = qparams(W, spec, clip=clip, name="W")
    # 4. act-order: the columns with the largest H_ii (most input energy) go first, while the
    #    most columns are left to absorb their error.
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)  # (K,)
        W, H = W[:, perm], H[perm][:, perm]
    # 5. damping and the factor of H⁻¹.
    U, damp = _damped_factor(H, percdamp)
    if U is None:
        return _rtn_result(W_in, H_in, spec, clip)

    Q = torch.zeros(N, K, dtype=torch.int32, device=W.device)  # (N, K) in processing order
    loss = 0.0
    starts = sorted(set(range(0, K, blocksize)) | (set(range(0, K, g)) if grouped else set()))
    for i1, i2 in zip(starts, starts[1:] + [K]):
        if grouped and not static_groups and i1 % g == 0:
            # dynamic group: W[:, i1:] has every earlier column's update applied (blocks are
            # split at group starts), so this is the scale of the group as it now stands.
            s_g, z_g = qparams(W[:, i1:i1 + g], col_spec, clip=clip, name="W")  # (N, 1)
            scale[:, i1 // g], zero[:, i1 // g] = s_g[:, 0], z_g[:, 0]
        W1 = W[:, i1:i2].clone()  # (N, B) columns of this block, updated in place
        Err1 = torch.zeros_like(W1)  # (N, B) the scaled errors err_i
        U1 = U[i1:i2, i1:i2]  # (B, B)
        for i in range(i2 - i1):
            j = i1 + i if perm is None else int(perm[i1 + i])  # original column index
            col = j // g if grouped else 0
            s, z = scale[:, col:col + 1], zero[:, col:col + 1]  # (N, 1) this column's grid
            w = W1[:, i:i + 1]  # (N, 1)
            q = quantize_to_grid(w, s, z, col_spec, name="W")  # (N, 1) golden rounding
            w_hat = dequantize(q, s, z, col_spec).to(dtype)  # (N, 1)
            Q[:, i1 + i] = q[:, 0]
            # OBS: fixing column i to ŵ costs (w − ŵ)²/[H_F⁻¹]_ii over the free set F; the
            # optimal compensation of the free columns is −err · U[i, F], with err scaled by U_ii.
            err = (w - w_hat) / U1[i, i]  # (N, 1)
            loss += 0.5 * float(err.to(torch.float64).square().sum())
            W1[:, i:] -= err * U1[i:i + 1, i:]  # (N, 1) * (1, B − i)
            Err1[:, i:i + 1] = err
        # lazy batch: all of this block's updates reach the columns to its right in one matmul
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # (N, B) @ (B, K − i2)

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]  # back to the original column order
    W_hat = dequantize(Q, scale, zero, spec)
    return GPTQResult(W_hat, Q, scale, zero, loss, perm, float(damp), False)

