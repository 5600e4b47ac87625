"""tokenizer.json wrapper (SPEC §7): encode/decode and the special ids."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from fairref.models import load_tokenizer

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
        {"mask_token_id": 4, "eos_token_id": [1, 2], "pad_token_id": 0}))
    tok = load_tokenizer(tmp_path)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (4, 1, 0)
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
