"""Rotations of SPEC §1 (fairref/quant/rotation.py): orthogonality, invariance, oracles.

Tolerances are derived from the float32 rounding of the entries (u = 2^-24):
R = Q + E with Q exactly orthogonal (Hadamard) or orthogonal to float64 precision (QR),
|E_ij| ≤ u·|Q_ij|. Then |(RᵀR − I)_ij| ≤ 2u·Σ_k |Q_ki||Q_kj| + u² ≤ 2u + u² (Cauchy–Schwarz
on unit columns), plus the float64 QR residual (≤ 1e-12 for n ≤ 128).
Legend: n = K the rotated dimension, T tokens, N outputs.
"""

import importlib

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.quant.rotation import (
    RotationSpec,
    hadamard,
    hadamard_factors,
    largest_pow2_divisor,
    random_orthogonal,
    rotation,
)

# the module itself (fairref.quant re-exports a function named ``rotation`` over it)
rotation_module = importlib.import_module("fairref.quant.rotation")
U = 2.0**-24
ORTHO_TOL = 2 * U + U * U + 1e-12  # see the module docstring


def _gram_err(R: torch.Tensor) -> np.ndarray:
    R64 = R.numpy().astype(np.float64)  # exact copy of the float32 entries
    return np.abs(R64.T @ R64 - np.eye(R.shape[0]))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 64, 128, 1024])
def test_hadamard_equals_scipy_sylvester_over_sqrt_n(n):
    """Powers of two: exactly scipy.linalg.hadamard(n) / √n, rounded once to float32."""
    oracle = (scipy.linalg.hadamard(n).astype(np.float64) / np.sqrt(n)).astype(np.float32)
    np.testing.assert_array_equal(hadamard(n).numpy(), oracle)


