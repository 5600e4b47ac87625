"""The token-weighted GPTQ Hessian H = 2 Σ_n w_n x_n x_nᵀ / Σ_n w_n (SPEC §4.3a).

Stage II (SPEC §4.2) minimizes Σ_n w_n ‖(W − Ŵ) x_n‖² / Σ_n w_n for each linear; expanding
the square gives tr((W − Ŵ) H (W − Ŵ)ᵀ) / 2 with the H above, so the weights enter the
solver only through H. With w ≡ 1 this is the Hessian of the reference GPTQ
(IST-DASLab/gptq, ``GPTQ.add_batch``), which keeps a running mean; we keep the raw sums
S = Σ w x xᵀ and Σ w instead, so that streaming batches and the one-shot call compute the
same quantity and only the summation order differs.

Precision choice: both sums are accumulated in **float64** (inputs are cast up first). A
calibration set streams hundreds of thousands of tokens into S; in float32 the running sum
loses about log2(#batches) bits, and the streamed and one-shot H would then differ far more
than the float64 rounding that separates them here. ``H`` is returned in float64; the
solver casts it to its working dtype.

Legend: T tokens, K input features of the linear.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flatten_tokens(X: Tensor, weights: Tensor | None, K: int | None) -> tuple[Tensor, Tensor]:
    """Validate (X, weights) and return them as float64 (T, K) and (T,)."""
    if not isinstance(X, Tensor) or not X.is_floating_point():
        raise ValueError(f"X must be a floating-point torch.Tensor, got {type(X).__name__}"
                         + (f" of dtype {X.dtype}" if isinstance(X, Tensor) else ""))
    if X.ndim < 1 or X.shape[-1] == 0:
        raise ValueError(f"X must have shape (..., K) with K ≥ 1, got {tuple(X.shape)}")
    if K is not None and X.shape[-1] != K:
        raise ValueError(
            f"X has K={X.shape[-1]} input features but the accumulator was built for K={K}; "
            "pass the inputs of the same linear layer"
        )
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or Inf; the Hessian would be undefined. "
                         "Check the captured layer inputs.")
    X2 = X.reshape(-1, X.shape[-1]).to(torch.float64)  # (T, K): leading axes are tokens
    T = X2.shape[0]
    if weights is None:
        return X2, torch.ones(T, dtype=torch.float64, device=X2.device)
    if not isinstance(weights, Tensor):
        raise ValueError(f"weights must be a torch.Tensor or None, got {type(weights).__name__}")
    if tuple(weights.shape) not in ((T,), tuple(X.shape[:-1])):
        raise ValueError(
            f"weights has shape {tuple(weights.shape)} but X {tuple(X.shape)} holds T={T} "
            f"tokens; pass one weight per token, shaped ({T},) or {tuple(X.shape[:-1])}"
        )
    w = weights.reshape(T).to(X2.device, torch.float64)  # (T,) beside X
    if not torch.isfinite(w).all():
        raise ValueError("weights contain NaN or Inf; token weights must be finite")
    if (w < 0).any():
        raise ValueError(f"weights must be non-negative, found min {float(w.min())}; "
                         "a token's weight is an importance, clip or shift your prior")
    return X2, w


class HessianAccumulator:
    """Streams batches into S = Σ_n w_n x_n x_nᵀ and Σ_n w_n (float64); ``.H`` = 2 S / Σ w.

    ``acc = HessianAccumulator(K); acc.add(X1, w1); acc.add(X2, w2); H = acc.H`` equals
    ``hessian(cat(X1, X2), cat(w1, w2))`` up to float64 summation order. A batch whose
    weights are all zero is accepted (it contributes nothing); reading ``.H`` while the total
    weight is still zero is a ``ValueError``.
    """

    def __init__(self, K: int) -> None:
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K (the number of input features) must be a positive int, got {K!r}")
        self.K = K
        self.S: Tensor | None = None  # (K, K): Σ w x xᵀ, made by the first add
        self.weight_sum = 0.0  # Σ w, a Python float (float64)
        self.n_tokens = 0  # tokens seen, zero-weight ones included

    def add(self, X: Tensor, weights: Tensor | None = None) -> "HessianAccumulator":
        """Add a batch X (T, K) or (..., K) with per-token weights (T,) (None means 1)."""
        X2, w = _flatten_tokens(X, weights, self.K)  # (T, K), (T,)
        if self.S is None:  # S accumulates where the inputs live
            self.S = torch.zeros(self.K, self.K, dtype=torch.float64, device=X2.device)
        # Xᵀ (w ⊙ X) rather than (√w X)ᵀ(√w X): no square root, so an integer weight such as
        # 2 is applied exactly (a duplicated token and weight 2 then agree to summation order).
        self.S += X2.T @ (w[:, None] * X2)  # (K, T) @ (T, K) -> (K, K)
        self.weight_sum += float(w.sum())
        self.n_tokens += X2.shape[0]
        return self

    @property
    def H(self) -> Tensor:
        """2 S / Σ w, symmetrized, float64 (K, K)."""
        if not self.weight_sum > 0:
            raise ValueError(
                "the total token weight is zero (no batch added, or all weights were 0); "
                "H = 2 Σ w x xᵀ / Σ w is undefined. Give at least one token a positive weight."
            )
        H = self.S * (2.0 / self.weight_sum)  # (K, K)
        # x_i (w x_j) and x_j (w x_i) round differently; average the two triangles so H is
        # exactly symmetric (Cholesky reads one triangle, act-order reads the diagonal).
        return (H + H.T) * 0.5


def hessian(X: Tensor, weights: Tensor | None = None) -> Tensor:
    """H = 2 Σ_n w_n x_n x_nᵀ / Σ_n w_n, float64 (K, K) (SPEC §4.3a).

    X: (T, K) or (..., K) layer inputs (leading axes are tokens); weights: (T,) or
    X.shape[:-1], non-negative, not all zero; None means w ≡ 1 (the reference GPTQ's H).
    """
    X2, w = _flatten_tokens(X, weights, None)
    return HessianAccumulator(X2.shape[1]).add(X2, w).H
