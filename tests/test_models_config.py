"""config.json ↔ LLaDAConfig / DreamConfig (SPEC §2, §7).

The real files in tests/models/ are the independent source: a config must read them,
give the published numbers, write them back unchanged, and refuse every value that would
change the computation."""

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairref.models import DreamConfig, LLaDAConfig, config_from_dict

DATA = Path(__file__).parent / "models"


def real(name: str) -> dict:
    return json.loads((DATA / name).read_text())


LLADA = "llada-8b-instruct.config.json"
DREAM = "dream-v0-instruct-7b.config.json"
DIFFUCODER = "diffucoder-7b-instruct.config.json"


def test_llada_8b_config_reads_the_published_numbers():
    """The fields the math uses come out of the real file with the published values."""
    c = config_from_dict(real(LLADA))
    assert isinstance(c, LLaDAConfig)
    assert (c.d_model, c.n_heads, c.kv_heads, c.n_layers) == (4096, 32, 32, 32)
    assert (c.ffn_dim, c.padded_vocab, c.head_dim) == (12288, 126464, 128)
    assert (c.rope_theta, c.rms_norm_eps, c.mask_token_id) == (500000.0, 1e-5, 126336)


def test_dream_7b_config_reads_the_published_numbers():
    c = config_from_dict(real(DREAM))
    assert isinstance(c, DreamConfig)
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (3584, 28, 4)
    assert (c.num_hidden_layers, c.intermediate_size, c.vocab_size) == (28, 18944, 152064)
    assert (c.rope_theta, c.rms_norm_eps, c.mask_token_id, c.head_dim) == (1e6, 1e-6, 151666, 128)


@pytest.mark.parametrize("name", [LLADA, DREAM, DIFFUCODER])
def test_real_config_round_trips_exactly(name):
    """save writes back every key of the file, informational ones included."""
    raw = real(name)
    assert config_from_dict(raw).to_dict() == raw


@pytest.mark.parametrize("cls,name", [(LLaDAConfig, LLADA), (DreamConfig, DREAM)])
def test_default_preset_is_the_published_file(cls, name):
    """The defaults are documented as the 8B/7B config.json: fields and every other key."""
    assert cls.from_dict(real(name)) == cls()
    assert cls().to_dict() == real(name)


@pytest.mark.parametrize("cls,name,sizes", [
    (LLaDAConfig, LLADA, dict(d_model=16, n_heads=2, n_kv_heads=2, n_layers=1, vocab_size=8,
                              embedding_size=8, mlp_hidden_size=24, mask_token_id=7)),
    (DreamConfig, DREAM, dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                              num_hidden_layers=1, vocab_size=8, intermediate_size=24,
                              mask_token_id=7))])
def test_a_resized_preset_writes_the_real_key_set(cls, name, sizes):
    """Tiny toy/test configs made with dataclasses.replace carry the real file's keys."""
    small = dataclasses.replace(cls(), **sizes)
    assert set(small.to_dict()) == set(real(name))
    assert config_from_dict(small.to_dict()) == small


# Each case: a value that would change the math; the error must name the key.
UNSUPPORTED = [
    (LLADA, "alibi", True),
    (LLADA, "weight_tying", True),
    (LLADA, "include_bias", True),
    (LLADA, "include_qkv_bias", True),
    (LLADA, "activation_type", "gelu"),
    (LLADA, "block_type", "sequential"),
    (LLADA, "block_group_size", 2),
    (LLADA, "layer_norm_type", "default"),
    (LLADA, "attention_layer_norm", True),
    (LLADA, "scale_logits", True),
    (LLADA, "input_emb_norm", True),
    (LLADA, "rope", False),
    (LLADA, "rope_full_precision", False),
    (LLADA, "multi_query_attention", True),
    (LLADA, "rope_scaling", {"type": "linear", "factor": 2.0}),
    (DREAM, "rope_scaling", {"type": "yarn", "factor": 4.0}),
    (DREAM, "tie_word_embeddings", True),
    (DREAM, "hidden_act", "gelu"),
    (DREAM, "use_sliding_window", True),
    (DIFFUCODER, "use_mrope", True),
    (DREAM, "head_dim", 64),
    (DREAM, "model_type", "qwen2"),
    (LLADA, "model_type", "olmo"),
]


@pytest.mark.parametrize("name,key,value", UNSUPPORTED)
def test_unsupported_value_is_an_error_naming_the_key(name, key, value):
    raw = real(name)
    raw[key] = value
    with pytest.raises(ValueError, match=repr(key) if key != "model_type" else "model_type"):
        config_from_dict(raw)


@pytest.mark.parametrize("name,key", [(LLADA, "d_model"), (LLADA, "n_layers"),
                                      (DREAM, "hidden_size"), (DREAM, "mask_token_id")])
def test_missing_required_key_is_an_error_naming_it(name, key):
    raw = real(name)
    del raw[key]
    with pytest.raises(ValueError, match=key):
        config_from_dict(raw)


def test_architectures_must_match_model_type():
    raw = real(DREAM)
    raw["architectures"] = ["LLaDAModelLM"]
    with pytest.raises(ValueError, match="architectures"):
        config_from_dict(raw)


@pytest.mark.parametrize("name,key,value", [(LLADA, "n_heads", 24), (DREAM, "num_key_value_heads", 5),
                                            (LLADA, "embedding_size", 1000)])
def test_inconsistent_sizes_are_errors(name, key, value):
    """d not divisible by heads, heads not a multiple of kv heads, embedding < vocab."""
    raw = real(name)
    raw[key] = value
    with pytest.raises(ValueError, match=key):
        config_from_dict(raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)
_new_keys = st.dictionaries(
    # the "x_" prefix keeps generated names disjoint from every key the configs know
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=12).map(lambda k: "x_" + k),
    _json, max_size=4)


@given(extra=_new_keys, which=st.sampled_from([LLADA, DREAM]))
def test_informational_keys_are_kept_and_written_back(extra, which):
    """Any unknown key with any JSON value survives from_dict → to_dict untouched, and does
    not disturb the fields."""
    raw = {**real(which), **extra}
    c = config_from_dict(raw)
    assert c.to_dict() == raw
    assert dataclasses.replace(c, extra={}) == dataclasses.replace(config_from_dict(real(which)), extra={})
