"""The token-weighted Hessian H = 2 Σ w x xᵀ / Σ w and its streaming accumulator (SPEC §4.3a).

Legend: T tokens, K input features, N rows of W.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.quant import HessianAccumulator, QuantSpec, gptq_quantize, hessian

F64 = torch.float64


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 12))
def test_hessian_is_twice_the_weighted_second_moment(seed, T, K):
    """H = 2 Σ w x xᵀ / Σ w: compare with an explicit per-token loop in float64."""
    rng = np.random.default_rng(seed)
    X, w = rng.standard_normal((T, K)), rng.uniform(0, 1, T)
    w[rng.integers(T)] = 0.5  # never all zero
    ref = 2 * sum(w[n] * np.outer(X[n], X[n]) for n in range(T)) / w.sum()
    H = hessian(torch.tensor(X), torch.tensor(w)).numpy()
    # two float64 sums of T products each: |ΔH| ≤ 2·(T+3)·u64·2Σ w|x||x|/Σw, u64 = 2^-53
    bound = 4 * (T + 3) * 2.0**-53 * 2 * (w[:, None, None] * np.abs(X[:, :, None] * X[:, None, :])).sum(0) / w.sum()
    assert np.all(np.abs(H - ref) <= bound + 1e-300)
    assert np.array_equal(H, H.T)


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_streamed_hessian_equals_one_shot(seed, batch_sizes):
    """Batches streamed through the accumulator give the one-shot H. With integer inputs and
    dyadic weights every float64 sum is exact, so equality is bitwise."""
    rng = np.random.default_rng(seed)
    T, K = sum(batch_sizes), 5
    X = torch.tensor(rng.integers(-8, 9, (T, K)), dtype=F64)
    w = torch.tensor(rng.integers(0, 5, T) / 4.0)
    w[0] = 1.0
    acc, i = HessianAccumulator(K), 0
    for b in batch_sizes:
        acc.add(X[i:i + b], w[i:i + b])
        i += b
    assert torch.equal(acc.H, hessian(X, w))
    assert acc.n_tokens == T and acc.weight_sum == float(w.sum())


def test_hessian_accepts_leading_token_axes():
    """X (B, L, K) with weights (B, L) is the same as the flattened (B·L, K), (B·L,)."""
    X, w = torch.randn(3, 4, 6), torch.rand(3, 4)
    assert torch.equal(hessian(X, w), hessian(X.reshape(12, 6), w.reshape(12)))


@given(st.integers(0, 2**32 - 1))
def test_duplicated_token_equals_weight_two(seed):
    """Counting a token twice is the same as giving it weight 2: H equal (bitwise on integer
    data, where every sum is exact; to rounding otherwise), and then q equal where the two
    H are bit-identical (on Gaussian data they differ by summation order, which the CPU and
    thread count decide, so q equality there would be a machine-dependent verdict)."""
    rng = np.random.default_rng(seed)
    T, K, N = 20, 8, 6
    d = int(rng.integers(T))
    for X in (torch.tensor(rng.integers(-4, 5, (T, K)), dtype=F64), torch.tensor(rng.standard_normal((T, K)))):
        H_dup = hessian(torch.cat([X, X[d:d + 1]]))
        w = torch.ones(T, dtype=F64)
        w[d] = 2.0
        H_w2 = hessian(X, w)
        W = torch.tensor(rng.standard_normal((N, K)), dtype=torch.float32)
        if X.round().equal(X):
            assert torch.equal(H_dup, H_w2)
            # the same H in, so the same q out: pinned, whatever the machine
            r1, r2 = (gptq_quantize(W, H, QuantSpec(), dtype=F64) for H in (H_dup, H_w2))
            assert torch.equal(r1.q, r2.q)
        else:  # sums of T+1 vs T products: |ΔH| ≤ 2(T+1)·u64·max over the two
            torch.testing.assert_close(H_dup, H_w2, rtol=0, atol=4 * (T + 1) * 2.0**-53 * float(H_dup.abs().max()))


def test_zero_weight_tokens_are_ignored():
    """A token with weight 0 contributes nothing: H equals the H without that token, to
    float64 summation order (the zero term shifts where the others fall in the BLAS's
    blocking). Each side is S_ij·(2/Σw), symmetrized: S_ij a sum of ≤ T products (γ_T·Σ|terms|),
    Σw a sum of T positives (γ_T relative), then ≤ 4 more roundings, so each side is within
    γ_{2T+4}·2Σ w|x_i x_j|/Σw of the exact H_ij (γ_n = n·u64/(1 − n·u64)) and the two differ
    by at most twice that: a bound that cancellation in H_ij cannot break."""
    g = torch.Generator().manual_seed(0)
    X, w = torch.randn(10, 4, dtype=F64, generator=g), torch.rand(10, dtype=F64, generator=g) + 0.1
    w[3] = 0.0
    keep = torch.arange(10) != 3
    T, u = 10, 2.0**-53
    mag = 2 * (w[:, None, None] * (X[:, :, None] * X[:, None, :]).abs()).sum(0) / w.sum()
    bound = 2 * (2 * T + 4) * u / (1 - (2 * T + 4) * u) * mag  # (K, K)
    assert ((hessian(X, w) - hessian(X[keep], w[keep])).abs() <= bound).all()


@pytest.mark.parametrize("X, w, match", [
    (torch.tensor([[1.0, float("nan")]]), None, "X contains NaN"),
    (torch.tensor([[1.0, float("inf")]]), None, "X contains NaN or Inf"),
    (torch.ones(3, 2), torch.tensor([1.0, -1.0, 1.0]), "non-negative"),
    (torch.ones(3, 2), torch.zeros(3), "total token weight is zero"),
    (torch.ones(3, 2), torch.ones(4), "weights has shape"),
    (torch.ones(3, 2), torch.tensor([1.0, float("nan"), 1.0]), "weights contain NaN"),
    (torch.ones(3, 2, dtype=torch.int64), None, "floating-point"),
])
def test_hessian_rejects_bad_input(X, w, match):
    with pytest.raises(ValueError, match=match):
        hessian(X, w)


def test_accumulator_rejects_wrong_K_and_empty_read():
    acc = HessianAccumulator(4)
    with pytest.raises(ValueError, match="total token weight is zero"):
        acc.H
    with pytest.raises(ValueError, match="K=4"):
        acc.add(torch.ones(2, 5))
    with pytest.raises(ValueError, match="positive int"):
        HessianAccumulator(0)
