"""Model configurations read from and written back to ``config.json`` (SPEC §2, §7).

Two frozen dataclasses, one per architecture, carrying the fields of the public
``config.json`` files that the math depends on:

- :class:`LLaDAConfig` — the OLMo-style keys of ``GSAI-ML/LLaDA-8B-Instruct``
  (``d_model``, ``n_heads``, ``mlp_hidden_size``, ``rope_theta`` = 500000, ...).
- :class:`DreamConfig` — the Qwen2 keys of ``Dream-org/Dream-v0-Instruct-7B``
  (``hidden_size``, ``num_key_value_heads``, ``rope_theta`` = 1e6, ...).

Checked against the public config.json of LLaDA-8B-Instruct and the config/modeling code
of Dream-v0 (``configuration_dream.py``, ``modeling_dream.py``).

Key policy (SPEC §7: "unknown or unsupported config values are errors that name the key").
Every key of the file lands in one of three places:

1. a dataclass field (sizes, eps, theta, token ids), type- and range-checked when the
   config is built (positive ints, finite positive floats, non-negative token ids; a
   boolean is never accepted as a number), so a bad value fails at load, not at the first
   forward;
2. a *guarded* key whose value changes the math: it must hold the one value we implement
   (e.g. ``alibi: false``, ``rope_scaling: null``, ``hidden_act: "silu"``), else
   ``ValueError`` naming the key and the value; the value is kept in ``extra``;
3. anything else is informational (dropout rates, ``init_fn``, ``auto_map``,
   ``transformers_version``, ...) and is kept verbatim in ``extra`` — *unless* it is a
   near miss of a key we know (``difflib`` similarity ≥ 0.75, which every one-letter typo
   of a known key of 4+ letters reaches): ``rope_thetta`` is an error naming
   ``rope_theta``, since otherwise the default would silently replace the user's value.
   The known keys are the fields, the guarded keys, the informational keys of the
   published file and the generic keys Hugging Face writes into every config.

``to_dict()`` returns ``extra`` merged with the fields, so ``from_dict(d).to_dict() == d``
for every accepted ``d`` and ``save`` writes the informational keys back.

Presets: ``LLaDAConfig()`` *is* LLaDA-8B-Instruct and ``DreamConfig()`` *is*
Dream-v0-Instruct-7B, including every informational key of their files; a tiny model for
tests or toy training is ``dataclasses.replace(LLaDAConfig(), d_model=64, ...)`` and so
saves a config.json with exactly the real key set.

The checks behind the key policy are generic (nothing in them knows LLaDA or Dream) and
live in :mod:`fairref.models.config_checks`.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from fairref.models.config_checks import (
    _TYPO_CUTOFF, _check_fields, _check_guarded, _json_type, _known_keys, _split, _to_dict,
)

#: The keys of LLaDA-8B-Instruct's config.json that are not dataclass fields (guarded
#: flags and informational values). They are the default ``extra``, so the preset and any
#: ``dataclasses.replace`` of it (tiny test/toy models) write the real file's key set.
_LLADA_8B_EXTRA = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
    "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
    "embedding_dropout": 0.0, "flash_attention": False, "include_bias": False,
    "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "model_type": "llada", "multi_query_attention": None,
    "precision": "amp_bf16", "residual_dropout": 0.0, "rope": True, "rope_full_precision": True,
    "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
    "weight_tying": False,
}
#: The same for Dream-v0-Instruct-7B's config.json.
_DREAM_7B_EXTRA = {
    "_name_or_path": "Dream-org/Dream-v0-Instruct-7B",
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                 "AutoModel": "modeling_dream.DreamModel"},
    "hidden_act": "silu", "initializer_range": 0.02, "max_window_layers": 28,
    "model_type": "Dream", "rope_scaling": None, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
    "use_cache": True, "use_mrope": False, "use_sliding_window": False,
}


@dataclass(frozen=True)
class LLaDAConfig:
    """LLaDA (SPEC §2). Defaults are LLaDA-8B-Instruct's ``config.json``."""

    #: hidden size d
    d_model: int = 4096
    #: number of query heads
    n_heads: int = 32
    #: number of key/value heads (``None`` in older files means n_heads); 8B has no GQA
    n_kv_heads: int | None = 32
    #: number of transformer blocks N
    n_layers: int = 32
    #: SwiGLU inner width; ``None`` means mlp_ratio * d_model
    mlp_hidden_size: int | None = 12288
    #: fallback for mlp_hidden_size
    mlp_ratio: int = 4
    #: tokenizer vocabulary size
    vocab_size: int = 126464
    #: rows of the embedding / head (``None`` means vocab_size); 8B: equal to vocab_size
    embedding_size: int | None = 126464
    #: RoPE base; 500000 in LLaDA-8B
    rope_theta: float = 500000.0
    #: RMSNorm epsilon
    rms_norm_eps: float = 1e-5
    #: longest sequence the model was trained on (informational for the math: RoPE extends)
    max_sequence_length: int = 4096
    #: the [MASK] id of the diffusion process (<|mdm_mask|>)
    mask_token_id: int = 126336
    #: end-of-text id
    eos_token_id: int | None = 126081
    #: padding id (LLaDA pads with EOS)
    pad_token_id: int | None = 126081
    #: every other key of config.json, kept verbatim for save (default: the 8B file's)
    extra: dict = field(default_factory=lambda: copy.deepcopy(_LLADA_8B_EXTRA))

    #: keys whose value changes the computation → the values we implement (public values)
    GUARDED: ClassVar[dict[str, tuple]] = {
        "model_type": ("llada",),
        "activation_type": ("silu",),
        "alibi": (False,),
        "attention_layer_norm": (False,),
        "bias_for_layer_norm": (False, None),
        "block_group_size": (1,),
        "block_type": ("llama",),
        "include_bias": (False,),
        "include_qkv_bias": (False,),
        "input_emb_norm": (False,),
        "layer_norm_type": ("rms",),
        "layer_norm_with_affine": (True,),
        "multi_query_attention": (None, False),
        "rope": (True,),
        "rope_full_precision": (True,),
        "scale_logits": (False,),
        "weight_tying": (False,),
        "rope_scaling": (None,),
        "yarn": (False,),
    }
    REQUIRED: ClassVar[tuple[str, ...]] = ("d_model", "n_heads", "n_layers", "vocab_size",
                                           "mask_token_id")
    #: how each field is checked (see ``config_checks._KINDS``)
    KINDS: ClassVar[dict[str, str]] = {
        "d_model": "size", "n_heads": "size", "n_kv_heads": "size?", "n_layers": "size",
        "mlp_hidden_size": "size?", "mlp_ratio": "size", "vocab_size": "size",
        "embedding_size": "size?", "rope_theta": "real", "rms_norm_eps": "real",
        "max_sequence_length": "size", "mask_token_id": "id", "eos_token_id": "id?",
        "pad_token_id": "id?",
    }

    def __post_init__(self) -> None:
        _check_fields(self, self.KINDS, "LLaDA")
        if self.d_model % self.n_heads:
            raise ValueError(f"LLaDA config: d_model={self.d_model} is not divisible by "
                             f"n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"LLaDA config: n_heads={self.n_heads} is not a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LLaDA config: head_dim={self.head_dim} must be even for RoPE")
        if self.padded_vocab < self.vocab_size:
            raise ValueError(f"LLaDA config: embedding_size={self.embedding_size} < "
                             f"vocab_size={self.vocab_size}")
        if not 0 <= self.mask_token_id < self.padded_vocab:
            raise ValueError(f"LLaDA config: mask_token_id={self.mask_token_id} outside the "
                             f"embedding (size {self.padded_vocab})")
        _check_guarded(self.extra, self.GUARDED, "LLaDA")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None \
            else self.mlp_ratio * self.d_model

    @property
    def padded_vocab(self) -> int:
        """Rows of ``wte`` and of the head (LLaDA's ``embedding_size or vocab_size``)."""
        return self.embedding_size if self.embedding_size is not None else self.vocab_size

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "LLaDAConfig":
        """Build from a parsed ``config.json``; see the module docstring for the policy."""
        return cls(**_split(raw, cls, "LLaDA"))

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        return _known_keys(cls, _LLADA_8B_EXTRA)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, "llada")


