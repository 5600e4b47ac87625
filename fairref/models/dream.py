"""The Dream architecture (SPEC §2), Qwen2 layout, names identical to ``Dream-org/Dream-v0-*``.

Checked against the public ``modeling_dream.py`` (``DreamDecoderLayer``,
``DreamSdpaAttention``, ``DreamMLP``, ``DreamBaseModel``, ``DreamModel``). One layer::

    x = h + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = input_layernorm(h)
    y = x + down_proj(silu(gate_proj(m)) * up_proj(m)),          m = post_attention_layernorm(x)

q/k/v projections carry a bias, ``o_proj`` and the MLP do not. GQA: ``num_key_value_heads``
kv heads, each shared by consecutive query heads (``repeat_kv``). Bidirectional attention
with scale 1/sqrt(hd). After the last layer: ``lm_head(norm(h))``. RoPE follows Dream's
public code: cos/sin computed in float32, cast to the activation dtype, rotation in that
dtype (identical to a float32 rotation when the model runs in float32).

The shift (SPEC §2): Dream's hidden state i predicts token i+1. :meth:`DreamModel.head`
returns the unshifted rows; :meth:`DreamModel.logits` applies
:func:`~fairref.models.protocol.shift_head_logits` so ``logits[:, i]`` predicts token i,
exactly as the public generation loop does with ``cat([z[:, :1], z[:, :-1]], 1)``.

Positions are 0..L-1 for every row. (The public loop, for a left-padded batch, counts
positions from the first real token; with right padding, or none, the two coincide.)

Legend: B batch, L sequence length, d hidden_size, V vocab_size, F intermediate_size,
H heads, Hk kv heads, hd head size.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from fairref.models.base import DiffusionLM
from fairref.models.config import DreamConfig
from fairref.models.layers import (
    RMSNorm, apply_rope, attention, merge_heads, split_heads,
)


class DreamAttention(nn.Module):
    """``self_attn``: biased q/k/v, unbiased o_proj, RoPE, GQA, bidirectional."""

    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.n_heads, self.n_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)

    def forward(self, n: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        q = split_heads(self.q_proj(n), self.n_heads)  # (B, H, L, hd)
        k = split_heads(self.k_proj(n), self.n_kv_heads)  # (B, Hk, L, hd)
        v = split_heads(self.v_proj(n), self.n_kv_heads)  # (B, Hk, L, hd)
        # Dream's apply_rotary_pos_emb works in the activation dtype
        q, k = apply_rope(q, cos, sin, in_float32=False), apply_rope(k, cos, sin, in_float32=False)
        return self.o_proj(merge_heads(attention(q, k, v, mask)))  # (B, L, d)


class DreamMLP(nn.Module):
    """``mlp``: ``down_proj(silu(gate_proj(m)) * up_proj(m))``, no biases."""

    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, m: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))


class DreamLayer(nn.Module):
    """One ``DreamDecoderLayer`` (run bidirectionally)."""

    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DreamAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = DreamMLP(cfg)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """h (B, L, d) → (B, L, d)."""
        x = h + self.self_attn(self.input_layernorm(h), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Body(nn.Module):
    """``DreamBaseModel``'s parameters: ``model.embed_tokens``, ``model.layers``, ``model.norm``."""

    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(DiffusionLM):
    """Dream as a :class:`~fairref.models.protocol.MaskedDiffusionLM` (``logit_shift = 1``)."""

    logit_shift: int = 1

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        if not isinstance(config, DreamConfig):
            raise ValueError(f"DreamModel needs a DreamConfig, got {type(config).__name__}")
        self.config = config
        self.mask_token_id = config.mask_token_id
        self.model = _Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # --- protocol --------------------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def linear_groups(self) -> Sequence[Sequence[str]]:
        return (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))

    def norm_sites(self) -> Sequence[tuple[str, Sequence[str]]]:
        return (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")))

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, L) → (B, L, d)."""
        return self.model.embed_tokens(input_ids)

    def final_norm_and_head(self) -> tuple[nn.Module, nn.Linear]:
        """The final RMSNorm (``.weight`` g, ``.eps`` ε) and the LM head W: ``head(h) =
        W · RMSNorm_g(h)``, the map the T2/T3 bounds lift through (SPEC §6)."""
        return self.model.norm, self.lm_head
