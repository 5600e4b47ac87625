"""Properties of the SPEC §1 quantize/dequantize pair (fairref/quant/grid.py).

Every property is checked on inputs built to contain the hard cases (exact ties at
(k + ½)·s, all-zero scale units, an outlier column, both signs of amax), and the pinned
float32 arithmetic is compared bit for bit with a NumPy oracle written here.
Legend: R rows, K columns, g group size.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.quant.grid import QuantSpec, dequantize, fake_quantize, qparams, quantize

U = 2.0**-24  # unit roundoff of float32

# --- strategies ---------------------------------------------------------------------------------


@st.composite
def specs(draw, symmetric=None, clip_one=False):
    """Any valid QuantSpec for an (R, K) weight, with K = 12 (so g ∈ {1, 2, 3, 4, 6, 12})."""
    sym = draw(st.booleans()) if symmetric is None else symmetric
    gran = draw(st.sampled_from(["channel", "group", "token", "tensor"]))
    g = draw(st.sampled_from([1, 2, 3, 4, 6, 12])) if gran == "group" else None
    clip = 1.0 if clip_one else draw(st.sampled_from([1.0, 0.95, 0.6, 0.3]))
    return QuantSpec(bits=draw(st.integers(2, 8)), symmetric=sym, granularity=gran,
                     group_size=g, scale_mode=draw(st.sampled_from(["restricted", "full"])),
                     clip=clip)


K = 12


@st.composite
def hard_matrices(draw, R_max=4):
    """float32 (R, 12) matrices mixing random values, exact ties, zero rows and an outlier."""
    R = draw(st.integers(1, R_max))
    mags = st.floats(2.0**-13, 1024.0, width=32)  # |x| ∈ [1.2e-4, 1e3], float32
    x = np.array(draw(st.lists(st.tuples(mags, st.booleans()), min_size=R * K, max_size=R * K)),
                 dtype=np.float64)
    x = np.where(x[:, 1] > 0, x[:, 0], -x[:, 0]).reshape(R, K)
    e = draw(st.integers(-6, 6))
    if draw(st.booleans()):  # a row of exact ties (k + ½)·2^e next to an amax of D·2^e
        ks = np.array(draw(st.lists(st.integers(-8, 7), min_size=K, max_size=K)))
        x[0] = (ks + 0.5) * 2.0**e
        x[0, draw(st.integers(0, K - 1))] = draw(st.sampled_from([7.0, 7.5, -7.5, 3.0])) * 2.0**e
    if draw(st.booleans()):  # an all-zero row (an all-zero group/token too)
        x[draw(st.integers(0, R - 1))] = 0.0
    if draw(st.booleans()):  # one outlier column
        x[:, draw(st.integers(0, K - 1))] *= 1e3
    if draw(st.booleans()):  # a zero group of 3 (zero group for g ∈ {1, 3})
        x[0, :3] = 0.0
    return x.astype(np.float32)


# --- the NumPy oracle (float32 ops in the pinned order) ------------------------------------------


def oracle_quantize(x: np.ndarray, spec: QuantSpec):
    """(q int64, s float32, xhat float32) computed with NumPy float32 scalars and arrays."""
    x = x.astype(np.float32)
    R, Kx = x.shape
    if spec.granularity == "tensor":
        units = x.reshape(1, -1)
    elif spec.granularity == "group":
        units = x.reshape(-1, spec.group_size)
    else:
        units = x
    c = np.float32(spec.clip)
    if spec.symmetric:
        amax = np.abs(units).max(axis=1, keepdims=True)
        s = (c * amax) / np.float32(spec.scale_divisor)
        s = np.where(s == 0, np.float32(1), s).astype(np.float32)
        z = np.zeros_like(s)
    else:
        lo = np.minimum(units.min(axis=1, keepdims=True), np.float32(0)) * c
        hi = np.maximum(units.max(axis=1, keepdims=True), np.float32(0)) * c
        s = (hi - lo) / np.float32(2**spec.bits - 1)
        s = np.where(s == 0, np.float32(1), s).astype(np.float32)
        z = np.clip(np.round(-lo / s), 0, 2**spec.bits - 1)
    q = np.clip(np.round(units / s) + z, spec.qmin, spec.qmax)  # true division
    xhat = ((q - z).astype(np.float32) * s).astype(np.float32)
    return q.astype(np.int64).reshape(R, Kx), s, xhat.reshape(R, Kx)


def bits_of(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


# --- properties ----------------------------------------------------------------------------------


@given(hard_matrices(), specs())
def test_quantize_equals_numpy_float32_oracle_bit_exactly(x, spec):
    """The torch implementation is the pinned float32 recipe: equal bits, rtol=0, atol=0."""
    q, s, z = quantize(torch.from_numpy(x), spec)
    q_o, s_o, xhat_o = oracle_quantize(x, spec)
    np.testing.assert_array_equal(q.numpy(), q_o)
    np.testing.assert_array_equal(bits_of(s.numpy()).ravel(), bits_of(s_o).ravel())
    xhat = dequantize(q, s, z, spec)
    np.testing.assert_array_equal(bits_of(xhat.numpy()), bits_of(xhat_o))


@given(hard_matrices(), specs())
def test_q_within_grid(x, spec):
    """Every integer lies in [qmin, qmax] = [−2^(b−1), 2^(b−1) − 1] (or [0, 2^b − 1])."""
    q, _, _ = quantize(torch.from_numpy(x), spec)
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax


@given(hard_matrices(), specs(symmetric=True, clip_one=True))
def test_dequant_error_at_most_half_step(x, spec):
    """With clip 1, every |x| ≤ amax lands within s/2 of its grid point (plus float32 slack).

    Exact arithmetic gives |x − q·s| ≤ s/2. In float32 (y = fl(x/s), x̂ = fl(q·s), D the
    scale divisor, |q| ≤ D + 1): |x/s − y| ≤ u·|x|/s ≤ u·D(1+2u); |y − q| ≤ ½ unclamped, and
    clamping only happens in "full" mode at |y| ≤ D(1+u)²/(1−u), i.e. |y − q| ≤ ½ + 4uD;
    |q·s − x̂| ≤ u(D+1)s. Summing: |x − x̂| ≤ s·(½ + 7u(D + 1)), the slack asserted below.
    """
    q, s, z = quantize(torch.from_numpy(x), spec)
    xhat = dequantize(q, s, z, spec).numpy().astype(np.float64)
    s_full = np.broadcast_to(_expand_np(s.numpy(), spec, x.shape), x.shape).astype(np.float64)
    D = spec.scale_divisor
    err = np.abs(x.astype(np.float64) - xhat)
    assert (err <= s_full * (0.5 + 7 * U * (D + 1))).all()


def _expand_np(s, spec, shape):
    if spec.granularity == "group":
        return np.repeat(s, spec.group_size, axis=-1)
    return s


@given(hard_matrices(), st.integers(2, 8), st.sampled_from(["channel", "token", "tensor"]))
def test_fake_quantize_idempotent_on_grid_restricted(x, bits, gran):
    """Restricted mode, clip 1: re-quantizing x̂ gives the same integers, and the same bits
    exactly whenever fl(fl(qmax·s)/qmax) = s (always for b = 2; ~10% of scales fail it at
    b = 4). Otherwise x̂ moves by at most 5u·|x̂|.

    Why: the element at amax maps to ±qmax (|amax/s − qmax| ≪ ½), so amax(x̂) = fl(qmax·s)
    and s' = fl(fl(qmax·s)/qmax) = s(1+δ₁)(1+δ₂); the integers cannot move (x̂/s' is within
    4u·|q| ≤ 512u of q), and fl(q·s') = fl(q·s)·(1 + ≤4u + O(u²)) < 5u relative.
    "Full" mode is *not* idempotent (amax(x̂) = qmax·s ≠ (qmax + ½)·s shrinks the scale), nor
    is any clip < 1, so neither is claimed.
    """
    spec = QuantSpec(bits=bits, granularity=gran)
    xt = torch.from_numpy(x)
    q1, s1, _ = quantize(xt, spec)
    xhat1 = fake_quantize(xt, spec)
    q2, s2, _ = quantize(xhat1, spec)
    xhat2 = fake_quantize(xhat1, spec)
    assert torch.equal(q1, q2)
    qm = np.float32(spec.qmax)
    s1n = s1.numpy()
    stable = ((s1n * qm) / qm == s1n) | (s1n == 1)  # NumPy float32 check of the condition
    stable_elem = np.broadcast_to(stable, x.shape)
    a, b = xhat1.numpy(), xhat2.numpy()
    np.testing.assert_array_equal(bits_of(a)[stable_elem], bits_of(b)[stable_elem])
    assert (np.abs(a.astype(np.float64) - b) <= 5 * U * np.abs(a)).all()
    if bits == 2:
        assert stable.all()  # qmax = 1: fl(fl(s)/1) = s


@given(hard_matrices(), specs(), st.integers(-20, 20))
def test_scaling_x_by_power_of_two_scales_s_and_keeps_q(x, spec, k):
    """x → 2^k·x gives s → 2^k·s and the same q: every float32 op in the recipe commutes
    with an exact power-of-two scaling while nothing over/underflows (|x| ∈ [2^-33,
    2^40] here, far from both)."""
    q1, s1, z1 = quantize(torch.from_numpy(x), spec)
    q2, s2, z2 = quantize(torch.from_numpy(x * np.float32(2.0**k)), spec)
    assert torch.equal(q1, q2) and torch.equal(z1, z2)
    nonzero = s1 != 1  # s = 1 marks an all-zero unit: it stays 1
    assert torch.equal(s2[nonzero], s1[nonzero] * 2.0**k)


def _near_tie(s: np.float32, qmax: int):
    """Search the float32 neighbours of (k + ½)·s for x with round(x/s) ≠ round(x·fl(1/s))."""
    r = np.float32(1) / s
    for k in range(qmax):
        x0 = np.float32((k + 0.5) * float(s))
        x = x0
        for _ in range(16):
            x = np.nextafter(x, np.float32(np.inf), dtype=np.float32)
            for cand in (x, np.float32(2 * x0 - x)):
                if 0 < cand < qmax * s and np.round(cand / s) != np.round(cand * r):
                    return cand
    return None


def test_near_tie_rounds_true_quotient_not_reciprocal_product():
    """On a constructed near-tie x/s and x·(1/s) round apart; the pinned x/s must win."""
    spec = QuantSpec(bits=4)
    found = 0
    for amax in np.linspace(1.0, 2.0, 200, dtype=np.float32):
        s = (np.float32(1.0) * amax) / np.float32(7)  # restricted scale of a row with amax
        xt = _near_tie(s, 7)
        if xt is None:
            continue
        q, s_t, _ = quantize(torch.tensor([[amax, xt, -xt]]), spec)
        assert s_t.item() == s
        assert q[0, 1].item() == np.round(xt / s) != np.round(xt * (np.float32(1) / s))
        assert q[0, 2].item() == -q[0, 1].item()
        found += 1
    assert found >= 5  # the construction really produces near-ties


def test_exact_ties_round_half_to_even():
    """x = (k + ½)·s exactly goes to the even neighbour, for both signs."""
    s0 = 0.25
    ks = np.arange(-7, 7)
    x = np.concatenate([[7 * s0], (ks + 0.5) * s0]).astype(np.float32)[None]  # amax = 7·s0
    q, s, _ = quantize(torch.from_numpy(x), QuantSpec(bits=4))
    assert s.item() == s0
    expect = np.where((ks % 2) == 0, ks, ks + 1)  # the even one of k, k + 1
    np.testing.assert_array_equal(q.numpy()[0, 1:], expect)


def test_all_zero_unit_gets_unit_scale_and_zero_q():
    """amax = 0 ⇒ s = 1, q = 0 (SPEC §1), never a 0/0."""
    x = torch.zeros(2, 8)
    x[1] = torch.arange(8.0)
    for gran, g in (("channel", None), ("group", 4), ("token", None)):
        q, s, _ = quantize(x, QuantSpec(granularity=gran, group_size=g))
        assert (s[0] == 1).all() and (q[0] == 0).all()
    q, s, z = quantize(torch.zeros(3, 4), QuantSpec(symmetric=False))
    assert (s == 1).all() and (q == 0).all() and (z == 0).all()


# --- bad input: one test per case ---------------------------------------------------------------


def test_nan_input_raises_naming_tensor():
    x = torch.ones(2, 4)
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match="weight.*non-finite"):
        quantize(x, QuantSpec(), name="weight")


def test_inf_input_raises_naming_tensor():
    x = torch.ones(2, 4)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        qparams(x, QuantSpec())


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0])
def test_bits_outside_2_to_8_raise(bits):
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=bits)


def test_group_size_not_dividing_K_raises():
    with pytest.raises(ValueError, match="group_size=5 does not divide.*K=8"):
        quantize(torch.ones(2, 8), QuantSpec(granularity="group", group_size=5))


def test_integer_dtype_input_raises():
    with pytest.raises(ValueError, match="floating-point"):
        quantize(torch.ones(2, 4, dtype=torch.int32), QuantSpec())


def test_channel_granularity_on_3d_tensor_raises():
    with pytest.raises(ValueError, match="2-D weight"):
        quantize(torch.ones(2, 3, 4), QuantSpec(granularity="channel"))


def test_asymmetric_dequantize_without_zero_raises():
    spec = QuantSpec(symmetric=False)
    q, s, _ = quantize(torch.randn(2, 4), spec)
    with pytest.raises(ValueError, match="zero"):
        dequantize(q, s, None, spec)
