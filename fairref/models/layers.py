"""Pieces shared by the LLaDA and Dream blocks: RMSNorm, RoPE, bidirectional attention (SPEC §2).

Checked against the public modeling code of both models (``modeling_llada.py``:
``RMSLayerNorm``, ``RotaryEmbedding``, ``LLaDABlock._scaled_dot_product_attention``;
``modeling_dream.py``: ``DreamRMSNorm``, ``DreamRotaryEmbedding``, ``DreamSdpaAttention``):

- RMSNorm normalises in float32, casts back to the input dtype, *then* multiplies by the
  weight (both public implementations use this order; it matters in bfloat16).
- RoPE uses the rotate-half convention: the head dimension is split into two halves
  (x1, x2) rotated by the same angle, ``x*cos + cat(-x2, x1)*sin``, with inverse
  frequencies ``theta^(-2j/hd)`` computed in float32 for positions 0..L-1.
- Attention is ``torch.nn.functional.scaled_dot_product_attention`` with its default
  scale ``1/sqrt(hd)`` and ``is_causal=False`` (as both public models call it). A padding
  mask becomes a boolean key mask, which SDPA applies as an additive −inf on the scores
  of padded *keys*; padded query rows still attend to the real tokens, so they stay finite.
  GQA repeats each key/value head ``n_heads / n_kv_heads`` times, consecutively
  (kv head j serves query heads j*r .. j*r+r-1), like ``repeat_kv`` / ``repeat_interleave``.

Legend: B batch, L sequence length, d hidden size, H query heads, Hk key/value heads,
hd head size (d / H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``weight * (x / sqrt(mean(x^2) + eps))`` with the normalisation in float32."""

    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis; ``x`` (..., d), ``weight`` (d,)."""
    # mean of squares in (at least) float32 so bf16 activations do not lose the scale;
    # a float64 model stays in float64 (the test oracles run there)
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    # back to the activation dtype before the weight, as both public models do
    return weight * x32.to(x.dtype)


def rope_cos_sin(
    L: int, hd: int, theta: float, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """``cos, sin`` of shape (L, hd) for positions 0..L-1 (rotate-half layout).

    Computed in float32 like both references for any model dtype of 32 bits or fewer; a
    float64 model (test oracles) gets float64 angles."""
    if hd % 2:
        raise ValueError(f"RoPE needs an even head size, got hd={hd}")
    ct = torch.promote_types(dtype, torch.float32)
    # inverse frequencies theta^(-2j/hd), j = 0..hd/2-1
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, device=device, dtype=ct) / hd))
    pos = torch.arange(L, device=device, dtype=ct)
    angles = torch.outer(pos, inv_freq)  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd): both halves share the angle
    return angles.cos(), angles.sin()


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) → (−x2, x1) on the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor, in_float32: bool) -> Tensor:
    """Rotate ``x`` (B, heads, L, hd) by the angles of positions 0..L-1.

    ``in_float32=True`` (LLaDA's ``rope_full_precision``) rotates in (at least) float32 and
    casts back; ``False`` (Dream's public code) casts cos/sin to ``x.dtype`` first and
    rotates in that dtype. In float32 and float64 the two paths give identical results;
    they differ only for bfloat16/float16 activations."""
    if in_float32:
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def key_padding_mask(attention_mask: Tensor | None, B: int, L: int) -> Tensor | None:
    """``(B, L)`` bool, True = real token → SDPA boolean mask (B, 1, 1, L) over keys.

    ``None`` (or a mask with no padding) means no mask at all, so an unpadded batch takes
    exactly the same code path with and without an all-True mask."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (B, L):
        raise ValueError(f"attention_mask must have shape (B, L) = {(B, L)}, "
                         f"got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        raise ValueError(f"attention_mask must be bool (True = real token), "
                         f"got {attention_mask.dtype}")
    if bool(attention_mask.all()):
        return None
    if not bool(attention_mask.any(dim=1).all()):
        raise ValueError("attention_mask has a row with no real token; every sequence needs "
                         "at least one True position")
    return attention_mask[:, None, None, :]  # (B, 1, 1, L)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Bidirectional attention. q (B, H, L, hd); k, v (B, Hk, L, hd) → (B, H, L, hd)."""
    H, Hk = q.shape[1], k.shape[1]
    if H != Hk:
        # GQA: each kv head serves H/Hk consecutive query heads
        k = k.repeat_interleave(H // Hk, dim=1)  # (B, H, L, hd)
        v = v.repeat_interleave(H // Hk, dim=1)  # (B, H, L, hd)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads*hd) → (B, heads, L, hd)."""
    B, L, _ = x.shape
    return x.view(B, L, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, L, hd) → (B, L, heads*hd)."""
    B, heads, L, hd = x.shape
    return x.transpose(1, 2).reshape(B, L, heads * hd)
