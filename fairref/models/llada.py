"""The LLaDA architecture (SPEC §2), parameter names identical to ``GSAI-ML/LLaDA-8B-*``.

Checked against the public ``modeling_llada.py`` (``LLaDALlamaBlock``, ``LLaDAModel``) with
the 8B ``config.json`` (block_type "llama", rms norms, rope_full_precision, no biases, no
q/k norm, no input-embedding scaling, no logit scaling, untied head). One block::

    x = h + attn_out(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))),  n = attn_norm(h)
    y = x + ff_out(silu(ff_proj(m)) * up_proj(m)),                              m = ff_norm(x)

``ff_proj`` is the SwiGLU *gate* and ``up_proj`` the linear branch. Attention is
bidirectional with scale 1/sqrt(hd). After the last block: ``logits = ff_out(ln_f(h))``,
where ``model.transformer.ff_out`` is the head. ``logit_shift = 0``: row i predicts token i.

Padding (SPEC §2): a padding mask hides padded *keys* and attention stays bidirectional.
The current public forward (Oct 2025 update) does the same with an additive
``finfo.min`` on padded keys, which gives the same softmax; earlier versions of it added
the mask to a *causal* bias (an artefact of the OLMo ancestry), which we do not copy.
Dropout is absent (inference only).

Legend: B batch, L sequence length, d d_model, V embedding_size, F mlp_hidden_size,
H heads, Hk kv heads, hd head size.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from fairref.models.base import DiffusionLM
from fairref.models.config import LLaDAConfig
from fairref.models.layers import (
    RMSNorm, apply_rope, attention, merge_heads, split_heads,
)


class LLaDABlock(nn.Module):
    """One ``LLaDALlamaBlock``: pre-norm attention, pre-norm SwiGLU, both residual."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.kv_heads
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.ffn_dim, bias=False)  # gate
        self.up_proj = nn.Linear(d, cfg.ffn_dim, bias=False)
        self.ff_out = nn.Linear(cfg.ffn_dim, d, bias=False)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """h (B, L, d) → (B, L, d); cos/sin (L, hd); mask as from ``key_padding_mask``."""
        n = self.attn_norm(h)  # (B, L, d)
        q = split_heads(self.q_proj(n), self.n_heads)  # (B, H, L, hd)
        k = split_heads(self.k_proj(n), self.n_kv_heads)  # (B, Hk, L, hd)
        v = split_heads(self.v_proj(n), self.n_kv_heads)  # (B, Hk, L, hd)
        # rope_full_precision: LLaDA rotates q and k in float32
        q, k = apply_rope(q, cos, sin, in_float32=True), apply_rope(k, cos, sin, in_float32=True)
        x = h + self.attn_out(merge_heads(attention(q, k, v, mask)))  # (B, L, d)
        m = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(m)) * self.up_proj(m))  # (B, L, d)


class _Body(nn.Module):
    """Holds ``transformer`` so that parameter names start with ``model.transformer.``."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab, cfg.d_model),
            blocks=nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
            ln_f=RMSNorm(cfg.d_model, cfg.rms_norm_eps),
            ff_out=nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False),
        ))


class LLaDAModel(DiffusionLM):
    """LLaDA as a :class:`~fairref.models.protocol.MaskedDiffusionLM`."""

    logit_shift: int = 0

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        if not isinstance(config, LLaDAConfig):
            raise ValueError(f"LLaDAModel needs an LLaDAConfig, got {type(config).__name__}")
        self.config = config
        self.mask_token_id = config.mask_token_id
        self.model = _Body(config)

    # --- protocol --------------------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def linear_groups(self) -> Sequence[Sequence[str]]:
        return (("q_proj", "k_proj", "v_proj"), ("attn_out",), ("ff_proj", "up_proj"),
                ("ff_out",))

    def norm_sites(self) -> Sequence[tuple[str, Sequence[str]]]:
        return (("attn_norm", ("q_proj", "k_proj", "v_proj")), ("ff_norm", ("ff_proj", "up_proj")))

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, L) → (B, L, d). No embedding scaling (``input_emb_norm`` false)."""
        return self.model.transformer.wte(input_ids)

    def final_norm_and_head(self) -> tuple[nn.Module, nn.Linear]:
        """The final RMSNorm (``.weight`` g, ``.eps`` ε) and the LM head W: ``head(h) =
        W · RMSNorm_g(h)``, the map the T2/T3 bounds lift through (SPEC §6)."""
        return self.model.transformer.ln_f, self.model.transformer.ff_out
