"""Masked diffusion LMs: the interface (SPEC §2) and the LLaDA / Dream architectures."""

from fairref.models.protocol import MaskedDiffusionLM, shift_head_logits

__all__ = ["MaskedDiffusionLM", "shift_head_logits"]
