"""Generic checks of a raw ``config.json`` mapping against a config dataclass (SPEC §7).

SPEC §7: "unknown or unsupported config values are errors that name the key". These are
the checks behind the key policy stated in :mod:`fairref.models.config`, written for any
frozen config dataclass with an ``extra`` dict field and the class attributes
``REQUIRED``, ``GUARDED`` and ``KINDS`` (and a ``known_keys()`` classmethod):

- :func:`_split` — the dataclass fields out of ``raw``, the rest into ``extra``; before
  that, :func:`_check_unknown` (a near miss of a known key, ``difflib`` similarity ≥ 0.75,
  is a typo) and the required keys;
- :func:`_check_fields` — type and range of every field, by its kind in :data:`_KINDS`
  (a boolean is never accepted as a number);
- :func:`_check_guarded` — a key whose value changes the math holds a value we implement;
- :func:`_to_dict` — ``extra`` merged with the fields, for ``save``;
- :func:`_known_keys` — the fields, the guarded keys, the informational keys of the
  published file and the generic keys Hugging Face's ``PretrainedConfig`` writes into
  every config.json.

Nothing here knows LLaDA or Dream: the two dataclasses, their presets and the dispatch on
``model_type`` are in :mod:`fairref.models.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from typing import Any, Mapping

_MISSING = object()

#: keys Hugging Face's ``PretrainedConfig`` may write into any config.json: known, unused
_HF_GENERIC_KEYS = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype",
    "dtype", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "tie_word_embeddings", "is_encoder_decoder", "is_decoder",
    "add_cross_attention", "output_attentions", "output_hidden_states", "return_dict",
    "torchscript", "use_bfloat16", "tokenizer_class", "id2label", "label2id",
    "num_labels", "problem_type", "finetuning_task", "prefix", "task_specific_params",
    "pruned_heads", "chunk_size_feed_forward", "tf_legacy_loss", "auto_map",
    "attn_implementation", "quantization_config",
})

#: the similarity (difflib ratio) from which an unknown key counts as a misspelling
_TYPO_CUTOFF = 0.75


def _check_unknown(raw: Mapping[str, Any], known: frozenset[str], arch: str) -> None:
    """Raise ``ValueError`` for a key that is unknown but close to a known one (a typo)."""
    for key in raw:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=_TYPO_CUTOFF)
        if close:
            raise ValueError(
                f"{arch} config: unknown key {key!r}; did you mean {close[0]!r}? Fix the "
                "spelling (an unknown key is ignored, so the default would be used instead)")


#: value kinds of the dataclass fields → (test, what the error says is expected)
_KINDS = {
    "size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "size?": (lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or null"),
    "real": (lambda v: _is_real(v) and math.isfinite(v) and v > 0,
             "a finite positive number"),
    "id": (lambda v: _is_int(v) and v >= 0, "a non-negative integer token id"),
    "id?": (lambda v: v is None or (_is_int(v) and v >= 0),
            "a non-negative integer token id or null"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int in Python


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json_type(v: Any) -> str:
    """How a value reads in config.json, for error messages."""
    if v is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _check_fields(cfg: Any, kinds: Mapping[str, str], arch: str) -> None:
    """Type and range of every field, before any arithmetic uses them."""
    if not isinstance(cfg.extra, dict):
        raise ValueError(f"{arch} config: extra must be a dict, got {_json_type(cfg.extra)}")
    for name, kind in kinds.items():
        ok, expected = _KINDS[kind]
        v = getattr(cfg, name)
        if not ok(v):
            shown = "null" if v is None else f"{v!r} ({_json_type(v)})"
            raise ValueError(f"{arch} config: key {name!r} must be {expected}, got {shown}; "
                             "fix it in config.json")


def _check_guarded(raw: Mapping[str, Any], guarded: Mapping[str, tuple], arch: str) -> None:
    """Raise ``ValueError`` for a guarded key whose value is not one we implement.

    ``guarded`` maps key → tuple of accepted values; an absent key takes the public
    default, which is always accepted."""
    for key, accepted in guarded.items():
        value = raw.get(key, _MISSING)
        if value is _MISSING:
            continue
        if not any(value == a and type(value) is type(a) for a in accepted):
            raise ValueError(
                f"{arch} config: key {key!r} = {value!r} is not supported (it changes "
                f"the computation); fairref implements only {key!r} in {list(accepted)!r}"
            )


def _split(raw: Mapping[str, Any], cls: type, arch: str) -> dict:
    """Take the dataclass fields out of ``raw``; the rest goes to ``extra``."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"config.json must hold a JSON object, got {_json_type(raw)}")
    _check_unknown(raw, cls.known_keys(), arch)  # first: a typo'd required key is a typo
    missing = [k for k in cls.REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{arch} config lacks required key(s) {missing}; add them to "
                         "config.json")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    kwargs = {k: raw[k] for k in names if k in raw}
    kwargs["extra"] = {k: v for k, v in raw.items() if k not in names}
    return kwargs


def _to_dict(cfg: Any, model_type: str) -> dict[str, Any]:
    """``extra`` merged with the fields (fields win), keys sorted like HF writes them.
    ``model_type`` is always present: the loader dispatches on it."""
    out = copy.deepcopy(cfg.extra)
    out.setdefault("model_type", model_type)
    for f in dataclasses.fields(cfg):
        if f.name != "extra":
            out[f.name] = getattr(cfg, f.name)
    return dict(sorted(out.items()))


def _known_keys(cls: type, informational: Mapping[str, Any]) -> frozenset[str]:
    """Every key a config.json of ``cls`` may carry without being a possible typo."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return frozenset(fields | set(cls.GUARDED) | set(informational) | _HF_GENERIC_KEYS)
