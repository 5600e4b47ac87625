"""The model interface that everything above the model layer depends on (SPEC §2).

Samplers, metrics, Stage I and Stage II see a masked diffusion LM only through
:class:`MaskedDiffusionLM`. Two architectures implement it (``llada.py``, ``dream.py``);
a test oracle can implement it with a few lines.

Legend: B batch, L sequence length, d hidden size, V vocabulary size.

Position convention. ``logits(x)[:, i]`` always predicts the token at position ``i``.
Dream's network predicts token ``i`` from the hidden state at ``i - 1``; its wrapper applies
that one-position shift inside ``logits`` and reports ``logit_shift == 1``, so nothing above
the model ever needs to know. Code that works on hidden states (Stage II weights, SPEC §3.4)
reads ``logit_shift`` to map a hidden-state row to the position it predicts:
hidden state ``i`` predicts position ``i + logit_shift``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class MaskedDiffusionLM(Protocol):
    """What a masked diffusion LM must offer (SPEC §2)."""

    #: id written at every position still to be generated
    mask_token_id: int
    #: 0 when hidden state i predicts token i (LLaDA); 1 when it predicts token i + 1 (Dream)
    logit_shift: int

    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``(B, L)`` int64 ids (and optional ``(B, L)`` bool mask, True = real token) →
        ``(B, L, V)`` float logits with ``logits[:, i]`` predicting the token at ``i``."""
        ...

    # --- the pieces Stage II needs to run the network one block at a time ---------------

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order."""
        ...

    def embed(self, input_ids: Tensor) -> Tensor:
        """``(B, L)`` → ``(B, L, d)`` hidden states entering block 0."""
        ...

    def run_block(
        self, index: int, h: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Run block ``index`` on hidden states ``h`` ``(B, L, d)`` → ``(B, L, d)``.

        Positions are 0..L-1 (RoPE); ``attention_mask`` as in :meth:`logits`."""
        ...

    def head(self, h: Tensor) -> Tensor:
        """Final norm + LM head on the last hidden states: ``(B, L, d)`` → ``(B, L, V)``,
        *unshifted* (row i is whatever hidden state i predicts)."""
        ...

    def linear_groups(self) -> Sequence[Sequence[str]]:
        """Names (relative to a block) of its linears, in the true-sequential groups of
        SPEC §4.2: (q, k, v) → (o) → (gate, up) → (down)."""
        ...

    def norm_sites(self) -> Sequence[tuple[str, Sequence[str]]]:
        """The RMSNorms of a block and the linears each one feeds, as (norm name, linear
        names) relative to the block: where SmoothQuant's ζ folds into a norm weight
        (SPEC §4.4). Linears fed by no norm (o, down) are not listed."""
        ...


def shift_head_logits(z: Tensor, logit_shift: int) -> Tensor:
    """Turn head outputs (row i from hidden state i) into logits indexed by predicted position.

    With ``logit_shift == 1`` (Dream) hidden state ``i`` predicts token ``i + 1``, so the
    logits for position ``i`` are row ``i - 1``; position 0 (never generated: it is always
    prompt/BOS) reuses row 0, as the public Dream loop does.
    ``z``: (B, L, V) → (B, L, V).
    """
    if logit_shift == 0:
        return z
    if logit_shift != 1:
        raise ValueError(f"logit_shift must be 0 or 1, got {logit_shift}")
    return torch.cat([z[:, :1], z[:, :-1]], dim=1)  # (B, L, V)
