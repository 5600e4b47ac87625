"""The toy models' sampler (fairref.toy.evaluate.toy_sampler; SPEC §2, §3.1; issue #11).

One source of truth: every run of a shipped toy uses the settings of its checkpoint's
generation_config.json. These tests check that the function reads that file (not a copy in
code), that what a retrain writes (fairref.toy.presets) is what ships, and the property the
LLaDA toy's semi-autoregressive sampler was chosen for: its earliest commits (steps 0 and 1)
are answer characters, never EOS (in one block of 16 they were 93% EOS,
paper_repro/results/sampler_regime.md).

Legend: B batch, P prompt length, G generation length, L = P + G, V vocabulary.
"""

import itertools
import json
import shutil

import pytest
import torch

from fairref.diffusion import SamplerSettings, generate
from fairref.models import load
from fairref.toy import TOY_MODELS, checkpoint_dir
from fairref.toy.char_tokenizer import EOS_ID, encode_prompts
from fairref.toy.evaluate import describe_sampler, toy_sampler
from fairref.toy.presets import generation_config
from fairref.toy.tasks import TASKS, make_problems

#: a logit margin no float32 summation order can cross in these 4-block toys: their logits
#: are O(10), so a change of evaluation order moves them by O(1e-5) at most (rounding
#: ~6e-8 relative per operation over a few hundred dependent operations); the margins
#: asserted against it (EOS below the argmax) are measured at ≥ 8.5
DELTA = 0.05


@pytest.mark.parametrize("arch", sorted(TOY_MODELS))
def test_toy_sampler_equals_the_fields_of_the_checkpoints_generation_config(arch):
    """The file, parsed independently with json, sets exactly the fields it names; every
    other field keeps the SamplerSettings default."""
    raw = json.loads((checkpoint_dir(arch) / "generation_config.json").read_text())
    s = toy_sampler(arch)
    for f in SamplerSettings.__dataclass_fields__:
        want = raw.get(f, getattr(SamplerSettings(), f))
        assert getattr(s, f) == want, f
    assert toy_sampler(TOY_MODELS[arch]) == s  # the folder name works too


@pytest.mark.parametrize("arch", sorted(TOY_MODELS))
def test_what_a_retrain_writes_is_the_shipped_generation_config(arch):
    """``toy_models/train.py`` writes ``presets.generation_config(arch)``; it must be the
    shipped file, key for key, or a retrained toy would silently change its sampler."""
    raw = json.loads((checkpoint_dir(arch) / "generation_config.json").read_text())
    assert generation_config(arch) == raw


def test_toy_sampler_follows_the_file_not_a_copy_in_code(tmp_path, monkeypatch):
    """A changed generation_config.json changes toy_sampler (read on every call)."""
    for folder in TOY_MODELS.values():
        shutil.copytree(checkpoint_dir(folder), tmp_path / folder)
    monkeypatch.setenv("FAIRREF_TOY_MODELS", str(tmp_path))
    f = tmp_path / "llada_toy" / "generation_config.json"
    raw = json.loads(f.read_text())
    f.write_text(json.dumps({**raw, "block_length": 8, "steps": 4}))
    assert toy_sampler("llada").block_length == 8 and toy_sampler("llada").steps == 4
    f.write_text(json.dumps({**raw, "alg": "entropy"}))
    with pytest.raises(ValueError, match="alg"):  # a Dream key in a LLaDA file
        toy_sampler("llada")


def test_toy_sampler_of_an_unknown_toy_names_the_known_ones():
    with pytest.raises(ValueError, match="llada"):
        toy_sampler("gpt")