@dataclass(frozen=True)
class DreamConfig:
    """Dream (SPEC §2), Qwen2 layout. Defaults are Dream-v0-Instruct-7B's ``config.json``."""

    #: hidden size d
    hidden_size: int = 3584
    #: SwiGLU inner width
    intermediate_size: int = 18944
    #: number of query heads
    num_attention_heads: int = 28
    #: number of key/value heads (GQA: 4 in Dream-7B)
    num_key_value_heads: int = 4
    #: number of transformer blocks N
    num_hidden_layers: int = 28
    #: rows of the embedding and of lm_head
    vocab_size: int = 152064
    #: RoPE base; 1e6 in Dream-7B (inherited from Qwen2.5)
    rope_theta: float = 1000000.0
    #: RMSNorm epsilon
    rms_norm_eps: float = 1e-6
    #: inherited from Qwen2.5 (informational for the math: RoPE extends)
    max_position_embeddings: int = 131072
    #: the [MASK] id of the diffusion process (<|mask|>)
    mask_token_id: int = 151666
    #: begin-of-text id
    bos_token_id: int | None = 151643
    #: end-of-text id
    eos_token_id: int | None = 151643
    #: padding id
    pad_token_id: int | None = 151643
    #: every other key of config.json, kept verbatim for save (default: the 7B file's)
    extra: dict = field(default_factory=lambda: copy.deepcopy(_DREAM_7B_EXTRA))

    GUARDED: ClassVar[dict[str, tuple]] = {
        "model_type": ("Dream",),
        "hidden_act": ("silu",),
        "tie_word_embeddings": (False,),
        "rope_scaling": (None,),
        "use_sliding_window": (False,),
        "use_mrope": (False,),
        "final_logit_softcapping": (None,),
        "final_logit_softcap": (None,),
    }
    REQUIRED: ClassVar[tuple[str, ...]] = ("hidden_size", "intermediate_size",
                                           "num_attention_heads", "num_hidden_layers",
                                           "vocab_size", "mask_token_id")

    #: how each field is checked (see ``config_checks._KINDS``)
    KINDS: ClassVar[dict[str, str]] = {
        "hidden_size": "size", "intermediate_size": "size", "num_attention_heads": "size",
        "num_key_value_heads": "size", "num_hidden_layers": "size", "vocab_size": "size",
        "rope_theta": "real", "rms_norm_eps": "real", "max_position_embeddings": "size",
        "mask_token_id": "id", "bos_token_id": "id?", "eos_token_id": "id?",
        "pad_token_id": "id?",
    }

    def __post_init__(self) -> None:
        _check_fields(self, self.KINDS, "Dream")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"Dream config: hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"Dream config: num_attention_heads={self.num_attention_heads} is not "
                             f"a multiple of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"Dream config: head_dim={self.head_dim} must be even for RoPE")
        # Dream's modeling code derives head_dim = hidden_size // heads and ignores the key
        head_dim = self.extra.get("head_dim")
        if head_dim is not None and head_dim != self.head_dim:
            raise ValueError(f"Dream config: key 'head_dim' = {head_dim!r} differs from "
                             f"hidden_size // num_attention_heads = {self.head_dim}; "
                             "fairref implements only the derived head size")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"Dream config: mask_token_id={self.mask_token_id} outside the "
                             f"vocabulary (size {self.vocab_size})")
        _check_guarded(self.extra, self.GUARDED, "Dream")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "DreamConfig":
        """Build from a parsed ``config.json``; see the module docstring for the policy.

        ``num_key_value_heads`` defaults to ``num_attention_heads`` when absent (Qwen2)."""
        kwargs = _split(raw, cls, "Dream")
        if "num_key_value_heads" not in raw or raw["num_key_value_heads"] is None:
            kwargs["num_key_value_heads"] = raw["num_attention_heads"]
            if "num_key_value_heads" in raw:  # keep the explicit null for the round trip
                kwargs["extra"]["num_key_value_heads"] = None
        return cls(**kwargs)

    @classmethod
    def known_keys(cls) -> frozenset[str]:
        # head_dim: accepted when it equals the derived head size (checked above)
        return _known_keys(cls, _DREAM_7B_EXTRA) | {"head_dim"}

    def to_dict(self) -> dict[str, Any]:
        out = _to_dict(self, "Dream")
        if "num_key_value_heads" in self.extra and self.extra["num_key_value_heads"] is None:
            out["num_key_value_heads"] = None
        return out


