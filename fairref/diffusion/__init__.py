"""Diffusion sampling (SPEC §2): one entry point (``generate``) over the LLaDA and Dream
loops, their schedules, and traces."""

from fairref.diffusion.dream_sampler import dream_generate, sample_tokens
from fairref.diffusion.generate import (
    SamplerSettings,
    complete,
    generate,
    load_generation_config,
    sampler_family,
)
from fairref.diffusion.llada_sampler import add_gumbel_noise, llada_generate
from fairref.diffusion.schedule import (
    dream_timesteps,
    dream_transfer_count,
    llada_transfer_counts,
)
from fairref.diffusion.trace import Trace

__all__ = [
    "SamplerSettings",
    "complete",
    "generate",
    "load_generation_config",
    "sampler_family",
    "Trace",
    "add_gumbel_noise",
    "dream_generate",
    "dream_timesteps",
    "dream_transfer_count",
    "llada_generate",
    "llada_transfer_counts",
    "sample_tokens",
]
