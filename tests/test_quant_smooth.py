"""SmoothQuant factors ζ (SPEC §4.4): the identity they preserve and the balance they strike.

Legend: T tokens, K channels, N output channels.
"""

import pytest
import torch
from hypothesis import given, strategies as st

from fairref.models.layers import rms_norm
from fairref.quant.smooth import (ZETA_MIN, activation_absmax, fold_into_norm, fold_into_weight,
                                  smooth_activation, smooth_factors)

U32 = 2.0 ** -24


@st.composite
def site(draw):
    """Activations with outlier channels and weights with an all-zero column (K ≥ 2)."""
    K = draw(st.integers(2, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(7, K, generator=g) * torch.exp(3 * torch.randn(K, generator=g))  # (T, K)
    W = torch.randn(5, K, generator=g)  # (N, K)
    W[:, draw(st.integers(0, K - 1))] = 0  # a dead input channel
    return X, W


@given(site(), st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]))
def test_smoothing_leaves_the_linear_unchanged(xw, alpha):
    """(x ⊘ ζ)(W diag ζ)ᵀ = x Wᵀ: exact in real arithmetic; in float64 to rounding."""
    X, W = xw
    zeta = smooth_factors(activation_absmax(X), W, alpha).double()
    lhs = smooth_activation(X.double(), zeta) @ (W.double() * zeta).mT
    scale = X.double().abs() @ W.double().abs().mT  # (T, N)
    assert ((lhs - X.double() @ W.double().mT).abs() <= 4 * X.shape[1] * 2.0**-53 * scale).all()


@given(site())
def test_half_migration_equalizes_activation_and_weight_maxima(xw):
    """α = ½: max|X_j| / ζ_j = ζ_j max|W_j| = √(max|X_j| max|W_j|) on every live channel
    above the floor — the defining balance of SmoothQuant (to ζ's float32 rounding)."""
    X, W = xw
    a, w = activation_absmax(X).double(), W.double().abs().amax(0)
    zeta = smooth_factors(activation_absmax(X), W).double()
    live = (w > 0) & (zeta > ZETA_MIN)
    target = (a * w).sqrt()
    for side in (a / zeta, zeta * w):
        assert ((side - target).abs() <= 2 * U32 * target)[live].all()


def test_dead_weight_column_gets_one_and_silent_channel_gets_the_floor():
    X = torch.tensor([[0.0, 2.0, 3.0]])
    W = torch.tensor([[1.0, 0.0, 4.0]])
    zeta = smooth_factors(activation_absmax(X), W)
    assert zeta[1] == 1.0  # max|W_j| = 0: untouched
    assert zeta[0] == torch.tensor(ZETA_MIN, dtype=torch.float32)  # 0^½ / 1 → floor 1e-5
    assert zeta[2] == torch.tensor(3.0 ** 0.5 / 4.0 ** 0.5, dtype=torch.float32)


def test_zero_weight_rows_do_not_set_the_activation_maximum():
    X = torch.tensor([[1.0, -2.0], [100.0, 100.0], [-3.0, 0.5]])
    w = torch.tensor([1.0, 0.0, 2.0])
    assert torch.equal(activation_absmax(X, w), torch.tensor([3.0, 2.0]))
    assert torch.equal(activation_absmax(X), torch.tensor([100.0, 100.0]))


@given(site())
def test_folding_into_the_norm_divides_its_output_by_zeta(xw):
    """RMSNorm with weight g ⊘ ζ emits RMSNorm_g(x) ⊘ ζ, to float32 rounding (a few ulps)."""
    X, W = xw
    g = 1 + 0.1 * torch.randn(X.shape[1], generator=torch.Generator().manual_seed(0))
    zeta = smooth_factors(activation_absmax(X), W)
    folded = rms_norm(X, fold_into_norm(g, zeta), 1e-6).double()
    ref = rms_norm(X, g, 1e-6).double() / zeta.double()
    assert ((folded - ref).abs() <= 4 * U32 * ref.abs()).all()
    assert torch.equal(fold_into_weight(W, zeta), W * zeta)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="alpha"):
        smooth_factors(torch.ones(3), torch.ones(2, 3), alpha=1.5)
    with pytest.raises(ValueError, match=r"x_absmax must have shape \(K,\) = \(3,\)"):
        smooth_factors(torch.ones(4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="non-finite|NaN"):
        smooth_factors(torch.tensor([1.0, float("nan"), 1.0]), torch.ones(2, 3))
