"""QuantLinear (fairref/quant/linear.py): its two paths, the SPEC §1 bound between them, the
cached Ŵ, and the input-transform slot.

Legend: T tokens, K in_features, N out_features, g group size, G = K/g.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from fairref.quant.grid import QuantSpec, dequantize, fake_quantize, quantize
from fairref.quant.int4 import int4_matmul
from fairref.quant.linear import QuantLinear, quantize_linears, transform_from_dict
from fairref.quant.rotation import RotationSpec
from fairref.quant.transform import KroneckerTransform

U = 2.0**-24
# What a float32 product may add when its result underflows (gradual underflow:
# fl(x·y) = x·y(1 + δ) + η, |η| ≤ 2⁻¹⁵⁰, half the smallest float32 subnormal).
ETA32 = float(np.finfo(np.float32).smallest_subnormal) / 2


def gamma(n: int) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of n float32 roundings."""
    return n * U / (1 - n * U)


@st.composite
def layer_case(draw, grouped: bool):
    """A float linear (N, K) with bias off, an input (T, K) with a zero token and an outlier."""
    T, N = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    g = draw(st.sampled_from([2, 4, 8])) if grouped else None
    K = g * draw(st.integers(1, 6)) if grouped else draw(st.integers(1, 48))
    vals = st.floats(-100, 100, width=32)
    x = draw(hnp.arrays(np.float32, (T, K), elements=vals))
    W = draw(hnp.arrays(np.float32, (N, K), elements=vals))
    if draw(st.booleans()):
        x[0] = 0.0  # an all-zero token: s_a = 1, q_a = 0
    if draw(st.booleans()):
        x[:, draw(st.integers(0, K - 1))] *= 1e3  # an outlier feature
    bits_w, bits_a = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    w_spec = QuantSpec(bits=bits_w, granularity="group" if grouped else "channel", group_size=g,
                       scale_mode=draw(st.sampled_from(["restricted", "full"])))
    a_spec = QuantSpec(bits=bits_a, granularity="token", clip=draw(st.sampled_from([1.0, 0.8])))
    lin = nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
    return lin, torch.from_numpy(x), w_spec, a_spec


def _fake_vs_int_bound(ql: QuantLinear, x: torch.Tensor) -> np.ndarray:
    """Σ over groups of s_a·s_w,g·(γ_{G+1}|acc_g| + γ_{K+2}·Σ_{k∈g}|q_a,k·q_w,k|).

    Derivation (per channel, G = 1; SPEC §1): int path = fl(fl(acc·s_a)·s_w) =
    acc·s_a·s_w(1+δ₁)(1+δ₂), off by ≤ γ₂·s_a·s_w·|acc| from exact. Fake path: â_k = q_a,k·s_a(1+α_k),
    ŵ_k = q_w,k·s_w(1+β_k), and a float32 dot product of K terms in any order (BLAS) gives
    Σ â_k ŵ_k(1+θ_k) with |θ_k| ≤ γ_K, so it is off by ≤ γ_{K+2}·s_a·s_w·Σ|q_a,k·q_w,k|.
    The triangle inequality gives the bound. Per group the int path also sums G terms in
    float32 (G−1 more roundings on each term), hence γ_{G+1} in place of γ₂ — SPEC §1's
    "sum the per-group terms" with γ₂ would miss those roundings.

    Underflow (tiny x or W: products below float32's 1.2e-38) adds η ≤ ETA32 per product
    on top: â_k, ŵ_k and â_k·ŵ_k on the fake path (the first two then scaled by the other
    factor): η·Σ_k(|ŵ_k| + |â_k| + 1); fl(acc·s_a) then ·s_w,g on the int path:
    η·Σ_g(s_w,g + 1). Both to first order, times 1 + γ_{K+2}.
    """
    q_a, s_a, _ = quantize(x, ql.a_spec)
    qa = q_a.numpy().astype(np.int64)  # (T, K)
    qw = ql.q_w.numpy().astype(np.int64)  # (N, K)
    sa = s_a.numpy().astype(np.float64)  # (T, 1)
    sw = ql.s_w.numpy().astype(np.float64)  # (N, G)
    G = sw.shape[1]
    g = qa.shape[1] // G
    K = qa.shape[1]
    bound = np.zeros((qa.shape[0], qw.shape[0]))
    for gi in range(G):
        a_g, w_g = qa[:, gi * g:(gi + 1) * g], qw[:, gi * g:(gi + 1) * g]
        acc = np.abs(a_g @ w_g.T)
        abs_sum = np.abs(a_g) @ np.abs(w_g).T
        bound += sa * sw[:, gi][None, :] * (gamma(G + 1) * acc + gamma(K + 2) * abs_sum)
    a_hat = np.abs(qa) * sa  # (T, K) |â_k|
    w_hat = np.abs(qw) * np.repeat(sw, g, axis=1)  # (N, K) |ŵ_k|
    under = (a_hat.sum(1)[:, None] + w_hat.sum(1)[None, :] + K  # fake path, (T, N)
             + sw.sum(1)[None, :] + G)  # int path
    return bound + ETA32 * under * (1 + gamma(K + 2))


