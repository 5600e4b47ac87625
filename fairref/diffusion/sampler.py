"""Pieces shared by the LLaDA and Dream samplers (SPEC §2, "Samplers").

The two loops live in ``llada_sampler.py`` and ``dream_sampler.py``; this file holds what
they have in common: checking the prompt, laying out the initial state (prompt followed
by masks), extending the padding mask over the generated region, and describing the
run's settings for the :class:`~fairref.diffusion.trace.Trace`.

Legend: B batch, P prompt length, G generated length, L = P + G.
"""

from __future__ import annotations

import torch
from torch import Tensor


def init_state(prompt_ids: Tensor, gen_length: int, mask_token_id: int,
               attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The state before the first step and the padding mask the model will see.

    ``prompt_ids`` (B, P) int, left-padded by the caller if prompts differ in length;
    ``attention_mask`` (B, P) (True/1 = real token) or None.
    Returns ``x`` (B, L) int64 = prompt then ``gen_length`` masks, and the mask extended
    with True over the generated region (the public loops append ones), as bool (B, L).
    """
    if not isinstance(prompt_ids, Tensor) or prompt_ids.dim() != 2:
        raise ValueError("prompt_ids must be a (B, P) integer tensor; add a batch dimension "
                         "with prompt_ids[None] for a single prompt")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    if (prompt_ids == mask_token_id).any():
        # The public loops would treat such a position as one to generate; the trace
        # (tau = −1 for the prompt) and every metric assume the prompt is fixed.
        raise ValueError(f"prompt_ids contains mask_token_id={mask_token_id}; remove it or "
                         "pad with another id (pad positions are excluded by attention_mask)")
    B, P = prompt_ids.shape
    x = torch.full((B, P + gen_length), mask_token_id, dtype=torch.int64,
                   device=prompt_ids.device)  # (B, L)
    x[:, :P] = prompt_ids
    if attention_mask is None:
        return x, None
    if tuple(attention_mask.shape) != (B, P):
        raise ValueError(f"attention_mask must have the prompt's shape {(B, P)}, got "
                         f"{tuple(attention_mask.shape)}")
    ones = torch.ones((B, gen_length), dtype=torch.bool, device=prompt_ids.device)
    return x, torch.cat([attention_mask.to(torch.bool), ones], dim=1)  # (B, L)


def generator_seed(generator: torch.Generator | None) -> int | None:
    """The seed a generator was created with (``initial_seed``), for the trace settings."""
    return None if generator is None else int(generator.initial_seed())


def check_positive_int(name: str, value) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
