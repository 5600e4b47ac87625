"""config.json ↔ LLaDAConfig / DreamConfig (SPEC §2, §7).

The real files in tests/models/ are the independent source: a config must read them,
give the published numbers, write them back unchanged, and refuse every value that would
change the computation."""

import dataclasses
import difflib
import json
import math
from pathlib import Path

import pytest
from hypothesis import assume, given
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
    # "x_" + digits: unlike every key the configs know (no known key has a digit), so these
    # are informational keys, never near misses of a known one
    st.text(alphabet="0123456789", max_size=12).map(lambda k: "x_" + k),
    _json, max_size=4)


@given(extra=_new_keys, which=st.sampled_from([LLADA, DREAM]))
def test_informational_keys_are_kept_and_written_back(extra, which):
    """Any unknown key unlike every known key, with any JSON value, survives from_dict →
    to_dict untouched, and does not disturb the fields."""
    raw = {**real(which), **extra}
    c = config_from_dict(raw)
    assert c.to_dict() == raw
    assert dataclasses.replace(c, extra={}) == dataclasses.replace(config_from_dict(real(which)), extra={})


# --- misspelled keys -----------------------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz_"


@st.composite
def _one_typo(draw):
    """(config file, known key, that key with one deletion / insertion / substitution /
    adjacent transposition) for a known key of at least 4 letters."""
    name = draw(st.sampled_from([LLADA, DREAM]))
    cls = LLaDAConfig if name == LLADA else DreamConfig
    key = draw(st.sampled_from(sorted(k for k in cls.known_keys() if len(k) >= 4)))
    i = draw(st.integers(0, len(key) - 1))
    c = draw(st.sampled_from(_LETTERS))
    edit = draw(st.sampled_from(["delete", "insert", "substitute", "transpose"]))
    if edit == "delete":
        typo = key[:i] + key[i + 1:]
    elif edit == "insert":
        typo = key[:i] + c + key[i:]
    elif edit == "substitute":
        typo = key[:i] + c + key[i + 1:]
    else:
        j = min(i + 1, len(key) - 1)
        typo = key[:i] + key[j] + key[i + 1:j] + key[i] + key[j + 1:] if j > i else key
    return name, cls, key, typo


@given(case=_one_typo())
def test_a_one_letter_typo_of_a_known_key_is_an_error_suggesting_a_closest_key(case):
    """rope_thetta must not silently become rope_theta's default: the error names the typo
    and suggests a known key at least as similar to it as the key the user meant."""
    name, cls, key, typo = case
    assume(typo not in cls.known_keys())  # an edit can land on another known key
    raw = real(name)
    raw[typo] = raw.pop(key, 1)
    with pytest.raises(ValueError, match=repr(typo)) as e:
        config_from_dict(raw)
    suggested = str(e.value).split("did you mean ")[1].split("?")[0].strip("'")
    ratio = lambda a: difflib.SequenceMatcher(None, typo, a).ratio()  # noqa: E731
    assert suggested in cls.known_keys() and ratio(suggested) >= ratio(key)


@pytest.mark.parametrize("name,typo,meant", [(LLADA, "rope_thetta", "rope_theta"),
                                             (LLADA, "rms_norm_epss", "rms_norm_eps"),
                                             (DREAM, "num_key_value_head", "num_key_value_heads"),
                                             (DREAM, "hiden_size", "hidden_size")])
def test_misspelled_key_names_the_key_it_resembles(name, typo, meant):
    raw = real(name)
    raw[typo] = raw.pop(meant)
    with pytest.raises(ValueError, match=f"{typo!r}; did you mean {meant!r}"):
        config_from_dict(raw)


@pytest.mark.parametrize("name", [LLADA, DREAM, DIFFUCODER])
def test_every_key_of_the_real_files_is_known(name):
    """The published files carry many keys fairref does not use; none may read as a typo."""
    raw = real(name)
    cls = type(config_from_dict(raw))
    assert set(raw) <= cls.known_keys()


# --- field types and ranges ------------------------------------------------------------------

# Independent of the code's own table: what SPEC §2 needs of each field.
FIELD_KINDS = {
    LLaDAConfig: {"d_model": "size", "n_heads": "size", "n_kv_heads": "size?",
                  "n_layers": "size", "mlp_hidden_size": "size?", "mlp_ratio": "size",
                  "vocab_size": "size", "embedding_size": "size?", "rope_theta": "real",
                  "rms_norm_eps": "real", "max_sequence_length": "size",
                  "mask_token_id": "id", "eos_token_id": "id?", "pad_token_id": "id?"},
    DreamConfig: {"hidden_size": "size", "intermediate_size": "size",
                  "num_attention_heads": "size", "num_key_value_heads": "size?",
                  "num_hidden_layers": "size", "vocab_size": "size", "rope_theta": "real",
                  "rms_norm_eps": "real", "max_position_embeddings": "size",
                  "mask_token_id": "id", "bos_token_id": "id?", "eos_token_id": "id?",
                  "pad_token_id": "id?"},
}  # Dream's num_key_value_heads: null means "= num_attention_heads" (Qwen2)