@given(layer_case(grouped=False))
def test_fake_path_within_float32_bound_of_int_path_per_channel(case):
    lin, x, w_spec, a_spec = case
    ql = QuantLinear.from_linear(lin, w_spec, a_spec)
    diff = (ql(x, path="int").double() - ql(x, path="fake").double()).abs().numpy()
    assert (diff <= _fake_vs_int_bound(ql, x)).all()


@given(layer_case(grouped=True))
def test_fake_path_within_float32_bound_of_int_path_per_group(case):
    lin, x, w_spec, a_spec = case
    ql = QuantLinear.from_linear(lin, w_spec, a_spec)
    diff = (ql(x, path="int").double() - ql(x, path="fake").double()).abs().numpy()
    assert (diff <= _fake_vs_int_bound(ql, x)).all()


@given(st.one_of(layer_case(grouped=False), layer_case(grouped=True)), st.booleans())
def test_int_path_equals_int4_matmul_on_same_operands_bit_for_bit(case, with_bias):
    """forward(path="int") is exactly int4_matmul(q_a, s_a, q_w, s_w) (+ bias, one add)."""
    lin, x, w_spec, a_spec = case
    bias = torch.linspace(-3, 3, lin.out_features) if with_bias else None
    W = lin.weight.detach()
    q_w, s_w, z_w = quantize(W, w_spec)
    ql = QuantLinear.from_quantized(q_w, s_w, z_w, w_spec, a_spec, bias=bias)
    q_a, s_a, _ = quantize(x, a_spec)
    ref = int4_matmul(q_a, s_a, q_w, s_w, group_size=w_spec.group_size, bits_a=a_spec.bits,
                      bits_w=w_spec.bits)
    if bias is not None:
        ref = ref + bias
    assert torch.equal(ql(x, path="int").view(torch.int32), ref.view(torch.int32))


@given(st.one_of(layer_case(grouped=False), layer_case(grouped=True)),
       st.sampled_from(["hadamard", "random"]), st.booleans())
def test_rotated_layer_is_fake_quant_of_x_R_times_dequant_of_W_R_bit_for_bit(case, kind, with_bias):
    """The fake path with a rotation is F.linear(fake_quant_a(x R), dequant(Q_w(W R)), b),
    rebuilt here from the same primitives (one RotationSpec.apply for x R and W R): the
    computation is pinned, so rtol = atol = 0."""
    lin, x, w_spec, a_spec = case
    K = lin.in_features
    if with_bias:
        lin.bias = torch.nn.Parameter(torch.linspace(-3, 3, lin.out_features))
    R = RotationSpec(kind, K, seed=3)
    ql = QuantLinear.from_linear(lin, w_spec, a_spec, transform=R)
    q, s, z = quantize(R.apply(lin.weight.detach()), w_spec)
    W_hat = dequantize(q, s, z, w_spec)
    ref = F.linear(fake_quantize(R.apply(x), a_spec), W_hat, lin.bias)
    assert torch.equal(ql.q_w, q)
    torch.testing.assert_close(ql.W_hat, W_hat, rtol=0, atol=0)
    torch.testing.assert_close(ql(x), ref.detach(), rtol=0, atol=0)


@given(st.one_of(layer_case(grouped=False), layer_case(grouped=True)), st.booleans())
def test_cached_W_hat_is_dequantize_of_q_w_and_follows_every_write(case, asym):
    """Ŵ is cached, never stale: equal bit for bit to dequantize(q_w) after construction,
    after an in-place write to q_w or s_w, after load_state_dict, and after replacing a
    buffer; the state dict holds only the integers, scales, zero points and bias."""
    lin, _, w_spec, a_spec = case
    w_spec = QuantSpec(bits=w_spec.bits, symmetric=not asym, granularity=w_spec.granularity,
                       group_size=w_spec.group_size)
    ql = QuantLinear.from_linear(lin, w_spec, a_spec)

    def fresh():
        z = None if w_spec.symmetric else ql.z_w
        return dequantize(ql.q_w, ql.s_w, z, w_spec)

    torch.testing.assert_close(ql.W_hat, fresh(), rtol=0, atol=0)
    assert set(ql.state_dict()) == {"q_w", "s_w", "z_w"}
    other = QuantLinear.from_linear(nn.Linear(lin.in_features, lin.out_features, bias=False),
                                    w_spec, a_spec)
    ql.load_state_dict(other.state_dict())  # in-place copies into the buffers
    torch.testing.assert_close(ql.W_hat, other.W_hat, rtol=0, atol=0)
    with torch.no_grad():
        ql.s_w.mul_(2.0)  # in place: the version counter moves
    torch.testing.assert_close(ql.W_hat, fresh(), rtol=0, atol=0)
    ql.q_w = torch.full_like(ql.q_w, w_spec.qmax)  # a new tensor in the buffer slot
    torch.testing.assert_close(ql.W_hat, fresh(), rtol=0, atol=0)


