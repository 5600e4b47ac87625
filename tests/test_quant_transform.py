"""The Kronecker-factored transform of solver (d) (SPEC §4.3d): sizes, Cayley, init, identity.

Oracles: brute-force size search; a float64 block-wise Walsh–Hadamard product for x R_K;
dense torch.kron in float64 for the index convention; the defining identities
cay(A)ᵀ cay(A) = I, P P⁻¹ = I and (x P)(W P⁻ᵀ)ᵀ = x Wᵀ.

Legend: K features, n_l × n_r factors, m the Hadamard block of K, T tokens, N outputs.
"""

import json
import math

import pytest
import torch
from hypothesis import given, strategies as st

from fairref.quant.rotation import hadamard, largest_pow2_divisor, random_orthogonal
from fairref.quant.transform import (KroneckerTransform, cayley, direct_inv_t, factor,
                                     factor_init, factor_inv_t, kron_apply, kronecker_sizes,
                                     skew)

U32 = 2.0 ** -24  # unit roundoff of float32
U64 = 2.0 ** -53


def gamma(n: int, u: float = U32) -> float:
    """γ_n = n u / (1 − n u), the classical bound on n rounded operations."""
    return n * u / (1 - n * u)


SPEC_SIZES = {4096: (64, 64), 12288: (96, 128), 3584: (56, 64), 18944: (148, 128)}


@pytest.mark.parametrize("K, expect", SPEC_SIZES.items())
def test_kronecker_sizes_of_the_spec_examples(K, expect):
    assert kronecker_sizes(K) == expect


@given(st.integers(1, 1 << 16))
def test_kronecker_right_factor_is_the_power_of_two_dividing_K_closest_to_sqrt_K(K):
    """n_l n_r = K, n_r a power of two dividing K, and no such power is strictly closer to √K
    (a tie would go to the smaller one)."""
    n_l, n_r = kronecker_sizes(K)
    assert n_l * n_r == K and n_r & (n_r - 1) == 0 and K % n_r == 0
    powers = [1 << i for i in range(17) if K % (1 << i) == 0]
    best = min(abs(p - math.sqrt(K)) for p in powers)
    assert abs(n_r - math.sqrt(K)) == best
    assert n_r == min(p for p in powers if abs(p - math.sqrt(K)) == best)


def test_kronecker_sizes_rejects_non_positive():
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            kronecker_sizes(bad)


@pytest.mark.parametrize("K", [2, 6, 12, 24, 40, 56, 96, 148, 192, 224, 256, 384, 448, 592])
def test_kronecker_of_factor_hadamards_is_the_site_hadamard(K):
    """R_{n_l} ⊗ R_{n_r} = R_K: same sign pattern (zeros included) and the same magnitude
    1/√m on the nonzeros, since m_l · m_r = m (the power-of-two blocks multiply)."""
    n_l, n_r = kronecker_sizes(K)
    R_l, R_r, R_K = hadamard(n_l), hadamard(n_r), hadamard(K)
    assert torch.equal(torch.kron(R_l.sign(), R_r.sign()), R_K.sign())
    assert largest_pow2_divisor(n_l) * n_r == largest_pow2_divisor(K)