@pytest.mark.parametrize("cls", [LLaDAConfig, DreamConfig])
def test_every_field_has_a_type_rule(cls):
    assert set(FIELD_KINDS[cls]) == {f.name for f in dataclasses.fields(cls)} - {"extra"}


_not_number = st.one_of(st.booleans(), st.text(max_size=5),
                        st.lists(st.integers(1, 9), max_size=2),
                        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


def _bad_value(kind: str):
    """Values of the wrong JSON type or out of range for ``kind``, including True (an int
    in Python), integral floats like 4096.0, 0, negatives, NaN and ±inf."""
    null = st.just(None) if not kind.endswith("?") else st.nothing()
    floats = st.floats(allow_nan=True, allow_infinity=True)
    if kind.startswith("size"):
        return _not_number | null | floats | st.integers(max_value=0)
    if kind.startswith("id"):
        return _not_number | null | floats | st.integers(max_value=-1)
    return (_not_number | null | st.floats(max_value=0.0) | st.just(math.inf)
            | st.just(math.nan))  # "real": any number > 0 and finite is fine


@st.composite
def _bad_field(draw):
    name = draw(st.sampled_from([LLADA, DREAM]))
    cls = LLaDAConfig if name == LLADA else DreamConfig
    key, kind = draw(st.sampled_from(sorted(FIELD_KINDS[cls].items())))
    return name, key, draw(_bad_value(kind))


@given(case=_bad_field())
def test_a_field_of_the_wrong_type_or_range_is_an_error_at_load_naming_the_key(case):
    """rope_theta: "big" or rms_norm_eps: null must fail when the config is read, not at the
    first forward, and the message must name the key."""
    name, key, value = case
    raw = real(name)
    raw[key] = value
    with pytest.raises(ValueError, match=repr(key)):
        config_from_dict(raw)


@pytest.mark.parametrize("name,key,value", [(LLADA, "rope_theta", "big"),
                                            (DREAM, "rms_norm_eps", None),
                                            (LLADA, "n_layers", True),
                                            (DREAM, "rope_theta", 0)])
def test_wrong_field_value_message_says_what_was_expected(name, key, value):
    raw = real(name)
    raw[key] = value
    with pytest.raises(ValueError, match=f"{key!r} must be a .*, got "):
        config_from_dict(raw)


@pytest.mark.parametrize("name,key,value", [(LLADA, "rope_theta", 10000),
                                            (DREAM, "rope_theta", 1e4),
                                            (LLADA, "n_kv_heads", None),
                                            (DREAM, "num_key_value_heads", None),
                                            (DREAM, "eos_token_id", None)])
def test_valid_values_of_either_json_number_type_or_null_are_accepted(name, key, value):
    raw = real(name)
    raw[key] = value
    assert config_from_dict(raw).to_dict() == raw


# Independent of the code's tables: every key of the published files, sorted by what it
# does to the computation (the "used / checked / rejected"). A key that changes the
# math is a field (used) or guarded (checked: any other value is an error); the rest only
# describe training, kernels or the HF wrapper and may be accepted as they are.
DESCRIPTIVE = {
    LLADA: {"alibi_bias_max", "architectures", "attention_dropout",
            "attention_layer_norm_with_affine", "auto_map", "embedding_dropout",
            "flash_attention", "init_cutoff_factor", "init_device", "init_fn", "init_std",
            "model_type", "precision", "residual_dropout", "transformers_version",
            "use_cache"},
    DREAM: {"_name_or_path", "architectures", "attention_dropout", "auto_map",
            "initializer_range", "max_window_layers", "model_type", "sliding_window",
            "torch_dtype", "transformers_version", "use_cache"},
}
DESCRIPTIVE[DIFFUCODER] = DESCRIPTIVE[DREAM]


@pytest.mark.parametrize("name", [LLADA, DREAM, DIFFUCODER])
def test_every_key_of_the_real_files_is_used_checked_or_descriptive(name):
    """No key of a real file is silently ignored if it can change the computation: it is a
    dataclass field or a guarded key, unless the table above calls it descriptive."""
    raw = real(name)
    cls = type(config_from_dict(raw))
    fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    unclassified = set(raw) - fields - set(cls.GUARDED) - DESCRIPTIVE[name]
    assert not unclassified


@pytest.mark.parametrize("name", [LLADA, DREAM])
def test_every_guarded_key_rejects_a_value_it_does_not_implement(name):
    """A guarded key is checked, not just listed: flipping a boolean flag, or giving a
    string / null flag another value, is an error that names the key."""
    cls = type(config_from_dict(real(name)))
    for key, accepted in cls.GUARDED.items():
        if key == "model_type":
            continue  # dispatch, tested above
        bad = (not accepted[0]) if isinstance(accepted[0], bool) else "unsupported-value"
        raw = {**real(name), key: bad}
        with pytest.raises(ValueError, match=repr(key)):
            config_from_dict(raw)