def test_fake_quantize_hot_path_equals_dequantize_of_quantize_bit_for_bit():
    """fake_quantize skips the int32 round trip and checks finiteness on the scale
    reductions; its values must still be dequantize(quantize(x)) exactly, on every
    granularity and both symmetries, with ties at .5, a zero group and an outlier."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 24, generator=g)
    x[0, 0] = (torch.arange(24) - 11.5) * 0.25  # .5 ties once s = 0.25 …
    x[0, 0, 0] = 7 * 0.25  # … which this amax pins at 4 bits
    x[1, :, :6] = 0.0  # zero groups
    x[2, 1, 5] = 1e6  # an outlier
    for sym in (True, False):
        for gran, gs in (("token", None), ("group", 6), ("tensor", None)):
            for bits in (2, 4, 8):
                spec = QuantSpec(bits=bits, symmetric=sym, granularity=gran, group_size=gs,
                                 clip=0.9 if bits == 8 else 1.0)
                q, s, z = quantize(x, spec)
                want = dequantize(q, s, z, spec)
                torch.testing.assert_close(fake_quantize(x, spec), want, rtol=0, atol=0)
    W = x[:, 0]  # (5, 24): per output channel
    q, s, z = quantize(W, QuantSpec(bits=4))
    torch.testing.assert_close(fake_quantize(W, QuantSpec(bits=4)),
                               dequantize(q, s, z, QuantSpec(bits=4)), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("sym", [True, False])
def test_fake_quantize_names_a_non_finite_input(bad, sym):
    """The finiteness check on the reductions still catches one bad entry in any unit."""
    x = torch.ones(4, 8)
    x[2, 5] = bad
    with pytest.raises(ValueError, match="acts contains 1 non-finite"):
        fake_quantize(x, QuantSpec(symmetric=sym, granularity="token"), name="acts")


def test_hadamard_rotation_lowers_w4a4_error_with_an_outlier_feature():
    """With one outlier input feature, Hadamard W4A4 output error is below plain W4A4 error
    (the purpose of rotation, SPEC §1). Seeded, K = 64."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g))
    x = torch.randn(256, 64, generator=g)
    x[:, 5] *= 50.0  # one outlier feature
    y = lin(x).detach()
    w4, a4 = QuantSpec(bits=4), QuantSpec(bits=4, granularity="token")
    err_plain = (QuantLinear.from_linear(lin, w4, a4)(x) - y).square().mean()
    R = RotationSpec("hadamard", 64)
    err_rot = (QuantLinear.from_linear(lin, w4, a4, transform=R)(x) - y).square().mean()
    assert err_rot < err_plain


def test_weight_only_layer_uses_float_activations():
    lin = nn.Linear(16, 4)
    ql = QuantLinear.from_linear(lin, QuantSpec(bits=8), None)
    x = torch.randn(3, 16)
    ref = torch.nn.functional.linear(x, dequantize(ql.q_w, ql.s_w, None, ql.w_spec), lin.bias)
    assert torch.equal(ql(x), ref)
    with pytest.raises(ValueError, match="needs a_spec"):
        ql(x, path="int")


def test_leading_batch_dims_are_kept():
    ql = QuantLinear.from_linear(nn.Linear(8, 5), QuantSpec(), QuantSpec(granularity="token"))
    x = torch.randn(2, 3, 8)
    for path in ("fake", "int"):
        y = ql(x, path=path)
        assert y.shape == (2, 3, 5)
        assert torch.equal(y[1], ql(x[1], path=path))  # per-token: rows are independent


def test_quantize_linears_replaces_only_named_linears():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4)))
    before = m[2][1]
    quantize_linears(m, ["0", "2.0"], QuantSpec(), QuantSpec(granularity="token"), "hadamard")
    assert isinstance(m[0], QuantLinear) and isinstance(m[2][0], QuantLinear)
    assert m[2][1] is before and m[0].transform == RotationSpec("hadamard", 8)
    assert m(torch.randn(2, 8)).shape == (2, 4)


