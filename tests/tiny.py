"""Tiny LLaDA / Dream configs shared by the tests.

``tiny_raw`` keeps the *published* config.json key set (tests/models/*.config.json) with
tiny sizes, for the loader and architecture tests; ``tiny_config`` builds a bare config for
tests that only need a random model of either architecture.
"""

import json
from pathlib import Path

from fairref.models import DreamConfig, LLaDAConfig

DATA = Path(__file__).parent / "models"
# Tiny sizes written into the real files' key sets (everything else stays as published).
LLADA_TINY = dict(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=48,
                  vocab_size=40, embedding_size=48, mask_token_id=39, eos_token_id=38,
                  pad_token_id=38, max_sequence_length=64)
DREAM_TINY = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=48, mask_token_id=47,
                  bos_token_id=46, eos_token_id=46, pad_token_id=46, max_position_embeddings=64)


def tiny_raw(arch: str) -> dict:
    """The published config.json of ``arch`` with the tiny sizes above."""
    name, sizes = {"llada": ("llada-8b-instruct.config.json", LLADA_TINY),
                   "dream": ("dream-v0-instruct-7b.config.json", DREAM_TINY)}[arch]
    return {**json.loads((DATA / name).read_text()), **sizes}


def tiny_config(arch: str, V: int, mask: int, eos: int, pad: int, bos: int | None = None,
                L_max: int = 64):
    """d = 32, 2 blocks, 4 heads (Dream: 2 kv heads, so GQA is exercised), SwiGLU 48."""
    if arch == "llada":
        return LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=48,
                           vocab_size=V, embedding_size=V, mask_token_id=mask,
                           eos_token_id=eos, pad_token_id=pad, max_sequence_length=L_max)
    if arch == "dream":
        return DreamConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                           num_key_value_heads=2, num_hidden_layers=2, vocab_size=V,
                           max_position_embeddings=L_max, mask_token_id=mask,
                           bos_token_id=eos if bos is None else bos, eos_token_id=eos,
                           pad_token_id=pad)
    raise ValueError(f"arch must be 'llada' or 'dream', got {arch!r}")
