"""Orthogonal rotations for QuaRot-style quantized linears (SPEC §1, "Rotation").

For an orthogonal R (K×K), x Wᵀ = (x R)(W R)ᵀ in exact arithmetic, so a quantized linear
may compute Q_a(x R) · Q_w(W R)ᵀ: the rotation spreads outlier features over all K
coordinates before either side is put on the grid. Two kinds:

- ``hadamard(n)``: the normalized Walsh–Hadamard matrix in Sylvester order (H_1 = [1],
  H_2m = [[H_m, H_m], [H_m, −H_m]], then × 1/√n). When n is not a power of two: the
  block-diagonal matrix with copies of the normalized Hadamard of the largest power of
  two dividing n (for odd n that block is 1 × 1, i.e. the identity).
- ``rotation(n, "random", seed)``: Q from the QR factorization of a float64 standard
  Gaussian drawn from ``torch.Generator().manual_seed(seed)``, with the sign of each column
  flipped so that diag(R_qr) > 0 (this makes Q unique, i.e. Haar-distributed).

Both are returned as float32 and applied as dense matmuls (the reference; a fast
transform would be an optional equivalent). Checked against scipy.linalg.hadamard.
Legend: n = K the dimension rotated.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

RotationKind = Literal["hadamard", "random"]


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (the dimension K), got {n!r}")


def largest_pow2_divisor(n: int) -> int:
    """The largest power of two dividing n (the Hadamard block size for dimension n)."""
    _check_n(n)
    return n & -n


def _sylvester(m: int) -> Tensor:
    """Unnormalized ±1 Sylvester–Hadamard matrix of size m (a power of two), float64."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < m:
        H = torch.cat((torch.cat((H, H), 1), torch.cat((H, -H), 1)), 0)  # (2m', 2m')
    return H


def hadamard(n: int) -> Tensor:
    """Normalized Walsh–Hadamard matrix (n, n), float32, orthogonal and symmetric (SPEC §1)."""
    _check_n(n)
    m = largest_pow2_divisor(n)
    # 1/√m in float64, then one rounding to float32: every entry is exactly ±fl32(1/√m).
    block = _sylvester(m) / math.sqrt(m)  # (m, m)
    return torch.block_diag(*([block] * (n // m))).to(torch.float32)  # (n, n)


def random_orthogonal(n: int, seed: int = 0) -> Tensor:
    """Seeded Haar-random orthogonal matrix (n, n), float32 (SPEC §1)."""
    _check_n(n)
    gen = torch.Generator().manual_seed(int(seed))
    Z = torch.randn(n, n, generator=gen, dtype=torch.float64)  # (n, n) Gaussian
    Q, R = torch.linalg.qr(Z)
    d = torch.sign(torch.diagonal(R))  # (n,)
    d = torch.where(d == 0, torch.ones_like(d), d)  # a zero pivot has no sign to fix
    return (Q * d).to(torch.float32)  # flip columns so that diag(R) > 0


def rotation(n: int, kind: RotationKind = "hadamard", seed: int = 0) -> Tensor:
    """The rotation R (n, n), float32, of the given kind (SPEC §1); ``seed`` is for "random"."""
    if kind == "hadamard":
        return hadamard(n)
    if kind == "random":
        return random_orthogonal(n, seed)
    raise ValueError(f"kind must be 'hadamard' or 'random', got {kind!r}")