def _hadamard_oracle(x: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x R_K and |x| |R_K| in float64, block by block: x (T, K) as (T, K/m, m) times H_m/√m."""
    m = largest_pow2_divisor(K)
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < m:
        H = torch.cat((torch.cat((H, H), 1), torch.cat((H, -H), 1)), 0)  # Sylvester
    xb = x.to(torch.float64).reshape(x.shape[0], K // m, m)  # (T, K/m, m)
    y = (xb @ H / math.sqrt(m)).reshape(x.shape)
    mag = (xb.abs().sum(-1, keepdim=True) / math.sqrt(m)).expand_as(xb).reshape(x.shape)
    return y, mag


def _hard_rows(K: int, seed: int) -> torch.Tensor:
    """Gaussian rows, one with a single huge outlier, one one-hot, one all-zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, K, generator=g)
    x[1, K // 3] = 1e4
    x[2] = 0
    x[2, K - 1] = -3.0
    x[3] = 0
    return x


@pytest.mark.parametrize("K", list(SPEC_SIZES))
def test_kronecker_application_is_x_times_the_site_hadamard_within_rounding(K):
    """kron_apply(x, R_{n_l}, R_{n_r}) equals x R_K to float32 rounding.

    Bound: the two matmuls are dot products of lengths n_r and n_l over entries rounded
    once, so |fl − x R| ≤ γ_{n_l+n_r+2} (|x| |R_K|) elementwise (|R_l| ⊗ |R_r| = |R_K|); the
    dense float32 x @ hadamard(K) obeys the same with γ_{K+1}; the float64 oracle's own error
    is below γ^{(64)}_{K+1} of the same quantity.
    """
    n_l, n_r = kronecker_sizes(K)
    x = _hard_rows(K, seed=K)
    y_kron = kron_apply(x, hadamard(n_l), hadamard(n_r)).to(torch.float64)
    y, mag = _hadamard_oracle(x, K)
    slack = gamma(K + 1, U64) * mag
    assert ((y_kron - y).abs() <= gamma(n_l + n_r + 2) * mag + slack).all()
    if K <= 4096:  # a dense K × K float32 matrix is affordable here
        y_dense = (x @ hadamard(K)).to(torch.float64)
        assert ((y_dense - y).abs() <= gamma(K + 1) * mag + slack).all()
        assert ((y_kron - y_dense).abs() <= (gamma(K + 1) + gamma(n_l + n_r + 2)) * mag).all()


@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_kron_apply_is_multiplication_by_the_kronecker_product(n_l, n_r, seed):
    """x (M_l ⊗ M_r) = vec(M_lᵀ X M_r) with X the row-major reshape (float64, dense oracle)."""
    g = torch.Generator().manual_seed(seed)
    M_l = torch.randn(n_l, n_l, generator=g, dtype=torch.float64)
    M_r = torch.randn(n_r, n_r, generator=g, dtype=torch.float64)
    x = torch.randn(3, 2, n_l * n_r, generator=g, dtype=torch.float64)
    dense = x @ torch.kron(M_l, M_r)
    got = kron_apply(x, M_l, M_r)
    scale = x.abs() @ torch.kron(M_l.abs(), M_r.abs())
    assert ((got - dense).abs() <= gamma(2 * (n_l * n_r + 2), U64) * scale).all()


@st.composite
def skew_matrices(draw):
    """Skew-symmetric A of size 1..12 with entries up to 10^±3 (I − A then ill-conditioned)."""
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = 10.0 ** draw(st.integers(-3, 3))
    M = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return skew(M * scale)


@given(skew_matrices())
def test_cayley_of_a_skew_matrix_is_orthogonal(A):
    """cay(A)ᵀ cay(A) = I for skew A, to rounding amplified by κ(I − A) (float64)."""
    assert torch.equal(A, -A.mT)
    Q = cayley(A)
    n = A.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    kappa = float(torch.linalg.cond(eye - A))
    tol = 50 * n * U64 * kappa ** 2
    assert (Q.mT @ Q - eye).abs().max() <= tol


@pytest.mark.parametrize("n", [1, 3, 8, 16, 24])
def test_cayley_of_zero_is_exactly_the_identity(n):
    assert torch.equal(cayley(torch.zeros(n, n)), torch.eye(n))


@pytest.mark.parametrize("kind", [None, "hadamard", "random"])
@pytest.mark.parametrize("n", [1, 4, 12, 16])
def test_factor_starts_exactly_at_its_rotation(kind, n):
    """A_U = A_V = 0, θ = 0 gives P = B and P⁻ᵀ = B bit for bit (SPEC §4.3d)."""
    B = factor_init(n, kind, seed=3)
    expect = {None: torch.eye(n), "hadamard": hadamard(n), "random": random_orthogonal(n, 3)}[kind]
    assert torch.equal(B, expect)
    Z, th = torch.zeros(n, n), torch.zeros(n)
    assert torch.equal(factor(B, Z, th, Z), B)
    assert torch.equal(factor_inv_t(B, Z, th, Z), B)


def _orthogonal64(n: int, g: torch.Generator) -> torch.Tensor:
    """An orthogonal matrix to float64 rounding (a float32 B is orthogonal only to float32
    rounding, which would swamp a float64 check)."""
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


@given(st.integers(1, 10), st.integers(0, 2**31 - 1))
def test_factor_inv_t_is_the_inverse_transpose(n, seed):
    """P (P⁻ᵀ)ᵀ = I with P⁻ᵀ obtained by θ → −θ (float64); the direct solve agrees."""
    g = torch.Generator().manual_seed(seed)
    B = _orthogonal64(n, g)
    A_U = skew(torch.randn(n, n, generator=g, dtype=torch.float64))
    A_V = skew(torch.randn(n, n, generator=g, dtype=torch.float64))
    theta = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2  # singular values e^±2
    P = factor(B, A_U, theta, A_V)
    P_it = factor_inv_t(B, A_U, theta, A_V)
    eye = torch.eye(n, dtype=torch.float64)
    kappa = float(torch.linalg.cond(P))
    assert (P @ P_it.mT - eye).abs().max() <= 1e3 * n * U64 * kappa
    assert (direct_inv_t(P) - P_it).abs().max() <= 1e3 * n * U64 * kappa ** 2


@given(st.sampled_from([4, 6, 12, 16, 24, 32]), st.integers(0, 2**31 - 1))
def test_transformed_linear_equals_the_linear(K, seed):
    """((x ⊘ ζ) P)(W diag(ζ) P⁻ᵀ)ᵀ = x Wᵀ in exact arithmetic; in float64 to rounding."""
    g = torch.Generator().manual_seed(seed)
    n_l, n_r = kronecker_sizes(K)
    f64 = dict(generator=g, dtype=torch.float64)
    facs = []
    for n in (n_l, n_r):
        args = (_orthogonal64(n, g), skew(torch.randn(n, n, **f64)), torch.randn(n, **f64),
                skew(torch.randn(n, n, **f64)))
        facs.append((factor(*args), factor_inv_t(*args)))
    (P_l, P_l_it), (P_r, P_r_it) = facs
    zeta = torch.exp(torch.randn(K, **f64))
    x, W = torch.randn(5, K, **f64), torch.randn(7, K, **f64)
    lhs = kron_apply(x / zeta, P_l, P_r) @ kron_apply(W * zeta, P_l_it, P_r_it).mT  # (5, 7)
    rhs = x @ W.mT
    kappa = float(torch.linalg.cond(P_l) * torch.linalg.cond(P_r))
    scale = float((x.abs().max() * W.abs().max()) * K)
    assert (lhs - rhs).abs().max() <= 1e3 * K * U64 * kappa * scale


def _transform(K=12, zeta=True):
    n_l, n_r = kronecker_sizes(K)
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(n, n, generator=g) + 3 * torch.eye(n) for n in (n_l, n_r)]
    its = [direct_inv_t(M.double()).float() for M in mats]
    z = torch.rand(K, generator=g) + 0.5 if zeta else None
    return KroneckerTransform(mats[0], mats[1], its[0], its[1], z)