def test_the_llada_toy_ships_semi_autoregressive_decoding():
    """The decision of issue #11: blocks shorter than G, each given a whole number of steps
    (LLaDA's loop requires both), so decoding runs block by block as LLaDA-Instruct does."""
    s = toy_sampler("llada")
    assert s.block_length is not None and s.block_length < s.gen_length
    assert s.gen_length % s.block_length == 0
    assert s.steps % (s.gen_length // s.block_length) == 0


def test_describe_sampler_names_the_regime():
    assert describe_sampler(toy_sampler("llada"), "llada") == (
        "LLaDA low_confidence, 16 tokens in 8 steps, blocks of 4, temperature 0")
    assert "one block" in describe_sampler(SamplerSettings(block_length=16), "llada")
    assert describe_sampler(toy_sampler("dream"), "dream").startswith("Dream maskgit_plus")


@pytest.mark.slow  # ~10 s of CPU: one rollout of 64 prompts and a few batched forwards
def test_llada_toys_earliest_commits_are_answer_tokens_never_eos():
    """Under the shipped sampler the positions written at steps 0 and 1 hold no EOS: counted
    exactly on the run, and proved for every machine. Step 0 sees x_0 = prompt + masks, the
    same input everywhere: at every position of the first block the argmax leads EOS by ≥
    DELTA, so step 0 writes no EOS on any machine. Which k_0 positions step 0 writes, and
    at a near-tied position which token, can depend on rounding (near-certain candidates tie
    in confidence; `pick`'s two modes tie in token), so step 1 is checked on *every* state
    step 0 could leave: each k_0-subset of the block, each position holding any token
    within DELTA of its argmax. (Under one block of 16 the check
    fails at once: the EOS tail is inside the active block at step 0.)"""
    model = load(checkpoint_dir("llada")).eval()
    s = toy_sampler("llada")
    prompts = [p for t in TASKS for p, _ in make_problems(t, 16, 5, split="heldout")]
    ids = encode_prompts(prompts)  # (B, P)
    B, P = ids.shape
    with torch.no_grad():
        _, trace = generate(model, ids, s, record=True)
    early = trace.committed[:2]  # (2, B, L) positions written at steps 0 and 1
    # the exact count on this run: integer token ids at the written positions
    assert int(early.sum()) > 0
    assert int((trace.cand[:2][early] == EOS_ID).sum()) == 0

    block = list(range(P, P + s.block_length))  # the first block: all of steps 0 and 1
    assert not early[..., P + s.block_length:].any()
    k0 = int(trace.k[0, 0])
    assert (trace.k[0] == k0).all() and 0 < k0 < s.block_length
    with torch.no_grad():
        z0 = model.logits(trace.x[0])  # (B, L, V), x_0 = prompt + masks
    z_blk = z0[:, block]  # (B, b, V)
    z_max = z_blk.max(dim=-1, keepdim=True).values  # (B, b, 1)
    assert ((z_max[..., 0] - z_blk[..., EOS_ID]) >= DELTA).all()  # EOS never the argmax
    near = z_blk > z_max - DELTA  # (B, b, V): every token rounding could make the argmax
    # every state step 0 can leave: a k0-subset of the block, each position holding one of
    # its near-argmax tokens
    states = []
    for n in range(B):
        options = [near[n, j].nonzero()[:, 0].tolist() for j in range(s.block_length)]
        for subset in itertools.combinations(range(s.block_length), k0):
            for toks in itertools.product(*(options[j] for j in subset)):
                x1 = trace.x[0, n].clone()  # (L,)
                x1[[P + j for j in subset]] = torch.tensor(toks)
                states.append(x1)
    assert len(states) >= B * len(list(itertools.combinations(range(s.block_length), k0)))
    x1_all = torch.stack(states)  # (C, L), C states in all
    with torch.no_grad():
        z1 = model.logits(x1_all)[:, block]  # (C, b, V)
    still_masked = (x1_all[:, block] == model.mask_token_id)  # (C, b)
    eos_gap = z1.max(dim=-1).values - z1[..., EOS_ID]  # (C, b)
    assert int(still_masked.sum()) == len(states) * (s.block_length - k0)
    assert (eos_gap[still_masked] >= DELTA).all()