def config_from_dict(raw: Mapping[str, Any]) -> LLaDAConfig | DreamConfig:
    """Dispatch on ``model_type`` ("llada" → LLaDA, "Dream" → Dream) and ``architectures``."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"config.json must hold a JSON object, got {_json_type(raw)}")
    model_type = raw.get("model_type")
    expected_arch = {"llada": "LLaDAModelLM", "Dream": "DreamModel"}
    if "model_type" not in raw:  # a typo of it would otherwise read as "not supported"
        typo = difflib.get_close_matches("model_type", list(raw), n=1, cutoff=_TYPO_CUTOFF)
        if typo:
            raise ValueError(f"config: unknown key {typo[0]!r}; did you mean 'model_type'? "
                             "Fix the spelling")
    if model_type not in expected_arch:
        raise ValueError(f"config: 'model_type' = {model_type!r} is not supported; "
                         f"expected one of {sorted(expected_arch)}")
    archs = raw.get("architectures")
    if archs is not None and archs != [expected_arch[model_type]]:
        raise ValueError(f"config: 'architectures' = {archs!r} does not match "
                         f"model_type {model_type!r} (expected [{expected_arch[model_type]!r}])")
    return LLaDAConfig.from_dict(raw) if model_type == "llada" else DreamConfig.from_dict(raw)