def test_kronecker_transform_apply_pairs_with_apply_weight():
    """apply(x) @ apply_weight(W)ᵀ ≈ x Wᵀ (float32 transform, float64 comparison)."""
    T = _transform()
    g = torch.Generator().manual_seed(1)
    x, W = torch.randn(6, 12, generator=g), torch.randn(4, 12, generator=g)
    got = (T.apply(x).double() @ T.apply_weight(W).double().mT)
    assert torch.allclose(got, x.double() @ W.double().mT, rtol=0, atol=1e-3)
    assert T.apply(x.reshape(2, 3, 12)).shape == (2, 3, 12)


@pytest.mark.parametrize("zeta", [True, False])
def test_kronecker_transform_survives_json_bit_for_bit(zeta):
    T = _transform(zeta=zeta)
    d = json.loads(json.dumps(T.to_dict()))
    T2 = KroneckerTransform.from_dict(d)
    for name in ("P_l", "P_r", "P_l_inv_t", "P_r_inv_t", "zeta"):
        a, b = getattr(T, name), getattr(T2, name)
        assert (a is None and b is None) or torch.equal(a, b), name


def test_kronecker_transform_errors_are_named():
    with pytest.raises(ValueError, match="12 features but the factors are 3 × 3"):
        kron_apply(torch.zeros(2, 12), torch.eye(3), torch.eye(3))
    with pytest.raises(ValueError, match="zeta must be finite, positive"):
        KroneckerTransform(torch.eye(2), torch.eye(2), torch.eye(2), torch.eye(2), -torch.ones(4))
    with pytest.raises(ValueError, match="P_r must be a square"):
        KroneckerTransform(torch.eye(2), torch.ones(2, 3), torch.eye(2), torch.eye(2))
    with pytest.raises(ValueError, match="kind='kronecker'"):
        KroneckerTransform.from_dict({"P_l": []})
