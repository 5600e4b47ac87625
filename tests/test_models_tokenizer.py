"""tokenizer.json wrapper (SPEC §7): encode/decode, the special ids, and the instruct chat
formats (LLaDA-Instruct, Dream/Qwen2) checked against their templates rendered by Jinja."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from fairref.models import (
    PromptFormat, apply_chat_format, encode_chat, encode_prompts, load_tokenizer,
)
from tiny import (
    DREAM_CHAT_TEMPLATE, LLADA_CHAT_TEMPLATE, tiny_instruct_raw, tiny_special_id,
    write_tiny_instruct,
)

ALPHABET = "0123456789+-*=:abc "
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|mask|>", "<|unk|>"]


def char_tokenizer_json(directory, specials=SPECIALS):
    """A character-level WordLevel tokenizer.json, built the way the toy models build theirs."""
    vocab = {t: i for i, t in enumerate(list(specials) + list(ALPHABET))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    tok.save(str(directory / "tokenizer.json"))
    return vocab


@given(text=st.text(alphabet=ALPHABET, max_size=40))
def test_char_tokenizer_round_trips_and_gives_one_id_per_character(text, tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    vocab = char_tokenizer_json(d)
    tok = load_tokenizer(d)
    ids = tok.encode(text)
    assert ids == [vocab[c] for c in text]
    assert tok.decode(ids) == text


def test_special_ids_come_from_config_json_when_present(tmp_path):
    """config.json is what the model was trained with, so it wins over token names."""
    char_tokenizer_json(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(
        {"mask_token_id": 3, "eos_token_id": [1, 2], "pad_token_id": 0}))
    tok = load_tokenizer(tmp_path)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (3, 1, 0)
    assert tok.bos_token_id == 1  # not in config.json: found by its token string <|bos|>


def test_special_ids_are_found_by_token_string_without_config(tmp_path):
    char_tokenizer_json(tmp_path)
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert tok.vocab_size == len(SPECIALS) + len(ALPHABET)


def test_llada_mask_string_is_recognised(tmp_path):
    char_tokenizer_json(tmp_path, specials=["<|endoftext|>", "<|mdm_mask|>", "<|unk|>"])
    assert load_tokenizer(tmp_path).mask_token_id == 1


def test_no_mask_token_is_an_error(tmp_path):
    char_tokenizer_json(tmp_path, specials=["<|eos|>", "<|unk|>"])
    with pytest.raises(ValueError, match="mask"):
        load_tokenizer(tmp_path)


def test_missing_tokenizer_json_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a tokenizer"])
def test_corrupt_tokenizer_json_is_an_error_naming_it(damage, tmp_path):
    char_tokenizer_json(tmp_path)
    f = tmp_path / "tokenizer.json"
    text = f.read_text()
    f.write_text({"truncated": text[: len(text) // 2], "garbage": "\x00\x01 not json",
                  "not a tokenizer": json.dumps({"model": {"type": "Nope"}})}[damage])
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a readable tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_corrupt_config_json_beside_the_tokenizer_is_an_error_naming_it(tmp_path):
    char_tokenizer_json(tmp_path)
    (tmp_path / "config.json").write_text('{"mask_token_id": ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_tokenizer(tmp_path)


def test_toy_char_tokenizer_works_through_the_wrapper(tmp_path):
    """The toy models' own tokenizer.json (built in toy_models/) loads unchanged."""
    char = pytest.importorskip("fairref.toy.char_tokenizer")
    char.write_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(char.special_token_ids()))
    tok = load_tokenizer(tmp_path)
    assert tok.mask_token_id == char.MASK_ID and tok.eos_token_id == char.EOS_ID
    assert tok.bos_token_id == char.BOS_ID and tok.pad_token_id == char.PAD_ID
    v = char.vocab()
    sample = "".join(sorted(set(char.ALPHABET)))[:10]
    assert tok.encode(sample) == [v[c] for c in sample]
    assert tok.decode(tok.encode(sample)) == sample


# --- chat formats -------------------------------------------------------------------------------


def render_template(template: str, messages: list[dict], bos: str) -> str:
    """The oracle: the chat template rendered by Jinja the way Hugging Face renders it."""
    jinja2 = pytest.importorskip("jinja2.sandbox")
    env = jinja2.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token=bos,
                                            add_generation_prompt=True)


# hard cases by construction: whitespace at either end (LLaDA trims it, Dream keeps it),
# empty contents, newlines and the chat markers' own characters inside the content
_WS = st.sampled_from(["", " ", "\n", "\t ", " \n\n"])
_CONTENT = st.tuples(_WS, st.text(alphabet="ab <|>\n\u00e9", max_size=12), _WS).map("".join)
_ROLE = st.sampled_from(["system", "user", "assistant"])
_MESSAGES = st.lists(st.fixed_dictionaries({"role": _ROLE, "content": _CONTENT}),
                     min_size=1, max_size=4)


@given(messages=_MESSAGES)
def test_llada_chat_format_equals_the_published_template_rendered_by_jinja(messages):
    """apply_chat_format('llada') is the chat_template of LLaDA-8B-Instruct's
    tokenizer_config.json, for any conversation: BOS, trimmed turns, assistant header."""
    assert apply_chat_format("llada", messages) == render_template(
        LLADA_CHAT_TEMPLATE, messages, "<|startoftext|>")


