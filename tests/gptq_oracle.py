"""A slow, obviously-correct NumPy oracle of GPTQ (Frantar et al. 2023, Algorithm 1).

Written from the paper and SPEC §1/§4.3a, independently of fairref/quant/gptq.py: float64
throughout, column by column, no lazy batching, the inverse taken with ``np.linalg.inv``
(not via Cholesky). The only float32 steps are the ones SPEC §1 pins: scales are computed
from the float32 weight with float32 arithmetic, and each column is rounded as
round_half_even(float32(w) / s) then clamped; ŵ = float32((q − z) · s).

Besides q it returns ``z_pre``: the value w̃_i / s (float64) each element had right before
it was rounded, so a test can tell whether a disagreement started at a near-tie.

Legend: N rows, K columns, g group size.
"""

from __future__ import annotations

import numpy as np


def np_qparams(X32: np.ndarray, bits: int, symmetric: bool, scale_mode: str, clip) -> tuple:
    """Scale and zero of each row of X32 (N, m) over its m elements → (N,) float32, (N,) int."""
    c = np.float32(1.0) if clip is None else np.asarray(clip, dtype=np.float32).reshape(-1)
    qmax_s = 2 ** (bits - 1) - 1
    if symmetric:
        amax = np.abs(X32).max(axis=1).astype(np.float32)
        div = np.float32(qmax_s if scale_mode == "restricted" else qmax_s + 0.5)
        s = (c * amax).astype(np.float32) / div
        s = np.where(s == 0, np.float32(1), s).astype(np.float32)
        return s, np.zeros(X32.shape[0], dtype=np.int64)
    qmax_u = 2**bits - 1
    lo = (np.minimum(X32.min(axis=1), np.float32(0)) * c).astype(np.float32)
    hi = (np.maximum(X32.max(axis=1), np.float32(0)) * c).astype(np.float32)
    s = ((hi - lo) / np.float32(qmax_u)).astype(np.float32)
    s = np.where(s == 0, np.float32(1), s).astype(np.float32)
    z = np.clip(np.round(-lo / s), 0, qmax_u).astype(np.int64)
    return s, z


def np_round_column(w64: np.ndarray, s32: np.ndarray, z: np.ndarray, bits: int,
                    symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Golden rounding of one column → (q int, ŵ float64, pre-rounding value w/s float64)."""
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    x32 = w64.astype(np.float32)
    r = np.round(x32 / s32)  # float32 true division, then half-to-even
    q = np.clip(r + (0 if symmetric else z), qmin, qmax).astype(np.int64)
    w_hat = ((q - z).astype(np.float32) * s32).astype(np.float64)
    return q, w_hat, w64 / s32.astype(np.float64)


def gptq_oracle(W, H, bits=4, symmetric=True, scale_mode="restricted", group_size=None,
                static_groups=True, act_order=False, percdamp=0.01, clip=None) -> dict:
    """Algorithm 1 with the reference's pre-processing (dead columns, damping, act-order)."""
    W = np.asarray(W, dtype=np.float32).astype(np.float64)  # SPEC §1: float32 input
    H = np.array(H, dtype=np.float64)
    N, K = W.shape
    args = (bits, symmetric, scale_mode, clip)
    if group_size is None:
        ch_s, ch_z = np_qparams(W.astype(np.float32), *args)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    g = group_size or K
    G = K // g
    S = np.zeros((N, G), np.float32)
    Z = np.zeros((N, G), np.int64)
    if group_size is not None and static_groups:
        for k in range(G):
            S[:, k], Z[:, k] = np_qparams(W[:, k * g:(k + 1) * g].astype(np.float32), *args)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    W, H = W[:, perm], H[np.ix_(perm, perm)]
    damp = percdamp * np.mean(np.diag(H))
    Hinv = np.linalg.inv(H + damp * np.eye(K))
    U = np.linalg.cholesky(Hinv).T  # upper: Hinv = Uᵀ U
    Q = np.zeros((N, K), np.int64)
    z_pre = np.zeros((N, K))
    loss = 0.0
    for i in range(K):
        j = perm[i]
        if group_size is None:
            s, z = ch_s, ch_z
        else:
            if not static_groups and i % g == 0:  # dynamic: from the fully updated W
                S[:, i // g], Z[:, i // g] = np_qparams(W[:, i:i + g].astype(np.float32), *args)
            s, z = S[:, j // g], Z[:, j // g]
        Q[:, i], w_hat, z_pre[:, i] = np_round_column(W[:, i], s, z, bits, symmetric)
        err = (W[:, i] - w_hat) / U[i, i]
        loss += 0.5 * np.sum(err**2)
        W[:, i:] -= np.outer(err, U[i, i:])  # OBS update of every column not yet fixed
    inv = np.argsort(perm)
    return {"q": Q[:, inv], "z_pre": z_pre[:, inv], "order": perm, "loss": loss,
            "damp": damp, "scale": S if group_size is not None else ch_s}
