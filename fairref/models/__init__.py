"""Masked diffusion LMs: the interface (SPEC §2) and the LLaDA / Dream architectures.

- :class:`MaskedDiffusionLM` — the protocol everything above the model layer uses.
- :class:`LLaDAModel`, :class:`DreamModel` — the two architectures, parameter names as in
  the public checkpoints; configs :class:`LLaDAConfig`, :class:`DreamConfig`.
- :func:`load` / :func:`save` — strict ``config.json`` + safetensors I/O (SPEC §7);
  :func:`build`, :func:`random_model` — fresh models for tests and training.
- :func:`load_tokenizer` — ``tokenizer.json`` with the special ids and the chat format;
  :func:`apply_chat_format`, :func:`encode_chat` — the instruct prompt layouts.
"""

from fairref.models.checkpoint import (
    build, check_state_dict, load, random_model, read_config, read_weights, save,
)
from fairref.models.config import DreamConfig, LLaDAConfig, config_from_dict
from fairref.models.dream import DreamModel
from fairref.models.llada import LLaDAModel
from fairref.models.protocol import MaskedDiffusionLM, shift_head_logits
from fairref.models.tokenizer import (
    PromptFormat, TextTokenizer, apply_chat_format, encode_chat, encode_prompts, load_tokenizer,
)

__all__ = [
    "MaskedDiffusionLM",
    "shift_head_logits",
    "LLaDAConfig",
    "DreamConfig",
    "config_from_dict",
    "LLaDAModel",
    "DreamModel",
    "build",
    "random_model",
    "load",
    "save",
    "read_config",
    "read_weights",
    "check_state_dict",
    "PromptFormat",
    "TextTokenizer",
    "encode_prompts",
    "load_tokenizer",
    "apply_chat_format",
    "encode_chat",
]