@given(messages=_MESSAGES)
def test_dream_chat_format_equals_the_qwen2_template_rendered_by_jinja(messages):
    """apply_chat_format('dream') is Qwen2's ChatML template: the default system turn
    exactly when the first message is not a system one, contents untrimmed, no BOS."""
    assert apply_chat_format("dream", messages) == render_template(
        DREAM_CHAT_TEMPLATE, messages, "<|beginoftext|>")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_prompt_string_is_one_user_turn(family):
    assert apply_chat_format(family, "2+2=") == apply_chat_format(
        family, [{"role": "user", "content": "2+2="}])


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty list"),
    ([{"role": "user"}], r"messages\[0\] must be a dict with exactly the keys"),
    ([{"role": "tool", "content": "x"}], r"messages\[0\]: role must be one of"),
    ([{"role": "user", "content": 3}], r"messages\[0\]: role must be one of .* content a string"),
])
def test_malformed_messages_are_errors_saying_what_is_wrong(messages, match):
    with pytest.raises(ValueError, match=match):
        apply_chat_format("llada", messages)
    with pytest.raises(ValueError, match="chat format must be one of"):
        apply_chat_format("qwen3", "hi")


@pytest.mark.parametrize("arch,markers", [
    ("llada", ["<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    ("dream", ["<|im_start|>", "<|im_end|>"])])
def test_chat_prompt_encodes_each_marker_as_its_special_id(arch, markers, tmp_path):
    """On a tokenizer with the real special-token layout, every marker of the format is one
    token with its special id (not spelled out in characters), and decoding gives the text."""
    tok = load_tokenizer(write_tiny_instruct(tmp_path / arch, arch))
    assert tok.chat_format == arch
    ids = encode_chat(tok, "Hi")
    text = apply_chat_format(arch, "Hi")
    assert tok.decode(ids) == text
    for m in markers:
        assert ids.count(tiny_special_id(arch, m)) == text.count(m) > 0
    assert ("<" not in tok.decode([i for i in ids if i < 128]))  # no marker spelled out
    if arch == "llada":
        assert ids[0] == tok.bos_token_id == tiny_special_id("llada", "<|startoftext|>")


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_encode_prompts_with_chat_lays_out_each_prompt_as_a_user_turn(arch, tmp_path):
    """PromptFormat(chat=True): each prompt is encode_chat of it, left-padded; add_bos does
    not add a second BOS."""
    tok = load_tokenizer(write_tiny_instruct(tmp_path / arch, arch))
    prompts = ["Hi", "What is 2+2?"]
    ids, attn = encode_prompts(tok, prompts, PromptFormat(chat=True, add_bos=True))
    rows = [encode_chat(tok, p) for p in prompts]
    P = max(map(len, rows))
    assert ids.tolist() == [[tok.pad_token_id] * (P - len(r)) + r for r in rows]
    assert attn.tolist() == [[False] * (P - len(r)) + [True] * len(r) for r in rows]


@pytest.mark.parametrize("how", ["no tokenizer_config.json", "no chat_template"])
def test_chat_prompt_for_a_model_without_a_chat_format_is_an_error(how, tmp_path):
    d = write_tiny_instruct(tmp_path / "m", "llada", chat_template=(how != "no chat_template"))
    if how == "no tokenizer_config.json":
        (d / "tokenizer_config.json").unlink()
    tok = load_tokenizer(d)
    assert tok.chat_format is None
    with pytest.raises(ValueError, match="this model has no chat format.*without --chat"):
        encode_prompts(tok, ["hi"], PromptFormat(chat=True))


@pytest.mark.parametrize("arch,missing", [("llada", "<|eot_id|>"), ("dream", "<|im_end|>")])
def test_tokenizer_lacking_a_special_token_of_its_chat_format_is_an_error_naming_it(
        arch, missing, tmp_path):
    tok = load_tokenizer(write_tiny_instruct(tmp_path / arch, arch, drop=(missing,)))
    with pytest.raises(ValueError, match=rf"lacks the special token\(s\) \['{re.escape(missing)}'\]"
                                         rf" of the {arch} chat format"):
        encode_chat(tok, "hi")


@pytest.mark.parametrize("arch,mask", [("llada", "<|mdm_mask|>"), ("dream", "<|mask|>")])
def test_tokenizer_without_the_mask_token_is_an_error_even_when_config_gives_its_id(
        arch, mask, tmp_path):
    """config.json names the mask id, but the tokenizer.json has an ordinary token there:
    the tokenizer is not this model's, which would otherwise pass unnoticed."""
    d = write_tiny_instruct(tmp_path / arch, arch, drop=(mask,))
    mask_id = tiny_instruct_raw(arch)["mask_token_id"]
    with pytest.raises(ValueError, match=r"tokenizer\.json: the tokenizer has no mask token: "
                                         rf"mask_token_id={mask_id}"):
        load_tokenizer(d)


def test_config_and_tokenizer_disagreeing_on_the_mask_id_is_an_error(tmp_path):
    char_tokenizer_json(tmp_path)  # <|mask|> is id 3
    (tmp_path / "config.json").write_text(json.dumps({"mask_token_id": 4}))
    with pytest.raises(ValueError, match=r"mask_token_id=4 is the token '<\|unk\|>', but this "
                                         r"tokenizer's mask token '<\|mask\|>' is id 3"):
        load_tokenizer(tmp_path)