@pytest.mark.parametrize("n", [3, 6, 12, 20, 24, 40, 96, 100])
def test_hadamard_non_power_of_two_is_block_diagonal_of_largest_pow2_block(n):
    m = n & -n  # largest power of two dividing n, computed independently of the library
    block = scipy.linalg.hadamard(m).astype(np.float64) / np.sqrt(m)
    oracle = scipy.linalg.block_diag(*([block] * (n // m))).astype(np.float32)
    assert largest_pow2_divisor(n) == m
    np.testing.assert_array_equal(hadamard(n).numpy(), oracle)


@given(st.integers(1, 128))
def test_hadamard_is_orthogonal(n):
    """Off-diagonal of HᵀH is exactly 0 (±c² pairs cancel); the diagonal is m·fl(1/√m)²."""
    err = _gram_err(hadamard(n))
    assert (err <= ORTHO_TOL).all()
    assert (err[~np.eye(n, dtype=bool)] == 0).all()


@given(st.integers(1, 64), st.integers(0, 2**31 - 1))
def test_random_rotation_is_orthogonal(n, seed):
    assert (_gram_err(random_orthogonal(n, seed)) <= ORTHO_TOL).all()


@given(st.integers(1, 32), st.integers(0, 1000))
def test_random_rotation_is_seeded_and_sign_fixed(n, seed):
    """Same seed → same matrix; Qᵀ·Z is upper triangular with a positive diagonal, i.e. the
    columns' signs were fixed so that diag(R_qr) > 0 for the seeded float64 Gaussian Z."""
    Q = random_orthogonal(n, seed)
    assert torch.equal(Q, random_orthogonal(n, seed))
    Z = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    Rqr = Q.to(torch.float64).T @ Z  # (n, n) ≈ the triangular factor
    # Below the diagonal only Q's float32 rounding E (|E| ≤ u|Q|) is left:
    # |(EᵀZ)_ij| ≤ u·‖Q_:,i‖₂·‖Z_:,j‖₂ ≤ u·√n·max|Z| (plus float64 QR residue ≤ 1e-12).
    tol = U * n**0.5 * float(Z.abs().max()) + 1e-12
    assert (torch.diagonal(Rqr) > 0).all()
    assert float(torch.tril(Rqr, -1).abs().max()) <= tol


@given(st.integers(1, 64), st.sampled_from(["hadamard", "random"]), st.integers(0, 99),
       st.integers(1, 5), st.integers(1, 5))
def test_rotation_leaves_linear_output_invariant(n, kind, seed, T, N):
    """x Wᵀ = (x R)(W R)ᵀ up to R's rounding: |x (R Rᵀ − I) wᵀ| ≤ ‖x‖·‖w‖·‖R Rᵀ − I‖₂ and
    ‖R Rᵀ − I‖₂ ≤ n·max|R Rᵀ − I|_ij ≤ n·ORTHO_TOL (products done in float64, whose own
    rounding adds ≤ 1e-12 relative here)."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(T, n, generator=g, dtype=torch.float64)
    W = torch.randn(N, n, generator=g, dtype=torch.float64) * 10
    R = rotation(n, kind, seed).to(torch.float64)
    lhs, rhs = x @ W.T, (x @ R) @ (W @ R).T
    bound = torch.linalg.norm(x, dim=1)[:, None] * torch.linalg.norm(W, dim=1)[None, :]
    assert ((lhs - rhs).abs() <= bound * (n * ORTHO_TOL + 1e-12)).all()


@pytest.mark.parametrize("n", [0, -4, 2.0])
def test_bad_dimension_raises(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        hadamard(n)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind must be 'hadamard' or 'random'"):
        rotation(8, "givens")


# --- RotationSpec: the block-wise rotation a QuantLinear holds ------------------------------


def gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u): relative error bound of a float32 sum of n products."""
    return n * U / (1 - n * U)


@st.composite
def rotation_inputs(draw):
    """(spec, x): K with K/m ∈ {1, 3, 5, …} blocks, x with an outlier feature, a zero token
    and a wide dynamic range, so cancellations inside a block are common."""
    kind = draw(st.sampled_from(["hadamard", "random"]))
    K = draw(st.sampled_from([1, 2, 8, 12, 48, 64, 96, 128, 160, 192, 384, 512, 768, 2048]))
    if kind == "random":
        K = min(K, 96)  # a dense QR per example: keep it small
    T = draw(st.integers(1, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(T, K, generator=g) * 10.0 ** torch.randint(-3, 4, (T, 1), generator=g)
    x[0, draw(st.integers(0, K - 1))] = draw(st.sampled_from([1e4, -3e5]))  # an outlier
    if T > 1:
        x[-1] = 0.0
    return RotationSpec(kind, K, seed=draw(st.integers(0, 99))), x


@given(rotation_inputs())
def test_blockwise_rotation_within_gamma_n_of_exact_and_of_dense_reference(case):
    """RotationSpec.apply (block-wise, factored for m ≥ 128) against the dense reference
    x @ rotation(K).

    Derivation: (x R)_j = Σ_k x_k R_kj. Any float32 summation of n products (any order, with
    or without FMA, as BLAS may choose) is within γ_n·Σ_k |x_k R_kj| of the exact sum
    (Higham, Accuracy and Stability, §3.1). One m × m block matmul sums the m nonzero terms
    of column j: error ≤ γ_m·(|x| |R|)_j. The factored block (S_a ⊗ c·S_b, entries ±c
    exactly, as the reference's) rounds each product once, sums b of them, then adds a
    partial sums with exact ±1 weights: γ_{a+b−1} (rotation.py's docstring). That n is
    ``rounding_terms``. The dense product sums K terms (zeros add nothing): γ_K. So
    |apply − exact| ≤ γ_n·(|x| |R|)_j and |apply − dense| ≤ (γ_n + γ_K)·(|x| |R|)_j. The
    float32 R is the exact matrix of both sides, so R's own rounding does not enter;
    "exact" is float64 of the float32 operands (|x| |R| in float64 carries ≤ K·2⁻⁵³ relative
    error, far below the slack).
    """
    spec, x = case
    R = rotation(spec.dim, spec.kind, spec.seed)  # dense (K, K) reference
    assert torch.equal(spec.matrix(), R)
    xr = spec.apply(x).double()
    exact = x.double() @ R.double()
    scale = x.double().abs() @ R.double().abs()  # (T, K)
    m, K, n = spec.block, spec.dim, spec.rounding_terms
    assert m == (largest_pow2_divisor(K) if spec.kind == "hadamard" else K)
    assert 1 <= n <= m  # never looser than one m × m matmul
    assert ((xr - exact).abs() <= gamma(n) * scale).all()
    assert ((xr - (x @ R).double()).abs() <= (gamma(n) + gamma(K)) * scale).all()


def test_blockwise_rotation_is_one_matmul_per_block_bit_for_bit():
    """x R computed block by block on (…, K/m, m) rows: each block of a token is exactly
    block @ H_m (the same float32 matmul on the same rows), for leading dims too."""
    g = torch.Generator().manual_seed(0)
    spec = RotationSpec("hadamard", 96)  # m = 32, three blocks
    x = torch.randn(2, 5, 96, generator=g)
    H = hadamard(32)
    want = (x.reshape(-1, 32) @ H).reshape(2, 5, 96)
    torch.testing.assert_close(spec.apply(x), want, rtol=0, atol=0)
    torch.testing.assert_close(spec.apply_weight(x[0]), want[0], rtol=0, atol=0)


@pytest.mark.parametrize("m", [2, 4, 8, 16, 32, 64, 128, 256, 512])
def test_sylvester_hadamard_is_the_kronecker_product_of_its_factors(m):
    """H_m = H_a ⊗ H_b exactly for the factors the fast block uses (±1 entries, so the
    check is exact), which is what makes x H_m = vec(H_aᵀ X H_b) (SPEC §1's R)."""
    a, b = hadamard_factors(m)
    S = scipy.linalg.hadamard(m)
    assert a * b == m and b in (a, 2 * a)
    np.testing.assert_array_equal(np.kron(scipy.linalg.hadamard(a), scipy.linalg.hadamard(b)), S)


def test_factored_block_sums_exactly_representable_inputs_exactly():
    """On small integers every partial sum is exact in float32 and c = 1/16 (m = 256) is a
    power of two, so the factored x R equals the float64 product bit for bit: a wrong
    factor order, a transposed factor or a wrong scale cannot hide in rounding."""
    g = torch.Generator().manual_seed(3)
    spec = RotationSpec("hadamard", 768)  # m = 256 = 16 · 16, three blocks
    assert spec.rounding_terms < spec.block  # the factored path
    x = torch.randint(-50, 51, (7, 768), generator=g).to(torch.float32)
    exact = (x.double() @ hadamard(768).double()).to(torch.float32)
    torch.testing.assert_close(spec.apply(x), exact, rtol=0, atol=0)


def test_hadamard_spec_never_builds_the_dense_K_by_K(monkeypatch):
    """For K = 3·2^10 (m = 1024) only the two 32 × 32 factors of the block are ever built,
    never the 3072- or even the 1024-wide matrix; K = 96 builds just its 32-block."""
    sizes = []
    real_h, real_s = rotation_module.hadamard, rotation_module._sylvester
    monkeypatch.setattr(rotation_module, "hadamard", lambda n: sizes.append(n) or real_h(n))
    monkeypatch.setattr(rotation_module, "_sylvester", lambda n: sizes.append(n) or real_s(n))
    for K in (3072, 96):
        rotation_module._block_matrix.cache_clear()
        rotation_module._hadamard_factors.cache_clear()
        RotationSpec("hadamard", K).apply(torch.ones(2, K))
    rotation_module._block_matrix.cache_clear()
    rotation_module._hadamard_factors.cache_clear()
    assert sizes and max(sizes) == 32


def test_rotation_spec_rejects_bad_fields_and_inputs():
    with pytest.raises(ValueError, match="kind must be 'hadamard' or 'random'"):
        RotationSpec("givens", 8)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        RotationSpec("hadamard", 0)
    with pytest.raises(ValueError, match="x must end in K=8 features"):
        RotationSpec("hadamard", 8).apply(torch.ones(3, 4))
