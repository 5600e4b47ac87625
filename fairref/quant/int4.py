"""Packed int4 storage and the integer reference matmul with its epilogue (SPEC §1).

Two storage formats, each a symmetric pair of pure functions:

- ``pack_int4`` / ``unpack_int4``: the project's own format. Two's-complement nibbles in
  uint8 along the last axis K: element 2j in the low nibble, 2j+1 in the high nibble; odd
  K is padded with a zero nibble; unpacking sign-extends.
- ``pack_int32_ct`` / ``unpack_int32_ct``: the compressed-tensors "pack-quantized" layout.
  Offset-binary values u = q + 2^(b−1), bit-packed densely along K into int32 words, value
  i occupying bits [i·b, i·b + b) of the little-endian bit stream (for b = 4: eight values
  per word, least significant nibble first). The stream is padded with zero bits to a whole
  word (ceil(K·b/32) words). Checked against compressed-tensors' ``pack_to_int32`` /
  ``unpack_from_int32`` (tests/test_crosscheck.py).

``int4_matmul`` is the reference output of a quantized linear:
acc = A_q · W_qᵀ exactly (an int32 value), then the pinned float32 epilogue
``out = (float32(acc) · s_a) · s_wᵀ`` (per channel) or
``out = Σ_g (float32(acc_g) · s_a) · s_w[:, g]`` summed in ascending g (per group).

Legend: T tokens, K input features, N output channels, g group size, G = K/g groups.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

#: Largest integer magnitude up to which every integer is exactly representable in float32.
F32_EXACT_INT = 2**24


# --- checks ------------------------------------------------------------------------------------


def _check_bits(bits: int, name: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an integer in 2..8, got {bits!r}")


def _check_int_tensor(q: Tensor, name: str, ndim: int | None = None) -> None:
    if not isinstance(q, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(q).__name__}")
    if q.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must be an integer tensor (int8/16/32/64), got dtype {q.dtype}")
    if ndim is not None and q.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(q.shape)}")
    if ndim is None and q.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dim (the packed axis K), got a scalar")


def _check_range(q: Tensor, bits: int, name: str) -> None:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
        raise ValueError(
            f"{name} has values outside the signed {bits}-bit grid [{lo}, {hi}] "
            f"(min {int(q.min())}, max {int(q.max())}); quantize it with bits={bits} first"
        )


def _check_scale(s: Tensor, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(s, Tensor) or s.dtype != torch.float32:
        got = s.dtype if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"{name} must be a float32 tensor, got {got}")
    if tuple(s.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


# --- the project's nibble format -----------------------------------------------------------------


def pack_int4(q: Tensor) -> Tensor:
    """Pack signed 4-bit values (..., K) into uint8 (..., ceil(K/2)) (SPEC §1)."""
    _check_int_tensor(q, "q")
    _check_range(q, 4, "q")
    K = q.shape[-1]
    q = q.to(torch.int32)
    if K % 2:  # odd K: one zero nibble of padding at the end of the last axis
        q = torch.nn.functional.pad(q, (0, 1))
    lo = q[..., 0::2] & 0xF  # (..., ceil(K/2)): element 2j, two's complement nibble
    hi = q[..., 1::2] & 0xF  # (..., ceil(K/2)): element 2j+1
    return (lo | (hi << 4)).to(torch.uint8)


def unpack_int4(packed: Tensor, K: int) -> Tensor:
    """Inverse of ``pack_int4``: uint8 (..., ceil(K/2)) → int32 (..., K), sign-extended."""
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, Tensor) else type(packed).__name__
        raise ValueError(f"packed must be a uint8 tensor, got {got}")
    if packed.ndim < 1:
        raise ValueError("packed must have at least 1 dim (the packed axis), got a scalar")
    if isinstance(K, bool) or not isinstance(K, int) or K < 0 or packed.shape[-1] != (K + 1) // 2:
        raise ValueError(
            f"K={K!r} does not match the packed last dim {packed.shape[-1]} "
            "(expected ceil(K/2) bytes); pass the original length of the last axis"
        )
    p = packed.to(torch.int32)
    lo, hi = p & 0xF, p >> 4  # (..., ceil(K/2)) unsigned nibbles
    if K % 2 and packed.shape[-1] and bool((hi[..., -1] != 0).any()):
        raise ValueError("packed: the padding nibble of odd K must be zero (corrupt data?)")
    q = torch.stack((lo, hi), dim=-1).flatten(-2)[..., :K]  # (..., K)
    return torch.where(q >= 8, q - 16, q)  # sign-extend the 4-bit two's complement


# --- the compressed-tensors pack-quantized format ------------------------------------------------


def pack_int32_ct(q: Tensor, bits: int = 4) -> Tensor:
    """Pack signed b-bit values (..., K) into int32 (..., ceil(K·b/32)), compressed-tensors layout.

    Offset-binary u = q + 2^(b−1); value i fills bits [i·b, i·b + b) of the little-endian bit
    stream of each row; zero bits pad the stream to a whole word.
    """
    _check_bits(bits, "bits")
    _check_int_tensor(q, "q")
    _check_range(q, bits, "q")
    K = q.shape[-1]
    n_words = math.ceil(K * bits / 32)
    u = q.to(torch.int64) + 2 ** (bits - 1)  # (..., K) offset-binary, in [0, 2^b)
    j = torch.arange(bits, dtype=torch.int64)
    stream = (u.unsqueeze(-1) >> j) & 1  # (..., K, b): bit j of value i, LSB first
    stream = stream.flatten(-2)  # (..., K·b)
    stream = torch.nn.functional.pad(stream, (0, 32 * n_words - K * bits))  # zero bits
    stream = stream.reshape(*q.shape[:-1], n_words, 32)  # (..., W, 32)
    words = (stream << torch.arange(32, dtype=torch.int64)).sum(-1)  # (..., W) in [0, 2^32)
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret as int32
    return words.to(torch.int32)


def unpack_int32_ct(packed: Tensor, K: int, bits: int = 4) -> Tensor:
    """Inverse of ``pack_int32_ct``: int32 (..., ceil(K·b/32)) → int32 (..., K)."""
    _check_bits(bits, "bits")
    if not isinstance(packed, Tensor) or packed.dtype != torch.int32:
        got = packed.dtype if isinstance(packed, Tensor) else type(packed).__name__
        raise ValueError(f"packed must be an int32 tensor, got {got}")
    if packed.ndim < 1:
        raise ValueError("packed must have at least 1 dim (the packed axis), got a scalar")
    n_words = math.ceil(K * bits / 32) if isinstance(K, int) and K >= 0 else -1
    if isinstance(K, bool) or packed.shape[-1] != n_words:
        raise ValueError(
            f"K={K!r} does not match the packed last dim {packed.shape[-1]} (expected "
            f"ceil(K·{bits}/32) words); pass the original length of the last axis"
        )
    words = packed.to(torch.int64) & 0xFFFFFFFF  # (..., W) the unsigned 32-bit pattern
    stream = (words.unsqueeze(-1) >> torch.arange(32, dtype=torch.int64)) & 1  # (..., W, 32)
    stream = stream.flatten(-2)[..., : K * bits]  # (..., K·b)
    stream = stream.reshape(*packed.shape[:-1], K, bits)  # (..., K, b)
    u = (stream << torch.arange(bits, dtype=torch.int64)).sum(-1)  # (..., K)
    return (u - 2 ** (bits - 1)).to(torch.int32)


# --- integer matmul --------------------------------------------------------------------------------


def exact_acc_f32(a: Tensor, w: Tensor, bound: int) -> Tensor:
    """float32(A·Wᵀ) for (..., T, k) × (..., N, k) → (..., T, N), the sum taken exactly.

    Fast path, float32 BLAS, taken only when ``bound`` (≥ k·max|a|·max|w|) ≤ 2^24 and the
    float32 matmul precision is "highest" (no TF32/bf16 shortcuts). Why it is then exact:
    each product a_k·w_k is an integer of magnitude ≤ max|a|·max|w|, and every partial sum
    that any summation order (BLAS blocking, FMA, vector lanes) can form is a sum of a
    subset of these products, hence an integer of magnitude ≤ k·max|a|·max|w| ≤ 2^24.
    All integers of magnitude ≤ 2^24 are representable in float32, and an IEEE operation
    (add, multiply or fused multiply-add) whose exact result is representable returns that
    result. By induction over the operations every intermediate is the exact integer, so
    the output is exactly Σ_k a_k·w_k (= float32(acc), no rounding) whatever order BLAS uses.
    Otherwise: the exact integer matmul (int64; the caller has checked that |acc| < 2^31,
    so it equals the int32 accumulator), then float32(acc) rounded once, as pinned.
    """
    if bound <= F32_EXACT_INT and torch.get_float32_matmul_precision() == "highest":
        acc = torch.matmul(a.to(torch.float32), w.to(torch.float32).transpose(-1, -2))
        # The one float artefact: a sum whose terms are all −0 (0·(−w)) is −0, but
        # float32(0) is +0. x + (+0) maps −0 to +0 and leaves every other value unchanged.
        return acc.add_(0.0)
    acc = torch.matmul(a.to(torch.int64), w.to(torch.int64).transpose(-1, -2))
    return acc.to(torch.int32).to(torch.float32)


def int4_matmul(a_q: Tensor, s_a: Tensor, w_q: Tensor, s_w: Tensor,
                group_size: int | None = None, bits_a: int = 4, bits_w: int = 4) -> Tensor:
    """The reference integer matmul of a quantized linear (SPEC §1) → float32 (T, N).

    a_q (T, K) int, s_a (T, 1) float32 per token; w_q (N, K) int; s_w (N, 1) per channel
    or (N, K/g) per group with ``group_size=g``. Bits b_a, b_w ∈ 2..8 (the name says int4;
    every width up to 8 works while the int32 precondition K·2^(b_w−1)·2^(b_a−1) < 2^31
    holds). Per channel: out = (float32(acc) · s_a) · s_wᵀ; per group:
    out = Σ_g (float32(acc_g) · s_a) · s_w[:, g], g ascending, all float32.
    """
    _check_bits(bits_a, "bits_a")
    _check_bits(bits_w, "bits_w")
    _check_int_tensor(a_q, "a_q", ndim=2)
    _check_int_tensor(w_q, "w_q", ndim=2)
    T, K = a_q.shape
    N = w_q.shape[0]
    if w_q.shape[1] != K:
        raise ValueError(f"w_q must be (N, K) with K={K} matching a_q (T, K), got {tuple(w_q.shape)}")
    # The int32 accumulator must not overflow: |acc| ≤ K·2^(b_w−1)·2^(b_a−1).
    if K * 2 ** (bits_w - 1) * 2 ** (bits_a - 1) >= 2**31:
        raise ValueError(
            f"K={K} is too large for exact int32 accumulation at bits_a={bits_a}, "
            f"bits_w={bits_w} (needs K·2^(b_w−1)·2^(b_a−1) < 2^31); split K into chunks"
        )
    _check_range(a_q, bits_a, "a_q")
    _check_range(w_q, bits_w, "w_q")
    _check_scale(s_a, "s_a", (T, 1))
    if group_size is None:
        _check_scale(s_w, "s_w", (N, 1))
        g, G = K, 1
    else:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
                or K % group_size:
            raise ValueError(f"group_size={group_size!r} must be a positive divisor of K={K}")
        g, G = group_size, K // group_size
        _check_scale(s_w, "s_w", (N, G))
    amax_a = int(a_q.abs().max()) if a_q.numel() else 0
    amax_w = int(w_q.abs().max()) if w_q.numel() else 0
    bound = g * amax_a * amax_w  # ≥ every |partial sum| of one group's dot product

    if G == 1:
        acc = exact_acc_f32(a_q, w_q, bound)  # (T, N) float32(acc), exact
        return (acc * s_a) * s_w.T  # the pinned epilogue order
    a_g = a_q.reshape(T, G, g).transpose(0, 1)  # (G, T, g)
    w_g = w_q.reshape(N, G, g).transpose(0, 1)  # (G, N, g)
    acc = exact_acc_f32(a_g, w_g, bound)  # (G, T, N) float32(acc_g), one exact sum per group
    out = (acc[0] * s_a) * s_w[:, 0]  # (T, N): group 0 starts the sum
    for gi in range(1, G):  # ascending g, one float32 add per group
        out = out + (acc[gi] * s_a) * s_w[:, gi]
    return out
