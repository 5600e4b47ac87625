"""Tiny LLaDA / Dream configs shared by the tests that need a real (random) model but not
the published key set (tests/test_models_* use the real config.json files instead)."""

from fairref.models import DreamConfig, LLaDAConfig


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
