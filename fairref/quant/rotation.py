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

``hadamard`` and ``random_orthogonal`` return the dense float32 matrices: the reference
the tests compare against (checked against scipy.linalg.hadamard). What a quantized linear
holds is a ``RotationSpec`` (kind, dimension, seed): a small frozen description that applies
R without ever building a dense K × K Hadamard. Hadamard is block-diagonal with blocks
H_m (m the largest power of two dividing K), so x R is computed on x reshaped to
(…, K/m, m), one block of m features at a time; ``random`` is one dense (T, K) × (K, K)
matmul (m = K).

**The fast Hadamard block.** In Sylvester order H_m = H_a ⊗ H_b for m = a·b (powers of
two), and a row vector x = vec(X) with X the row-major a × b reshape satisfies
x (S_a ⊗ S_b) = vec(S_aᵀ X S_b) (S the ±1 matrices; S_a is symmetric). So for m ≥
``FACTORED_MIN_BLOCK`` the block is applied as two small matmuls, Y = X (c·S_b) and
Z = S_a Y, with c = fl32(1/√m) the dense reference's entry magnitude: a + b multiplies per
feature instead of m (3x faster at m = 256 on one CPU thread, 24x at m = 4096; below 128
the single m × m matmul is faster). Error (u = 2⁻²⁴, γ_n = nu/(1 − nu), Higham §3.1):
each term x_ij·(±c) is rounded once and summed over b terms, then the a partial sums are
added with exact ±1 weights, so every term carries (1 + θ_b)(1 + θ_{a−1}) = 1 + θ_{a+b−1}
and |apply(x) − x R|_j ≤ γ_{a+b−1}·(|x| |R|)_j, R the dense float32 reference. A single
m × m matmul gives γ_m instead. ``RotationSpec.rounding_terms`` returns that n; neither
exceeds the γ_K of the dense reference itself. tests/test_quant_rotation.py checks it.

``RotationSpec.apply`` is the one function that rotates activations (x R) and weights
(W R: the rows of W are rotated like tokens) everywhere: calibration Hessians,
QuantLinear's construction and its forward, so calibration and inference see the same
numbers.

Legend: n = K the dimension rotated, m the block size, T tokens.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
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


# --- the spec a quantized linear holds --------------------------------------------------------


#: Hadamard blocks of at least this size are applied as two factors (module docstring)
FACTORED_MIN_BLOCK = 128


