"""Packing layouts and the exact integer matmul of SPEC §1 (fairref/quant/int4.py).

Oracles written here: a per-byte Python loop for the nibble layout, a Python big-integer
bit stream for the compressed-tensors layout, and an int64 NumPy matmul followed by the
pinned float32 epilogue in NumPy for ``int4_matmul`` (compared bit for bit).
Legend: T tokens, K inputs, N outputs, g group size, G = K/g.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fairref.quant.int4 import (
    exact_acc_f32,
    int4_matmul,
    pack_int4,
    pack_int32_ct,
    unpack_int4,
    unpack_int32_ct,
)


@st.composite
def grid_arrays(draw, bits=4, max_lead=2):
    """Integer arrays (..., K) on the signed b-bit grid; both grid ends are forced in."""
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=max_lead))
    K = draw(st.integers(1, 33))  # odd and even K, K < and > one int32 word
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = draw(hnp.arrays(np.int64, (*lead, K), elements=st.integers(lo, hi)))
    flat = q.reshape(-1)
    flat[0] = lo
    flat[-1] = hi if flat.size > 1 else flat[-1]
    return q


# --- nibble format -------------------------------------------------------------------------------


@given(grid_arrays())
def test_pack_unpack_int4_round_trips_every_shape(q):
    """unpack_int4(pack_int4(q), K) == q for any leading shape and any K, odd included."""
    qt = torch.from_numpy(q)
    packed = pack_int4(qt)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == (q.shape[-1] + 1) // 2
    assert torch.equal(unpack_int4(packed, q.shape[-1]), qt.to(torch.int32))


@given(grid_arrays())
def test_pack_int4_layout_low_nibble_first_twos_complement(q):
    """Byte j of a row = (q[2j] mod 16) | (q[2j+1] mod 16) << 4, zero high nibble if K odd."""
    packed = pack_int4(torch.from_numpy(q)).numpy().reshape(-1, (q.shape[-1] + 1) // 2)
    rows = q.reshape(-1, q.shape[-1])
    for r, row in enumerate(rows):
        for j in range(packed.shape[1]):
            lo = int(row[2 * j]) % 16
            hi = int(row[2 * j + 1]) % 16 if 2 * j + 1 < len(row) else 0
            assert packed[r, j] == lo | (hi << 4)


# --- compressed-tensors format -------------------------------------------------------------------


@st.composite
def ct_arrays(draw):
    bits = draw(st.integers(2, 8))
    return bits, draw(grid_arrays(bits=bits))


@given(ct_arrays())
def test_pack_unpack_ct_round_trips_every_shape(bq):
    bits, q = bq
    qt = torch.from_numpy(q)
    packed = pack_int32_ct(qt, bits=bits)
    assert packed.dtype == torch.int32
    assert torch.equal(unpack_int32_ct(packed, q.shape[-1], bits=bits), qt.to(torch.int32))


@given(ct_arrays())
def test_pack_ct_layout_is_offset_binary_lsb_first_bit_stream(bq):
    """Word w = bits [32w, 32w + 32) of Σ_i (q_i + 2^(b−1)) << (i·b), read as a signed int32."""
    bits, q = bq
    packed = pack_int32_ct(torch.from_numpy(q), bits=bits).numpy()
    rows, K = q.reshape(-1, q.shape[-1]), q.shape[-1]
    n_words = -(-K * bits // 32)
    for r, row in enumerate(rows):
        stream = sum((int(v) + 2 ** (bits - 1)) << (i * bits) for i, v in enumerate(row))
        for w in range(n_words):
            word = (stream >> (32 * w)) & 0xFFFFFFFF
            assert packed.reshape(-1, n_words)[r, w] == (word - 2**32 if word >= 2**31 else word)


# --- integer matmul ------------------------------------------------------------------------------


def oracle_matmul(a, s_a, w, s_w, g=None):
    """int64 NumPy accumulation, then the pinned epilogue with NumPy float32 operations."""
    a, w = a.astype(np.int64), w.astype(np.int64)
    if g is None:
        acc = a @ w.T  # (T, N) exact
        return (acc.astype(np.float32) * s_a) * s_w.T
    out = None
    for gi in range(a.shape[1] // g):  # ascending groups, one float32 add each
        acc = a[:, gi * g:(gi + 1) * g] @ w[:, gi * g:(gi + 1) * g].T
        term = (acc.astype(np.float32) * s_a) * s_w[:, gi][None, :]
        out = term if out is None else (out + term).astype(np.float32)
    return out


@st.composite
def matmul_operands(draw, grouped: bool):
    ba, bw = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    T, N = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    g = draw(st.sampled_from([1, 2, 3, 4, 8])) if grouped else None
    K = (g * draw(st.integers(1, 6))) if grouped else draw(st.integers(1, 40))
    qa, qw = 2 ** (ba - 1), 2 ** (bw - 1)
    a = draw(hnp.arrays(np.int64, (T, K), elements=st.integers(-qa, qa - 1)))
    w = draw(hnp.arrays(np.int64, (N, K), elements=st.integers(-qw, qw - 1)))
    if draw(st.booleans()):  # the accumulator at its largest magnitude
        a[0, :], w[0, :] = -qa, -qw
    if draw(st.booleans()):  # an all-zero token
        a[-1, :] = 0
    scales = st.floats(2.0**-20, 2.0**10, width=32)
    s_a = draw(hnp.arrays(np.float32, (T, 1), elements=scales))
    s_w = draw(hnp.arrays(np.float32, (N, 1 if g is None else K // g), elements=scales))
    return a, s_a, w, s_w, g, ba, bw


def _run(a, s_a, w, s_w, g, ba, bw):
    return int4_matmul(torch.from_numpy(a).to(torch.int8), torch.from_numpy(s_a),
                       torch.from_numpy(w).to(torch.int8), torch.from_numpy(s_w),
                       group_size=g, bits_a=ba, bits_w=bw).numpy()


@given(matmul_operands(grouped=False))
def test_int4_matmul_per_channel_equals_int64_oracle_bit_for_bit(ops):
    a, s_a, w, s_w, g, ba, bw = ops
    out = _run(*ops)
    np.testing.assert_array_equal(out.view(np.uint32), oracle_matmul(a, s_a, w, s_w).view(np.uint32))


@given(matmul_operands(grouped=True))
def test_int4_matmul_per_group_equals_int64_oracle_bit_for_bit(ops):
    a, s_a, w, s_w, g, ba, bw = ops
    out = _run(*ops)
    np.testing.assert_array_equal(out.view(np.uint32),
                                  oracle_matmul(a, s_a, w, s_w, g).view(np.uint32))


def test_int_fallback_is_exact_beyond_float32_integer_range():
    """W8A8 with K = 2048: |acc| reaches 2048·128·128 = 2^25 > 2^24, so the float32 path is
    not allowed; the integer fallback must still equal the int64 oracle exactly (and a plain
    float32 sum of these operands would not be exact: checked too, so the case is real)."""
    rng = np.random.default_rng(0)
    K = 2048
    a = np.full((2, K), -128, dtype=np.int64)
    a[1] = rng.integers(-128, 128, K)
    w = np.full((3, K), -128, dtype=np.int64)
    w[1, ::2] = 127
    w[2] = rng.integers(-128, 128, K)
    w[2, 0] = 1  # makes the exact sum odd and > 2^24 in magnitude: not a float32 value
    s_a, s_w = np.ones((2, 1), np.float32), np.ones((3, 1), np.float32)
    out = _run(a, s_a, w, s_w, None, 8, 8)
    np.testing.assert_array_equal(out.view(np.uint32), oracle_matmul(a, s_a, w, s_w).view(np.uint32))
    acc = a @ w.T
    assert np.abs(acc).max() > 2**24


@given(matmul_operands(grouped=False))
def test_float32_fast_path_and_integer_path_agree(ops):
    """The fast float32 BLAS accumulation (bound ≤ 2^24) equals the int64 path exactly."""
    a, _, w, _, _, _, _ = ops
    at, wt = torch.from_numpy(a), torch.from_numpy(w)
    fast = exact_acc_f32(at, wt, bound=0)  # forces float32 BLAS; valid: K·128·128 ≤ 2^24
    slow = exact_acc_f32(at, wt, bound=2**62)  # forces int64
    assert a.shape[1] * 128 * 128 <= 2**24 and torch.equal(fast, slow)


# --- bad input: one test per case ---------------------------------------------------------------


def _ok_operands(T=2, K=8, N=3):
    return (torch.zeros(T, K, dtype=torch.int8), torch.ones(T, 1), torch.zeros(N, K, dtype=torch.int8),
            torch.ones(N, 1))


def test_K_too_large_for_int32_accumulation_raises_naming_K():
    K = 2**17  # K·128·128 = 2^31: one too many
    a, s_a, w, s_w = _ok_operands(1, K, 1)
    with pytest.raises(ValueError, match=f"K={K} is too large"):
        int4_matmul(a, s_a, w, s_w, bits_a=8, bits_w=8)


def test_group_size_not_dividing_K_raises():
    a, s_a, w, _ = _ok_operands()
    with pytest.raises(ValueError, match="group_size=3 must be a positive divisor of K=8"):
        int4_matmul(a, s_a, w, torch.ones(3, 2), group_size=3)


def test_float_operand_dtype_raises():
    a, s_a, w, s_w = _ok_operands()
    with pytest.raises(ValueError, match="a_q must be an integer tensor"):
        int4_matmul(a.float(), s_a, w, s_w)


def test_operand_rank_raises():
    a, s_a, w, s_w = _ok_operands()
    with pytest.raises(ValueError, match="w_q must have 2 dims"):
        int4_matmul(a, s_a, w[None], s_w)


def test_scale_shape_raises():
    a, _, w, s_w = _ok_operands()
    with pytest.raises(ValueError, match=r"s_a must have shape \(2, 1\)"):
        int4_matmul(a, torch.ones(2, 2), w, s_w)


def test_scale_dtype_raises():
    a, s_a, w, s_w = _ok_operands()
    with pytest.raises(ValueError, match="s_w must be a float32"):
        int4_matmul(a, s_a, w, s_w.double())


def test_nan_scale_raises():
    a, s_a, w, s_w = _ok_operands()
    s_a[0, 0] = float("nan")
    with pytest.raises(ValueError, match="s_a contains non-finite"):
        int4_matmul(a, s_a, w, s_w)


@pytest.mark.parametrize("bits", [1, 9])
def test_bits_outside_2_to_8_raise(bits):
    a, s_a, w, s_w = _ok_operands()
    with pytest.raises(ValueError, match="bits_w must be an integer in 2..8"):
        int4_matmul(a, s_a, w, s_w, bits_w=bits)


def test_operand_outside_grid_raises():
    a, s_a, w, s_w = _ok_operands()
    a[0, 0] = 8
    with pytest.raises(ValueError, match="a_q has values outside the signed 4-bit grid"):
        int4_matmul(a, s_a, w, s_w)


def test_pack_value_outside_int4_raises():
    with pytest.raises(ValueError, match="q has values outside"):
        pack_int4(torch.tensor([[-9, 0]]))


def test_unpack_wrong_K_raises():
    with pytest.raises(ValueError, match="K=5 does not match"):
        unpack_int4(torch.zeros(2, 4, dtype=torch.uint8), 5)


def test_unpack_ct_wrong_dtype_raises():
    with pytest.raises(ValueError, match="packed must be an int32"):
        unpack_int32_ct(torch.zeros(2, 1, dtype=torch.int64), 8)
