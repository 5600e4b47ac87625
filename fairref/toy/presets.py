"""The two toy architectures and their checkpoint layout (SPEC §2, §7).

Tiny instances of the real LLaDA and Dream classes of ``fairref.models``, so the loader that
reads LLaDA-8B reads them too. Sizes were chosen so that all training phases of a model fit
in 30 min on one CPU core under bf16 autocast (toy_models/README.md). A Dream toy at
d = 128 was also trained on the first three tasks; it learned them as well and was *less*
sensitive to W4A4 (sort: 99.95% → 97.3%, against 98.7% → 93.9% at d = 192 then), so the
narrower model was not kept; the README's "What was tried" table has every Dream variant.

- ``llada``: d = 256, 4 blocks, 4 heads (no GQA, like LLaDA-8B), SwiGLU width 768.
- ``dream``: d = 192, 4 blocks, 4 query heads sharing 2 key/value heads (GQA), width 512,
  q/k/v biases as in Qwen2.

Both use the character vocabulary of ``char_tokenizer`` and its special ids. RoPE bases:
the LLaDA toy keeps LLaDA-8B's 5e5; the Dream toy uses 1e4 instead of Dream-7B's 1e6.
1e4 was first chosen on an argument (over the toy's L = 32 positions few of Dream's pairs
turn by more than a radian at 1e6, little to build ``carry``'s fixed-offset lookups from)
that a later measurement did not bear out: d = 192 Dream toys at 1e6 and at 1e5, trained
sort-alone then on the mixture (21 min), learned all four tasks (sort 100%, pick 97-98%).
They were also *more* robust to W4A4 and their teacher less often unsure (toy_models/
README.md, "What was tried"), so the 1e4 model stays. (LLaDA runs on the three-task
mixture stalled on ``sort`` at both 1e4 and 5e5; what fixed them was a sort-only first
phase.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fairref.files import write_text_atomic
from fairref.models import DreamConfig, LLaDAConfig, build, save
from fairref.toy.char_tokenizer import (
    BOS_ID,
    EOS_ID,
    GEN_LEN,
    MASK_ID,
    PAD_ID,
    PROMPT_LEN,
    VOCAB_SIZE,
    build_tokenizer,
)


def toy_config(arch: str) -> LLaDAConfig | DreamConfig:
    """The config of the toy model ``arch`` ("llada" or "dream")."""
    if arch == "llada":
        return LLaDAConfig(
            d_model=256,  # hidden size d (the task asks for one model with d >= 256)
            n_heads=4,  # head_dim 64
            n_kv_heads=4,  # LLaDA-8B has no GQA
            n_layers=4,  # N blocks
            mlp_hidden_size=768,  # SwiGLU width = 3d
            vocab_size=VOCAB_SIZE,
            embedding_size=VOCAB_SIZE,
            rope_theta=500000.0,  # LLaDA-8B's base (module docstring)
            max_sequence_length=64,  # L = P + G = 32 is all the toy ever sees
            mask_token_id=MASK_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            extra={"model_type": "llada", "architectures": ["LLaDAModelLM"], "bos_token_id": BOS_ID},
        )
    if arch == "dream":
        return DreamConfig(
            hidden_size=192,  # d (smaller than the LLaDA toy: half the training compute)
            intermediate_size=512,  # SwiGLU width ≈ 2.7d
            num_attention_heads=4,  # head_dim 48
            num_key_value_heads=2,  # GQA: 2 query heads per key/value head (Dream-7B: 7)
            num_hidden_layers=4,  # N blocks
            vocab_size=VOCAB_SIZE,
            rope_theta=10000.0,  # module docstring (Dream-7B: 1e6)
            max_position_embeddings=64,
            mask_token_id=MASK_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            extra={"model_type": "Dream", "architectures": ["DreamModel"]},
        )
    raise ValueError(f"arch must be 'llada' or 'dream', got {arch!r}")


#: the linears that write into the residual stream (LLaDA and Dream names)
_RESIDUAL_OUT = ("attn_out", "ff_out", "o_proj", "down_proj")


def _is_residual_out(name: str) -> bool:
    """True for a block's output projection (LLaDA's head is also called ff_out, but it
    lives outside the blocks)."""
    parts = name.split(".")
    in_block = "blocks" in parts or "layers" in parts
    return in_block and len(parts) >= 2 and parts[-2] in _RESIDUAL_OUT


def init_weights(model: torch.nn.Module, std: float = 0.02) -> None:
    """GPT-2 style initialisation from the global torch RNG: matrices ~ N(0, std²), the
    output projections of each residual branch scaled by 1/√(2N), biases 0, norms 1."""
    n_blocks = len(model.blocks)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                p.fill_(1.0 if "norm" in name or "ln_f" in name else 0.0)
            elif _is_residual_out(name):
                p.normal_(0.0, std / (2 * n_blocks) ** 0.5)
            else:
                p.normal_(0.0, std)


def build_toy(arch: str) -> torch.nn.Module:
    """A freshly initialised toy model (float32), drawn from the global torch RNG."""
    model = build(toy_config(arch))
    init_weights(model)
    return model


#: the sampler each toy is shipped with (what :func:`save_toy` writes into
#: generation_config.json; only keys that arch's loop reads). Temperature 0, G = 16 tokens in
#: 8 steps. LLaDA: semi-autoregressive, blocks of 4 with 2 steps each (2 commits per step),
#: ``low_confidence`` — the way LLaDA-Instruct is run (block_length < gen_length). In one
#: block of 16 the toy committed its EOS tail first (93% of the positions written at steps 0
#: and 1 were EOS), so the frontier was EOS ties; in blocks of 4 its earliest commits are
#: answer characters, at the same full-precision accuracy (paper_repro/results/
#: sampler_regime.md; toy_models/README.md "Sampler"). Dream: its public loop over the
#: whole region (Dream has no blocks), ``maskgit_plus`` (top-1 probability).
TOY_GENERATION = {
    "llada": {"steps": 8, "gen_length": GEN_LEN, "block_length": 4,
              "remasking": "low_confidence"},
    "dream": {"steps": 8, "gen_length": GEN_LEN, "alg": "maskgit_plus"},
}


def generation_config(arch: str) -> dict:
    """The ``generation_config.json`` of a toy: its sampler (:data:`TOY_GENERATION`) and the
    prompt format, as ``fairref generate`` reads them: BOS first, prompts left-padded to the
    fixed length P with visible pad tokens (as in training). Everything that runs a shipped
    toy reads the file back (``fairref.toy.evaluate.toy_sampler``), never this dict; a test
    checks that the two agree."""
    if arch not in TOY_GENERATION:
        raise ValueError(f"arch must be 'llada' or 'dream', got {arch!r}")
    return {**TOY_GENERATION[arch], "add_bos": True, "prompt_length": PROMPT_LEN}


def save_toy(model: torch.nn.Module, arch: str, out: str | Path, train_config: dict | None = None) -> Path:
    """Write the checkpoint directory: config.json, bf16 model.safetensors, tokenizer.json,
    generation_config.json, and ``train_config.json`` recording how it was trained."""
    out = save(model, out, dtype=torch.bfloat16, overwrite=True, tokenizer=build_tokenizer(),
               generation_config=generation_config(arch))
    if train_config is not None:
        write_text_atomic(out / "train_config.json",
                          json.dumps({"arch": arch, **train_config}, indent=2) + "\n")
    return out
