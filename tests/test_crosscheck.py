"""Independent cross-checks against compressed-tensors and torchao (SPEC §1, scale_mode="full").

Conventions found in their installed source (compressed-tensors 0.20, torchao 0.18):

- both compute the symmetric scale as amax / ((qmax − qmin) / 2) = amax / (2^(b−1) − ½),
  our "full" mode, and both replace a zero scale by a tiny eps where we use s = 1 (q = 0
  either way), so all-zero rows are compared on q only;
- compressed-tensors quantizes as round(clamp(x / s)) — a true division, like ours, and
  clamp-then-round equals round-then-clamp for integer bounds, so q must agree everywhere;
- torchao quantizes as round(x · (1.0 / s)) — a reciprocal multiply. That differs from
  x / s exactly on near-ties, and a very common near-tie is the row's own −amax in "full"
  mode (−amax / s ≈ −7.5). So torchao's q must equal *ours* wherever the two roundings
  agree (decided here with NumPy), and equal round(x·fl(1/s)) where they do not; with
  power-of-two scales (1/s exact) the two must agree everywhere.
- compressed-tensors' "pack-quantized" int32 layout is what ``pack_int32_ct`` writes.
Legend: R rows, K columns, g group size.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fairref.quant.grid import QuantSpec, qparams, quantize, quantize_to_grid
from fairref.quant.int4 import pack_int32_ct, unpack_int32_ct

ct_helpers = pytest.importorskip("compressed_tensors.quantization.utils.helpers")
ct_forward = pytest.importorskip("compressed_tensors.quantization.lifecycle.forward")
ct_pack = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
ct_args = pytest.importorskip("compressed_tensors.quantization")
ao = pytest.importorskip("torchao.quantization.quant_primitives")

pytestmark = pytest.mark.crosscheck


@st.composite
def matrices(draw, K=16):
    """float32 (R, 16) with hard rows: a zero row, exact ties (k + ½)/4, an outlier column."""
    R = draw(st.integers(1, 6))
    x = draw(hnp.arrays(np.float32, (R, K), elements=st.floats(-1e3, 1e3, width=32)))
    if draw(st.booleans()):
        x[0] = (np.array(draw(st.lists(st.integers(-8, 7), min_size=K, max_size=K))) + 0.5) / 4
    if draw(st.booleans()):
        x[-1] = 0.0
    if draw(st.booleans()):
        x[:, draw(st.integers(0, K - 1))] *= 100
    return x


def _spec(bits, g):
    return QuantSpec(bits=bits, scale_mode="full", granularity="group" if g else "channel",
                     group_size=g)


@given(matrices(), st.integers(2, 8), st.sampled_from([None, 4, 8]))
def test_scales_and_q_equal_compressed_tensors(x, bits, g):
    xt = torch.from_numpy(x)
    args = ct_args.QuantizationArgs(num_bits=bits, symmetric=True,
                                    strategy="group" if g else "channel", group_size=g)
    xr = xt.reshape(x.shape[0], -1, g) if g else xt.unsqueeze(1)  # (R, G, m)
    s_ct, zp = ct_helpers.calculate_qparams(xr.amin(-1), xr.amax(-1), args)  # (R, G)
    q_ct = ct_forward.quantize(xt, s_ct, zp, args).to(torch.int32)
    q, s, _ = quantize(xt, _spec(bits, g))
    nonzero = xr.abs().amax(-1) > 0  # all-zero unit: their eps vs our 1 (both give q = 0)
    assert torch.equal(s[nonzero], s_ct[nonzero])
    assert torch.equal(q, q_ct)


def _ao(x, bits, g, scale=None):
    K = x.shape[1]
    block = (1, g or K)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    s, z = ao.choose_qparams_affine(x, ao.MappingType.SYMMETRIC, block, torch.int8,
                                    quant_min=qmin, quant_max=qmax)
    s = s if scale is None else scale
    q = ao.quantize_affine(x, block, s, z, torch.int8, qmin, qmax).to(torch.int32)
    return s.reshape(x.shape[0], -1), q


@given(matrices(), st.integers(2, 8), st.sampled_from([None, 4, 8]))
def test_scales_equal_torchao_and_q_differs_only_where_reciprocal_rounds_apart(x, bits, g):
    xt = torch.from_numpy(x)
    spec = _spec(bits, g)
    s_ao, q_ao = _ao(xt, bits, g)
    q, s, _ = quantize(xt, spec)
    nonzero = s_ao > torch.finfo(torch.float32).smallest_normal
    assert torch.equal(s[nonzero], s_ao[nonzero])
    s_el = np.repeat(s.numpy(), g, 1) if g else s.numpy()  # (R, K)
    lo, hi = spec.qmin, spec.qmax
    by_div = np.clip(np.round(x / s_el), lo, hi)  # ours: true division
    # torchao's recipe; a subnormal scale overflows 1/s (inf, nan for x = 0): those units
    # are the zero_unit ones excluded below, so the floating-point warning is expected
    with np.errstate(over="ignore", invalid="ignore"):
        by_rec = np.clip(np.round(x * (np.float32(1) / s_el)), lo, hi)
    same = by_div == by_rec
    zero_unit = np.repeat(~nonzero.numpy(), g or x.shape[1], 1)
    same &= ~zero_unit
    np.testing.assert_array_equal(q.numpy()[same], q_ao.numpy()[same])
    np.testing.assert_array_equal(q_ao.numpy()[~same & ~zero_unit], by_rec[~same & ~zero_unit])
    np.testing.assert_array_equal(q.numpy(), by_div)


def test_torchao_reciprocal_convention_really_differs_at_minus_amax():
    """The convention difference is real on ordinary data: over 256 seeded rows, some −amax
    elements round to −8 (ours, x/s = −7.5 exactly or beyond) but −7 in torchao."""
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    _, q_ao = _ao(x, 4, None)
    q, _, _ = quantize(x, _spec(4, None))
    assert (q != q_ao).any()


@given(matrices(), st.integers(2, 8))
def test_power_of_two_scales_make_torchao_agree_everywhere(x, bits):
    """With s = 2^e, fl(1/s) is exact, so x·(1/s) = x/s and the q must be identical."""
    xt = torch.from_numpy(x)
    spec = QuantSpec(bits=bits, scale_mode="full")
    s, _ = qparams(xt, spec)
    s2 = torch.exp2(torch.round(torch.log2(s)))  # (R, 1) nearest powers of two
    q = quantize_to_grid(xt, s2, torch.zeros_like(s2, dtype=torch.int32), spec)
    _, q_ao = _ao(xt, bits, None, scale=s2.reshape(-1))
    assert torch.equal(q, q_ao)


@given(st.integers(1, 4), st.integers(1, 70), st.integers(2, 8), st.data())
def test_ct_layout_round_trips_through_compressed_tensors_unpack(R, K, bits, data):
    q = data.draw(hnp.arrays(np.int64, (R, K),
                             elements=st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)))
    qt = torch.from_numpy(q)
    ours = pack_int32_ct(qt, bits=bits)
    assert torch.equal(ours, ct_pack.pack_to_int32(qt.to(torch.int8), bits))
    back = ct_pack.unpack_from_int32(ours, bits, torch.Size((R, K)))
    assert torch.equal(back.to(torch.int64), qt)
    assert torch.equal(unpack_int32_ct(ct_pack.pack_to_int32(qt.to(torch.int8), bits), K, bits),
                       qt.to(torch.int32))