def hadamard_factors(m: int) -> tuple[int, int]:
    """(a, b) with a·b = m, both powers of two, a = b or b = 2a: H_m = H_a ⊗ H_b."""
    if largest_pow2_divisor(m) != m:
        raise ValueError(f"m must be a power of two, got {m}")
    a = 1 << ((m.bit_length() - 1) // 2)
    return a, m // a


@functools.lru_cache(maxsize=64)
def _block_matrix(kind: str, block: int, seed: int, device: torch.device) -> Tensor:
    """The (m, m) float32 block of R on ``device``, built once per (kind, m, seed, device).

    Shared by every linear of that size: callers must treat it as read-only."""
    R_m = hadamard(block) if kind == "hadamard" else random_orthogonal(block, seed)  # (m, m)
    return R_m.to(device)


@functools.lru_cache(maxsize=64)
def _hadamard_factors(m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(S_a, c·S_b), float32 on ``device``: S the ±1 Sylvester matrices, c = fl32(1/√m).

    S_a is exact; c·S_b has entries exactly ±c, the dense reference's entries."""
    a, b = hadamard_factors(m)
    c = torch.tensor(1.0 / math.sqrt(m), dtype=torch.float64).to(torch.float32)  # fl32(1/√m)
    S_a = _sylvester(a).to(torch.float32)  # (a, a), ±1
    cS_b = _sylvester(b).to(torch.float32) * c  # (b, b), ±c exactly (c · ±1 is exact)
    return S_a.to(device), cS_b.to(device)


@dataclass(frozen=True)
class RotationSpec:
    """The rotation R of one linear's K inputs (SPEC §1, "Rotation"), as data.

    An *input transform* of ``fairref.quant.linear.QuantLinear``: ``apply(x)`` maps
    (…, K) → (…, K) as x R, ``apply_weight(W)`` gives W R (so x Wᵀ = (x R)(W R)ᵀ), and
    ``to_dict()`` is its JSON-able description for checkpoints (SPEC §7: kind, block, seed).
    """

    kind: RotationKind  # "hadamard" (block-diagonal Sylvester) or "random" (seeded Haar)
    dim: int  # K, the number of inputs rotated
    seed: int = 0  # the Gaussian's seed; used by kind="random" only

    def __post_init__(self) -> None:
        if self.kind not in ("hadamard", "random"):
            raise ValueError(f"RotationSpec.kind must be 'hadamard' or 'random', got {self.kind!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"RotationSpec.dim must be a positive integer (K), got {self.dim!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"RotationSpec.seed must be an integer, got {self.seed!r}")

    @property
    def block(self) -> int:
        """m: the size of R's diagonal blocks (largest power of two dividing K, or K)."""
        return largest_pow2_divisor(self.dim) if self.kind == "hadamard" else self.dim

    @property
    def in_features(self) -> int:
        """K, the size of the last axis ``apply`` accepts."""
        return self.dim

    def matrix(self) -> Tensor:
        """The dense R (K, K), float32: for tests and inspection only, never the hot path."""
        return rotation(self.dim, self.kind, self.seed)

    def apply(self, x: Tensor) -> Tensor:
        """x R for x (…, K), float32 (x is cast first), block by block (module docstring)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"RotationSpec.apply: x must end in K={self.dim} features, got "
                             f"shape {tuple(x.shape)}")
        m = self.block
        x = x.to(torch.float32)
        if self.kind == "hadamard" and m >= FACTORED_MIN_BLOCK:
            S_a, cS_b = _hadamard_factors(m, x.device)
            X = x.reshape(-1, S_a.shape[0], cS_b.shape[0])  # (T·K/m, a, b): one block each
            return (S_a @ (X @ cS_b)).reshape(x.shape)  # vec(S_aᵀ X c·S_b) per block, (…, K)
        if self.kind == "hadamard" and m == 1:
            return x.clone()  # odd K: R = I (1 × 1 blocks), an exact copy
        R_m = _block_matrix(self.kind, m, self.seed if self.kind == "random" else 0, x.device)
        xb = x.reshape(-1, m)  # (T·K/m, m): one row per block of a token
        return (xb @ R_m).reshape(x.shape)  # (…, K)

    @property
    def rounding_terms(self) -> int:
        """n with |apply(x) − x R| ≤ γ_n·(|x| |R|) elementwise, R = ``matrix()`` (module
        docstring): a + b − 1 for a factored Hadamard block, m for one m × m matmul."""
        if self.kind == "hadamard" and self.block >= FACTORED_MIN_BLOCK:
            a, b = hadamard_factors(self.block)
            return a + b - 1
        return self.block

    def apply_weight(self, W: Tensor) -> Tensor:
        """W R for W (N, K): each output channel's row is rotated like a token."""
        return self.apply(W)

    def to_dict(self) -> dict:
        """JSON-able description (SPEC §7); ``from_dict`` inverts it."""
        return {"type": "rotation", "kind": self.kind, "dim": self.dim, "block": self.block,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "RotationSpec":
        """The spec described by ``to_dict()``; ``ValueError`` naming a bad or missing key."""
        if not isinstance(d, dict) or d.get("type") != "rotation":
            raise ValueError(f"a rotation description needs type='rotation', got {d!r}")
        missing = [k for k in ("kind", "dim", "seed") if k not in d]
        if missing:
            raise ValueError(f"rotation description {d!r} lacks key(s) {missing}")
        spec = cls(kind=d["kind"], dim=d["dim"], seed=d["seed"])
        if "block" in d and d["block"] != spec.block:
            raise ValueError(f"rotation description: block={d['block']!r} does not match "
                             f"kind={spec.kind!r}, dim={spec.dim} (expected {spec.block})")
        return spec
