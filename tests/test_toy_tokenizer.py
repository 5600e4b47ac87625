"""The character tokenizer of the toy models (toy_models/char_tokenizer.py; SPEC §7).

The oracle for ids is the vocabulary itself: character c must map to ``vocab()[c]``; the
decoded string must equal the input. Both readers are checked: the ``tokenizers`` library
directly, and ``fairref.models.load_tokenizer`` (what every toy run uses).
"""

import json

import pytest
import torch
from tokenizers import Tokenizer

from fairref.models import load_tokenizer
from fairref.toy.char_tokenizer import (
    BOS_ID,
    EOS_ID,
    GEN_LEN,
    MASK_ID,
    PAD_ID,
    PROMPT_LEN,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    decode_completion,
    encode_answers,
    encode_prompts,
    special_token_ids,
    vocab,
    write_tokenizer,
)
from fairref.toy.tasks import ALPHABET, TASKS, check, make_problems


def all_task_strings():
    out = []
    for task in TASKS:
        for split in ("train", "heldout"):
            for p, a in make_problems(task, 200, seed=5, split=split):
                out += [p, a]
    return out + [ALPHABET]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chartok")
    write_tokenizer(d)
    return d


def test_every_task_string_round_trips_through_tokenizers(tok_dir):
    """Tokenizer.from_file encodes one id per character (the vocab's id) and decodes back."""
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    v = vocab()
    for s in all_task_strings():
        ids = tok.encode(s).ids
        assert ids == [v[c] for c in s]
        assert tok.decode(ids) == s


def test_every_task_string_round_trips_through_fairref_load_tokenizer(tok_dir):
    """fairref's loader finds the special ids by name and round-trips every string."""
    t = load_tokenizer(tok_dir)
    assert (t.mask_token_id, t.eos_token_id, t.pad_token_id, t.bos_token_id) == (
        MASK_ID, EOS_ID, PAD_ID, BOS_ID)
    assert t.vocab_size == VOCAB_SIZE
    for s in all_task_strings():
        assert t.decode(t.encode(s)) == s


def test_special_tokens_are_single_ids_and_skippable(tok_dir):
    """Each special token string encodes to its own id; decode can skip them."""
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.encode(s).ids == [i]
    assert tok.decode([BOS_ID, vocab()["7"], EOS_ID], skip_special_tokens=True) == "7"
    assert special_token_ids()["mask_token_id"] == MASK_ID


def test_fixed_length_encoding_left_pads_prompts_and_eos_pads_answers():
    """Prompts: pads, BOS, characters (length P); answers: characters, EOS up to G."""
    (p, a), = make_problems("cmax", 1, seed=0)
    x = encode_prompts([p])[0]
    y = encode_answers([a])[0]
    n_pad = PROMPT_LEN - 1 - len(p)
    assert x.tolist() == [PAD_ID] * n_pad + [BOS_ID] + [vocab()[c] for c in p]
    assert y.tolist() == [vocab()[c] for c in a] + [EOS_ID] * (GEN_LEN - len(a))
    assert decode_completion(y) == a
    with pytest.raises(ValueError, match="outside the task alphabet"):
        encode_prompts(["M:12?="])


def test_a_mask_before_eos_makes_a_completion_wrong():
    """A completion that still holds a mask (or any special) before EOS never counts."""
    (p, a), = make_problems("sort", 1, seed=0)
    y = encode_answers([a])[0].clone()
    y[1] = MASK_ID
    assert not check("sort", p, decode_completion(y))
    y = encode_answers([a])[0]
    assert check("sort", p, decode_completion(torch.cat([y[:len(a)], y.new_tensor([EOS_ID, MASK_ID])])))


def test_shipped_tokenizers_equal_the_generated_one(tok_dir):
    """The tokenizer.json in each shipped checkpoint is the one this module writes, and the
    checkpoint's config.json carries the same special ids."""
    from fairref.toy import TOY_MODELS, checkpoint_dir

    want = json.loads((tok_dir / "tokenizer.json").read_text())
    for path in (checkpoint_dir(a) for a in TOY_MODELS):
        assert json.loads((path / "tokenizer.json").read_text()) == want
        cfg = json.loads((path / "config.json").read_text())
        for k, v in special_token_ids().items():
            assert cfg[k] == v, k
