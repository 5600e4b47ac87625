"""The one sampling entry point (fairref/diffusion/generate.py; SPEC §2) and prompt encoding.

``generate`` must be nothing but a faithful dispatch: for every setting it produces exactly
the tokens of the architecture's own loop called directly. Settings and generation_config
keys that the model's loop does not use are errors that name them, never silently ignored.
"""

import json

import pytest
import torch

from fairref.diffusion import (
    SamplerSettings,
    complete,
    dream_generate,
    generate,
    llada_generate,
    load_generation_config,
    sampler_family,
)
from fairref.models import PromptFormat, build, encode_prompts, load, load_tokenizer
from fairref.toy import checkpoint_dir
from fairref.toy.tasks import make_problems, solve
from tiny import tiny_config

V, MASK, EOS, PAD = 24, 23, 22, 21


def _model(arch):
    torch.manual_seed(0)
    return build(tiny_config(arch, V, MASK, EOS, PAD)).eval()


@pytest.mark.parametrize("record", [False, True])
def test_generate_is_the_llada_loop_token_for_token(record):
    model = _model("llada")
    ids = torch.randint(0, 20, (3, 5))
    s = SamplerSettings(steps=4, gen_length=8, block_length=4, temperature=0.7, remasking="random")
    got = generate(model, ids, s, generator=torch.Generator().manual_seed(3), record=record)
    want = llada_generate(model, ids, 4, 8, 4, temperature=0.7, remasking="random",
                          generator=torch.Generator().manual_seed(3), record=record)
    got_x, want_x = (got[0], want[0]) if record else (got, want)
    assert torch.equal(got_x, want_x)
    if record:
        assert torch.equal(got[1].x, want[1].x) and torch.equal(got[1].tau, want[1].tau)


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
def test_generate_is_the_dream_loop_token_for_token(alg):
    model = _model("dream")
    ids = torch.randint(0, 20, (2, 5))
    s = SamplerSettings(steps=5, gen_length=8, alg=alg, temperature=0.5)
    got = generate(model, ids, s, generator=torch.Generator().manual_seed(1))
    want = dream_generate(model, ids, 5, 8, alg=alg, temperature=0.5,
                          generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, want)


def test_block_length_none_means_one_block():
    model = _model("llada")
    ids = torch.randint(0, 20, (2, 4))
    assert torch.equal(generate(model, ids, SamplerSettings(steps=4, gen_length=8)),
                       llada_generate(model, ids, 4, 8, 8))


@pytest.mark.parametrize("arch, field, value", [("llada", "alg", "entropy"),
                                                ("llada", "top_k", 3),
                                                ("dream", "block_length", 4),
                                                ("dream", "remasking", "random")])
def test_a_setting_the_models_loop_does_not_use_is_an_error_naming_it(arch, field, value):
    model = _model(arch)
    with pytest.raises(ValueError, match=field):
        generate(model, torch.zeros(1, 3, dtype=torch.long), SamplerSettings(**{field: value}))


@pytest.mark.parametrize("kw", [dict(steps=0), dict(gen_length=0), dict(block_length=0),
                                dict(temperature=-1.0), dict(alg="greedy"),
                                dict(remasking="lowest")])
def test_invalid_settings_are_refused_at_construction(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        SamplerSettings(**kw)


def test_generation_config_keys_of_the_other_sampler_are_errors(tmp_path):
    f = tmp_path / "generation_config.json"
    f.write_text(json.dumps({"steps": 4, "alg": "maskgit_plus"}))
    with pytest.raises(ValueError, match="'alg' is a Dream sampler option"):
        load_generation_config(tmp_path, "llada")
    f.write_text(json.dumps({"steps": 4, "block_length": 4}))
    with pytest.raises(ValueError, match="'block_length' is a LLaDA sampler option"):
        load_generation_config(tmp_path, "dream")
    f.write_text(json.dumps({"stepz": 4}))
    with pytest.raises(ValueError, match="'stepz' is not a sampler or prompt-format key"):
        load_generation_config(tmp_path, "dream")
    f.write_text(json.dumps({"steps": "8"}))
    with pytest.raises(ValueError, match="steps"):
        load_generation_config(tmp_path, "dream")
    f.write_text("{not json")
    with pytest.raises(ValueError, match="generation_config.json"):
        load_generation_config(tmp_path, "dream")


def test_a_missing_generation_config_gives_the_defaults(tmp_path):
    assert load_generation_config(tmp_path, "llada") == (SamplerSettings(), PromptFormat())


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_shipped_toy_generation_configs_load_strictly(arch):
    d = checkpoint_dir(arch)
    settings, fmt = load_generation_config(d, sampler_family(load(d)))
    assert fmt == PromptFormat(add_bos=True, prompt_length=16)
    assert settings.steps == 8 and settings.gen_length == 16


def test_encode_prompts_fixed_length_pads_are_visible_and_bos_leads():
    tok = load_tokenizer(checkpoint_dir("llada"))
    ids, attn = encode_prompts(tok, ["S:12=", "c:1=2"], PromptFormat(add_bos=True, prompt_length=8))
    assert attn is None and ids.shape == (2, 8)
    for row, text in zip(ids.tolist(), ["S:12=", "c:1=2"]):
        body = [tok.bos_token_id] + tok.encode(text)
        assert row == [tok.pad_token_id] * (8 - len(body)) + body


def test_encode_prompts_unequal_lengths_get_a_mask_on_the_left_padding():
    tok = load_tokenizer(checkpoint_dir("llada"))
    ids, attn = encode_prompts(tok, ["S:1=", "S:123="])
    assert ids.shape == (2, 6)
    assert attn.tolist() == [[False, False, True, True, True, True], [True] * 6]
    assert encode_prompts(tok, ["S:1="])[1] is None  # nothing padded, no mask


def test_encode_prompts_refuses_a_prompt_longer_than_the_format():
    tok = load_tokenizer(checkpoint_dir("llada"))
    with pytest.raises(ValueError, match="prompt_length=3"):
        encode_prompts(tok, ["S:12345="], PromptFormat(prompt_length=3))


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_complete_answers_sort_problems_as_the_task_solver_does(arch):
    """The README quick start: text in, the right answer out, with the model's own prompt
    format (a naive call without BOS and fixed-length padding answers nonsense). The
    oracle is the task's own solver; the shipped models score ~99% on sort, so 3 of 3
    easy problems is what a working pipeline gives."""
    d = checkpoint_dir(arch)
    model, tok = load(d), load_tokenizer(d)
    settings, fmt = load_generation_config(d, sampler_family(model))
    prompts = ["S:38383113="] + [p for p, _ in make_problems("sort", 2, seed=5, split="heldout")]
    assert complete(model, tok, prompts, settings, fmt) == [solve("sort", p) for p in prompts]


def test_complete_refuses_a_mask_token_inside_a_prompt():
    d = checkpoint_dir("llada")
    model, tok = load(d), load_tokenizer(d)
    with pytest.raises(ValueError, match="mask token"):
        complete(model, tok, ["S:1<|mask|>2="])


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_published_generation_configs_load(tmp_path, arch):
    """The generation_config.json of the real instruct checkpoints (Hugging Face metadata,
    Dream's null options) loads; its sampler keys are honoured."""
    from tiny import write_tiny_instruct

    d = write_tiny_instruct(tmp_path / arch, arch)
    settings, fmt = load_generation_config(d, arch)
    if arch == "dream":
        assert settings.alg == "origin" and settings.steps == 512 and settings.top_k is None
    assert fmt == PromptFormat()
