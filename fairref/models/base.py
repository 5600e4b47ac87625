"""What LLaDA and Dream share above their blocks: the protocol plumbing (SPEC §2).

A subclass sets ``config`` (with ``head_dim`` and ``rope_theta``), ``mask_token_id``,
``logit_shift``, and defines ``blocks``, ``embed``, ``final_norm_and_head`` and
``linear_groups``; this class runs blocks with the right RoPE angles and padding mask and
turns the last hidden state into position-indexed logits.

Legend: B batch, L sequence length, d hidden size, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fairref.models.layers import key_padding_mask, rope_cos_sin
from fairref.models.protocol import shift_head_logits


def check_ids(input_ids: Tensor) -> None:
    """``input_ids`` must be a (B, L) integer tensor."""
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be a (B, L) integer tensor, got shape "
                         f"{tuple(input_ids.shape)} dtype {input_ids.dtype}")


class DiffusionLM(nn.Module):
    """Shared implementation of :class:`~fairref.models.protocol.MaskedDiffusionLM`."""

    logit_shift: int = 0

    def _rope(self, L: int, h: Tensor) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(L, self.config.head_dim, self.config.rope_theta, h.device, h.dtype)

    def run_block(self, index: int, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Block ``index`` on hidden states h (B, L, d) at positions 0..L-1 → (B, L, d)."""
        B, L, _ = h.shape
        cos, sin = self._rope(L, h)
        return self.blocks[index](h, cos, sin, key_padding_mask(attention_mask, B, L))

    def head(self, h: Tensor) -> Tensor:
        """Final norm + LM head, (B, L, d) → (B, L, V), *unshifted*."""
        norm, lm_head = self.final_norm_and_head()
        return lm_head(norm(h))

    def forward_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None
                       ) -> list[Tensor]:
        """The N+1 hidden states: those entering blocks 0..N-1, then the last block's output."""
        check_ids(input_ids)
        h = self.embed(input_ids)  # (B, L, d)
        B, L, _ = h.shape
        cos, sin = self._rope(L, h)  # computed once for all blocks
        mask = key_padding_mask(attention_mask, B, L)
        states = [h]
        for block in self.blocks:
            h = block(h, cos, sin, mask)
            states.append(h)
        return states

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, L) → (B, L, V) with ``logits[:, i]`` predicting token i (shift applied)."""
        z = self.head(self.forward_hidden(input_ids, attention_mask)[-1])  # (B, L, V)
        return shift_head_logits(z, self.logit_shift)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.logits(input_ids, attention_mask)
