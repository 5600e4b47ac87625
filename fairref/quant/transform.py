"""The Kronecker-factored invertible input transform of solver (d), "flat" (SPEC §4.3d).

A quantized linear with an input transform computes Q_a(x diag(ζ)⁻¹ P) · Q_w(W diag(ζ) P⁻ᵀ)ᵀ,
which equals x Wᵀ in exact arithmetic for any invertible P and positive ζ. Here

- P = P_l ⊗ P_r with n_l · n_r = K (``kronecker_sizes``): n_r the power of two closest to
  √K that divides K, n_l = K / n_r (4096 → 64·64, 12288 → 96·128, 3584 → 56·64,
  18944 → 148·128);
- it is applied as x P = vec(P_lᵀ X P_r), X the row-major (n_l, n_r) reshape of x
  (``kron_apply``): two small matmuls, never a dense K × K matrix. Index check:
  (P_l ⊗ P_r)[(a, b), (c, d)] = P_l[a, c] P_r[b, d], so
  (x P)[(c, d)] = Σ_ab X[a, b] P_l[a, c] P_r[b, d] = (P_lᵀ X P_r)[c, d];
- each factor is B · cay(A_U) · diag(exp θ) · cay(A_V)ᵀ (``factor``), B that factor's §1
  rotation of its own size, cay(A) = (I − A)⁻¹ (I + A) the Cayley map of a skew-symmetric A
  (orthogonal, never with eigenvalue −1). Its inverse-transpose is the same product with
  θ → −θ (``factor_inv_t``), so the weight side needs no matrix inverse;
- at A_U = A_V = 0, θ = 0 every factor equals B *exactly* (the solve of I by I and the
  products with I are exact in float32), and with B the normalized Hadamard matrices
  R_{n_l} ⊗ R_{n_r} = R_K: the Sylvester construction gives H_a ⊗ H_b = H_{ab} for powers of
  two, and R_{n_l} = I_odd ⊗ H_{2^i}, so the product is I_odd ⊗ H_{2^i n_r} = R_K
  (tests/test_quant_transform.py checks this for the four sizes above);
- the "direct inverse" option (FlatQuant's) learns each factor as a plain matrix and
  inverts it with an explicit solve (``direct_inv_t``).

``KroneckerTransform`` is the frozen, exported form (float32 P_l, P_r, their inverse
transposes and an optional ζ) with ``apply(x)`` for the input side, ``apply_weight(W)`` for
the weight side and ``to_dict()`` for a checkpoint; it is what a QuantLinear's
input-transform slot holds. All arithmetic is float32 (SPEC §1).

Legend: K a linear's input features, n_l × n_r the Kronecker factors, N output channels,
T tokens (any leading dims), n a factor's size.
Written from SPEC §4.3d and the FlatQuant paper (arXiv 2410.09426); not diffed against
FlatQuant's code. Checked by tests/test_quant_transform.py (dense Kronecker oracle, float64
identities, block-wise Hadamard oracle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fairref.quant.rotation import RotationKind, rotation as make_rotation


# --- sizes -------------------------------------------------------------------------------


def kronecker_sizes(K: int) -> tuple[int, int]:
    """(n_l, n_r) with n_l · n_r = K and n_r the power of two closest to √K dividing K.

    "Closest" is measured as |n_r − √K|; a tie (which needs √K = 1.5 · 2^i) goes to the
    smaller n_r. Odd K gives n_r = 1 (the transform is then one dense K × K factor).
    """
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K (the input features of a linear) must be a positive int, got {K!r}")
    root = math.sqrt(K)
    best = 1
    m = 2
    while K % m == 0:  # every power of two dividing K
        if abs(m - root) < abs(best - root):
            best = m
        m *= 2
    return K // best, best


# --- the parametrization -------------------------------------------------------------------


def skew(M: Tensor) -> Tensor:
    """The skew-symmetric matrix A = U − Uᵀ, U the strictly upper triangle of M (n, n)."""
    U = torch.triu(M, diagonal=1)
    return U - U.mT


def cayley(A: Tensor) -> Tensor:
    """cay(A) = (I − A)⁻¹ (I + A) for a skew-symmetric A (n, n): an orthogonal matrix.

    I − A is always invertible for skew A (its eigenvalues are 1 − iλ, λ real). cay(0) = I
    exactly. Differentiable (a linear solve).
    """
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square (n, n) matrix, got shape {tuple(A.shape)}")
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return torch.linalg.solve(eye - A, eye + A)  # (n, n)


def factor(B: Tensor, A_U: Tensor, theta: Tensor, A_V: Tensor) -> Tensor:
    """One Kronecker factor B · cay(A_U) · diag(exp θ) · cay(A_V)ᵀ (n, n), SPEC §4.3d.

    A_U, A_V are skew-symmetric (n, n) (build them with ``skew``), θ (n,) log-singular
    values, B a fixed orthogonal matrix (the factor's §1 rotation, or I).
    """
    # the column scaling diag(exp θ) is a broadcast multiply, not a matmul with a diagonal
    return ((B @ cayley(A_U)) * torch.exp(theta)) @ cayley(A_V).mT  # (n, n)


def factor_inv_t(B: Tensor, A_U: Tensor, theta: Tensor, A_V: Tensor) -> Tensor:
    """The inverse-transpose of ``factor``: B · cay(A_U) · diag(exp −θ) · cay(A_V)ᵀ (n, n).

    (B C_U D C_Vᵀ)⁻ᵀ = B⁻ᵀ C_U⁻ᵀ D⁻¹ (C_Vᵀ)⁻ᵀ = B C_U D⁻¹ C_Vᵀ, because M⁻ᵀ = M for an
    orthogonal M and D = diag(exp θ) is diagonal: only the sign of θ changes, so no
    inverse is ever formed. (A float32 B is orthogonal only to float32 rounding, so in
    float32 this is P⁻ᵀ to rounding, which is all the float32 product can use anyway.)
    """
    return factor(B, A_U, -theta, A_V)


def direct_inv_t(P: Tensor) -> Tensor:
    """P⁻ᵀ (n, n) by an explicit solve (FlatQuant's "direct inverse" option)."""
    eye = torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    return torch.linalg.solve(P, eye).mT  # (n, n)


def factor_init(n: int, kind: RotationKind | None, seed: int = 0) -> Tensor:
    """B for a factor of size n: the §1 rotation of that size (float32), or I for None."""
    if kind is None:
        return torch.eye(n, dtype=torch.float32)
    return make_rotation(n, kind, seed)


# --- application ------------------------------------------------------------------------------


def kron_apply(x: Tensor, M_l: Tensor, M_r: Tensor) -> Tensor:
    """x (M_l ⊗ M_r) for x (..., K), K = n_l · n_r, as vec(M_lᵀ X M_r), without a K × K matrix.

    X is the row-major (n_l, n_r) reshape of each row of x. Used with (P_l, P_r) on the input
    side and with (P_l⁻ᵀ, P_r⁻ᵀ) on each row of a weight.
    """
    n_l, n_r = M_l.shape[0], M_r.shape[0]
    if x.shape[-1] != n_l * n_r:
        raise ValueError(f"x ends in {x.shape[-1]} features but the factors are "
                         f"{n_l} × {n_r} = {n_l * n_r}; build them with kronecker_sizes(K)")
    X = x.reshape(-1, n_l, n_r)  # (T, n_l, n_r) row-major
    XM = torch.matmul(X, M_r)  # (T, n_l, n_r) = X M_r: one (T·n_l, n_r) @ (n_r, n_r) matmul
    # M_lᵀ (X M_r) = ((X M_r)ᵀ M_l)ᵀ: again one 2-D matmul, (T·n_r, n_l) @ (n_l, n_l), instead
    # of broadcasting M_lᵀ over T small batched products
    Z = torch.matmul(XM.mT.reshape(-1, n_l), M_l)  # (T·n_r, n_l)
    return Z.reshape(-1, n_r, n_l).mT.reshape(x.shape)  # (T, n_l, n_r) → (..., K)


# --- the exported transform -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class KroneckerTransform:
    """x ↦ (x ⊘ ζ) (P_l ⊗ P_r) and its weight-side partner W ↦ W diag(ζ) (P_l ⊗ P_r)⁻ᵀ.

    ``apply(x) @ apply_weight(W).T`` equals ``x @ W.T`` in exact arithmetic. ``zeta`` is None
    where ζ was folded into the RMSNorm that feeds the linear (SPEC §4.3d): the linear then
    receives x ⊘ ζ already and its weight was multiplied by ζ before ``apply_weight``. All
    tensors float32; ``P_l_inv_t``, ``P_r_inv_t`` are needed only to build the weight
    (at inference P⁻¹ is baked into Ŵ).
    """

    P_l: Tensor  # (n_l, n_l)
    P_r: Tensor  # (n_r, n_r)
    P_l_inv_t: Tensor  # (n_l, n_l) = P_l⁻ᵀ
    P_r_inv_t: Tensor  # (n_r, n_r) = P_r⁻ᵀ
    zeta: Tensor | None = None  # (K,) smoothing divisor, None when folded into the norm

    def __post_init__(self) -> None:
        for name in ("P_l", "P_r", "P_l_inv_t", "P_r_inv_t"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[0] != t.shape[1]:
                raise ValueError(f"KroneckerTransform.{name} must be a square matrix, got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
            if not torch.isfinite(t).all():
                raise ValueError(f"KroneckerTransform.{name} contains NaN or Inf")
            object.__setattr__(self, name, t.detach().to(torch.float32))
        if self.P_l_inv_t.shape != self.P_l.shape or self.P_r_inv_t.shape != self.P_r.shape:
            raise ValueError("KroneckerTransform: each inverse-transpose must have its factor's shape")
        if self.zeta is not None:
            z = self.zeta.detach().to(torch.float32)
            if tuple(z.shape) != (self.in_features,) or not (z > 0).all() or not torch.isfinite(z).all():
                raise ValueError(f"KroneckerTransform.zeta must be finite, positive and shaped "
                                 f"({self.in_features},), got shape {tuple(z.shape)}")
            object.__setattr__(self, "zeta", z)

    @property
    def in_features(self) -> int:
        """K = n_l · n_r."""
        return self.P_l.shape[0] * self.P_r.shape[0]

    def apply(self, x: Tensor) -> Tensor:
        """(x ⊘ ζ) P for x (..., K), float32."""
        x = x.to(torch.float32)
        if self.zeta is not None:
            x = x / self.zeta  # SmoothQuant's division, a true float32 division
        return kron_apply(x, self.P_l, self.P_r)

    def apply_weight(self, W: Tensor) -> Tensor:
        """W diag(ζ) P⁻ᵀ for W (N, K), float32: the weight matching ``apply``."""
        W = W.to(torch.float32)
        if self.zeta is not None:
            W = W * self.zeta  # (N, K) column j scaled by ζ_j
        return kron_apply(W, self.P_l_inv_t, self.P_r_inv_t)

    def to(self, device) -> "KroneckerTransform":
        """A copy on ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return KroneckerTransform(mv(self.P_l), mv(self.P_r), mv(self.P_l_inv_t),
                                  mv(self.P_r_inv_t), mv(self.zeta))

    def to_dict(self) -> dict:
        """JSON-able description: the float32 values used (as Python floats, exact)."""
        d = {"type": "kronecker", "kind": "kronecker", "n_l": self.P_l.shape[0], "n_r": self.P_r.shape[0],
             "P_l": self.P_l.tolist(), "P_r": self.P_r.tolist(),
             "P_l_inv_t": self.P_l_inv_t.tolist(), "P_r_inv_t": self.P_r_inv_t.tolist(),
             "zeta": None if self.zeta is None else self.zeta.tolist()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KroneckerTransform":
        """Inverse of ``to_dict`` (float32 values survive a float round trip exactly)."""
        if not isinstance(d, dict) or d.get("kind") != "kronecker":
            raise ValueError("KroneckerTransform.from_dict needs a dict with kind='kronecker' "
                             "(as written by to_dict)")
        missing = [k for k in ("P_l", "P_r", "P_l_inv_t", "P_r_inv_t") if k not in d]
        if missing:
            raise ValueError(f"KroneckerTransform.from_dict: missing key(s) {missing}")
        t = lambda v: None if v is None else torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
        return cls(t(d["P_l"]), t(d["P_r"]), t(d["P_l_inv_t"]), t(d["P_r_inv_t"]), t(d.get("zeta")))