def test_quantize_linears_rejects_non_linear_name():
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    with pytest.raises(ValueError, match="'1' is a ReLU"):
        quantize_linears(m, ["1"], QuantSpec(), None)


def test_from_quantized_rejects_wrong_scale_shape():
    with pytest.raises(ValueError, match=r"scale must have shape \(4, 2\)"):
        QuantLinear.from_quantized(torch.zeros(4, 8, dtype=torch.int32), torch.ones(4, 1), None,
                                   QuantSpec(granularity="group", group_size=4), None)


def test_unknown_path_raises():
    ql = QuantLinear.from_linear(nn.Linear(4, 2), QuantSpec(), QuantSpec(granularity="token"))
    with pytest.raises(ValueError, match="path must be 'fake' or 'int'"):
        ql(torch.randn(1, 4), path="fast")


def test_transform_description_round_trips_through_json():
    """A checkpoint stores the transform's to_dict(); rebuilding it gives the same spec and
    hence the same forward, bit for bit."""
    lin = nn.Linear(24, 5)
    R = RotationSpec("random", 24, seed=7)
    ql = QuantLinear.from_linear(lin, QuantSpec(), QuantSpec(granularity="token"), transform=R)
    d = json.loads(json.dumps(ql.transform.to_dict()))
    assert d == {"type": "rotation", "kind": "random", "dim": 24, "block": 24, "seed": 7}
    R2 = transform_from_dict(d)
    assert R2 == R
    ql2 = QuantLinear.from_quantized(ql.q_w, ql.s_w, None, ql.w_spec, ql.a_spec, lin.bias, R2)
    x = torch.randn(3, 24)
    assert torch.equal(ql(x), ql2(x))


def test_repr_names_a_learned_transform_by_its_shapes_not_its_values():
    """print(model) of a flat-calibrated model stays readable: each stored matrix of a
    Kronecker transform appears as its shape (it once printed every entry of P_l, P_r, …),
    while a rotation spec, which is small, appears whole."""
    lin = nn.Linear(64, 5)
    P = torch.full((8, 8), 0.123456)
    K = KroneckerTransform(P, P, P, P, torch.full((64,), 0.987654))
    text = repr(QuantLinear.from_linear(lin, QuantSpec(), QuantSpec(granularity="token"), transform=K))
    assert "0.123" not in text and "0.987" not in text
    assert "P_l=(8, 8)" in text and "P_r_inv_t=(8, 8)" in text and "zeta=(64,)" in text
    assert "n_l=8" in text and "kind='kronecker'" in text
    R = RotationSpec("random", 64, seed=7)
    text = repr(QuantLinear.from_linear(lin, QuantSpec(), None, transform=R))
    assert "kind='random', dim=64, block=64, seed=7" in text


def test_bad_transforms_are_named():
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="not a dense matrix"):
        QuantLinear.from_linear(lin, QuantSpec(), None, transform=torch.eye(8))
    with pytest.raises(ValueError, match="acts on 16 features, the linear has K=8"):
        QuantLinear.from_linear(lin, QuantSpec(), None, transform=RotationSpec("hadamard", 16))
    with pytest.raises(ValueError, match="unknown input transform type 'flat'"):
        transform_from_dict({"type": "flat"})
    with pytest.raises(ValueError, match="block=4 does not match"):
        transform_from_dict({"type": "rotation", "kind": "hadamard", "dim": 24, "block": 4,
                             "seed": 0})


@pytest.mark.parametrize("transform", [None, RotationSpec("hadamard", 16), RotationSpec("random", 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_never_writes_into_its_input(transform, dtype):
    """The fake path quantizes T(x) in place only when T(x) is a tensor of its own: the
    caller's x is left untouched, whatever the transform and dtype."""
    ql = QuantLinear.from_linear(nn.Linear(16, 4), QuantSpec(), QuantSpec(granularity="token"),
                                 transform=transform)
    x = torch.randn(3, 16).to(dtype)
    before = x.clone()
    ql(x)
    assert torch.equal(x, before)


def test_inplace_fake_quantize_writes_the_same_values_into_x():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 12, generator=g)
    for spec in (QuantSpec(bits=4, granularity="token"),
                 QuantSpec(bits=3, symmetric=False, granularity="group", group_size=4)):
        want = fake_quantize(x, spec)
        y = x.clone()
        out = fake_quantize(y, spec, inplace=True)
        assert out.data_ptr() == y.data_ptr()
        torch.testing.assert_close(y, want, rtol=0, atol=0)
