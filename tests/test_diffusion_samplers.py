"""Properties of the LLaDA and Dream samplers (SPEC §2) with oracle and spy models.

- A model that is certain of a target sequence must produce it, whatever the schedule.
- Commit counts follow the schedules; committed tokens and the prompt never change.
- Randomness comes only from the generator; at temperature 0 none is drawn.
- ``attention_mask`` reaches ``model.logits``, extended over the generated region.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import dream_generate, llada_generate


V, MASK = 10, 9
ALGS = ["origin", "maskgit_plus", "topk_margin", "entropy"]


class TargetOracle:
    """Logits ``strength[i] · onehot(target[i])`` at every position i, whatever the input.

    A strength of 800 makes the target certain even under sampling: exp(800) overflows to
    +inf in LLaDA's float64 Gumbel-max, and exp(−800/T) underflows to an exact 0 in Dream's
    softmax for T ≤ 2, so no other token can be drawn."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, target, strength):
        self.target = target  # (B, L)
        self.strength = strength  # (L,)

    def logits(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        z = torch.zeros(B, L, V)
        tgt = self.target.repeat(B // self.target.shape[0], 1)  # (B, L); CFG doubles B
        z.scatter_(-1, tgt[..., None], self.strength[:L].expand(B, L)[..., None].float())
        return z  # (B, L, V)


class Spy:
    """Wraps a model and keeps every (input_ids, attention_mask) it was called with."""

    def __init__(self, model):
        self.model, self.mask_token_id, self.logit_shift = model, model.mask_token_id, 0
        self.calls = []

    def logits(self, input_ids, attention_mask=None):
        self.calls.append((input_ids.clone(),
                           None if attention_mask is None else attention_mask.clone()))
        return self.model.logits(input_ids, attention_mask)


class ContextLM:
    """A random model whose logits depend on the whole sequence, honour the padding mask
    (pads leave the context mean) and use positions counted from the *end*, so that left
    padding changes nothing when the mask is passed. The mask id is never proposed."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        self.E, self.W = torch.randn(V, 8, generator=g), torch.randn(8, V, generator=g) * 3
        self.pos = torch.randn(64, 8, generator=g)

    def logits(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        keep = torch.ones(B, L) if attention_mask is None else attention_mask.float()
        h = self.E[input_ids]  # (B, L, 8)
        ctx = (h * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None]
        h = h + self.pos[:L].flip(0)  # position counted from the end of the sequence
        z = torch.tanh(h + ctx) @ self.W  # (B, L, V)
        z[..., MASK] = -1e4
        return z


def _target(draw, B, L):
    return torch.tensor(draw(st.lists(st.lists(st.integers(0, MASK - 1), min_size=L,
                                                max_size=L), min_size=B, max_size=B)))


@given(st.data(), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 4), st.sampled_from([0.0, 1.0, 2.0]), st.sampled_from([0.0, 2.0]),
       st.sampled_from(["low_confidence", "random"]))
def test_llada_reproduces_the_target_of_a_certain_model(data, block_length, n_blocks, per_block,
                                                        B, P, temperature, cfg, remasking):
    """Any block layout, step count, batch, temperature, guidance and remasking rule: a
    model certain of y writes y. Strengths at temperature 0 include ties and weak peaks
    (1..50), since only the argmax matters there."""
    G = block_length * n_blocks
    target = _target(data.draw, B, P + G)
    lo = 800 if temperature > 0 else 1
    strength = torch.tensor(data.draw(st.lists(st.sampled_from([lo, 50, 800]), min_size=P + G,
                                               max_size=P + G)))
    prompt = target[:, :P]
    out = llada_generate(TargetOracle(target, strength), prompt, per_block * n_blocks, G,
                         block_length, temperature=temperature, cfg_scale=cfg,
                         remasking=remasking, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, target)


@given(st.data(), st.sampled_from(ALGS), st.integers(1, 20), st.integers(1, 12),
       st.integers(1, 3), st.integers(1, 4), st.sampled_from([0.0, 0.7, 2.0]),
       st.sampled_from([None, 0.5]), st.sampled_from([None, 0.9]), st.sampled_from([None, 1, 3]))
def test_dream_reproduces_the_target_of_a_certain_model(data, alg, steps, G, B, P, temperature,
                                                        alg_temp, top_p, top_k):
    """Every alg, step count (fewer or more than tokens), batch, temperature, alg_temp and
    filter: a model certain of y writes y."""
    target = _target(data.draw, B, P + G)
    strength = torch.full((P + G,), 800)
    out = dream_generate(TargetOracle(target, strength), target[:, :P], steps, G, alg=alg,
                         alg_temp=alg_temp, temperature=temperature, top_p=top_p, top_k=top_k,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, target)


def _states(spy, B):
    """The states x_t the sampler showed the model (the conditional half under CFG)."""
    return torch.stack([ids[:B] for ids, _ in spy.calls])  # (T, B, L)


@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 500), st.sampled_from(["low_confidence", "random"]))
def test_llada_commits_follow_the_block_schedule_and_never_change(block_length, n_blocks,
                                                                  per_block, B, seed, remasking):
    """Between consecutive states exactly k_t positions inside the current block go from
    mask to a token, k_t the even split with remainder first; nothing else changes, so the
    prompt and every committed token stay put."""
    G, P = block_length * n_blocks, 2
    spy = Spy(ContextLM(seed))
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(seed))
    out = llada_generate(spy, prompt, per_block * n_blocks, G, block_length,
                         remasking=remasking, generator=torch.Generator().manual_seed(seed))
    X = torch.cat([_states(spy, B), out[None]])  # (T + 1, B, L)
    assert len(spy.calls) == per_block * n_blocks
    for t in range(X.shape[0] - 1):
        blk, i = divmod(t, per_block)
        lo, hi = P + blk * block_length, P + (blk + 1) * block_length
        changed = X[t + 1] != X[t]  # (B, L)
        assert bool((X[t][changed] == MASK).all()), "a committed token changed"
        assert not changed[:, :lo].any() and not changed[:, hi:].any()
        want = [block_length // per_block + (1 if i < block_length % per_block else 0)] * B
        assert changed.sum(1).tolist() == want
    assert torch.equal(out[:, :P], prompt) and not bool((out == MASK).any())


@given(st.sampled_from(ALGS[1:]), st.integers(1, 20), st.integers(1, 12), st.integers(1, 3),
       st.integers(0, 500))
def test_dream_commits_int_mean_masked_times_one_minus_s_over_t(alg, steps, G, B, seed):
    """Dream writes k = int(n̄(1 − s/t)) positions per row per step (float32 arithmetic,
    checked with NumPy float32), everything left at the last step; nothing else changes."""
    P, eps = 3, 1e-3
    spy = Spy(ContextLM(seed))
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(seed))
    out = dream_generate(spy, prompt, steps, G, alg=alg, eps=eps)
    X = torch.cat([_states(spy, B), out[None]])  # (T + 1, B, L)
    ts = torch.linspace(1, eps, steps + 1).numpy()  # float32 grid, as the public loop
    for t in range(steps):
        changed = X[t + 1] != X[t]
        assert bool((X[t][changed] == MASK).all()) and not changed[:, :P].any()
        n_bar = np.float32((X[t] == MASK).sum().item()) / np.float32(B)
        k = int(n_bar) if t == steps - 1 else int(n_bar * (np.float32(1) - ts[t + 1] / ts[t]))
        assert changed.sum(1).tolist() == [k] * B
    assert torch.equal(out[:, :P], prompt) and not bool((out == MASK).any())


@pytest.mark.parametrize("sampler", ["llada_random", "llada_gumbel", "dream_origin",
                                     "dream_alg_temp", "dream_sampled"])
def test_same_generator_seed_gives_the_same_tokens_and_the_global_rng_is_untouched(sampler):
    """Random runs are reproducible from the generator alone and never touch the global RNG
    (so a caller's other random streams are not shifted)."""
    model = ContextLM(3)
    prompt = torch.randint(0, MASK, (3, 4), generator=torch.Generator().manual_seed(0))
    run = {
        "llada_random": lambda g: llada_generate(model, prompt, 8, 8, 4, remasking="random",
                                                 generator=g),
        "llada_gumbel": lambda g: llada_generate(model, prompt, 8, 8, 4, temperature=1.0,
                                                 generator=g),
        "dream_origin": lambda g: dream_generate(model, prompt, 6, 8, alg="origin",
                                                 temperature=1.0, generator=g),
        "dream_alg_temp": lambda g: dream_generate(model, prompt, 6, 8, alg_temp=0.5,
                                                   generator=g),
        "dream_sampled": lambda g: dream_generate(model, prompt, 6, 8, temperature=1.0,
                                                  top_p=0.9, generator=g),
    }[sampler]
    before = torch.get_rng_state()
    outs = [run(torch.Generator().manual_seed(s)) for s in (7, 7, 8, 9, 10)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(outs[0], outs[1])
    # the generator is really used: some other seed gives other tokens
    assert any(not torch.equal(outs[0], o) for o in outs[2:])


@pytest.mark.parametrize("sampler", ["llada", "dream_maskgit_plus", "dream_topk_margin",
                                     "dream_entropy"])
def test_greedy_runs_draw_no_random_numbers(sampler):
    """At temperature 0 with a deterministic rule, the generator's state is unchanged."""
    model = ContextLM(5)
    prompt = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(123)
    before = g.get_state()
    if sampler == "llada":
        llada_generate(model, prompt, 8, 8, 4, generator=g, cfg_scale=1.0)
    else:
        dream_generate(model, prompt, 6, 8, alg=sampler.removeprefix("dream_"), generator=g)
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize("sampler, cfg", [("llada", 0.0), ("llada", 1.5), ("dream", 0.0)])
def test_attention_mask_reaches_the_model_and_left_padding_changes_nothing(sampler, cfg):
    """Every forward sees the prompt's mask followed by True over the generated region
    (twice, stacked, under CFG); with a model that honours it, a left-padded prompt
    generates exactly what the unpadded prompt does, whatever the pad id."""
    G, P = 8, 4
    prompt = torch.randint(0, MASK, (1, P), generator=torch.Generator().manual_seed(1))

    def run(model, ids, mask):
        if sampler == "llada":
            return llada_generate(model, ids, 8, G, 4, cfg_scale=cfg, attention_mask=mask)
        return dream_generate(model, ids, 8, G, attention_mask=mask)

    ref = run(ContextLM(2), prompt, None)
    for pad in (0, 5):
        ids = torch.cat([torch.full((1, 2), pad), prompt], dim=1)  # (1, P + 2)
        mask = torch.tensor([[False, False] + [True] * P])
        spy = Spy(ContextLM(2))
        out = run(spy, ids, mask)
        assert torch.equal(out[:, 2:], ref)
        want = torch.cat([mask, torch.ones(1, G, dtype=torch.bool)], dim=1)  # (1, L)
        if cfg:
            want = torch.cat([want, want])
        assert all(m is not None and torch.equal(m, want) for _, m in spy.calls)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=8, gen_length=10, block_length=4), "block_length"),
    (dict(steps=3, gen_length=8, block_length=4), "number of blocks"),
    (dict(steps=8, gen_length=8, block_length=4, remasking="top"), "remasking"),
    (dict(steps=0, gen_length=8, block_length=4), "steps"),
])
def test_llada_rejects_bad_settings_with_a_named_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        llada_generate(ContextLM(0), torch.zeros(1, 2, dtype=torch.long), **kwargs)


def test_samplers_reject_a_prompt_containing_the_mask_id_and_unknown_algs():
    prompt = torch.tensor([[1, MASK]])
    with pytest.raises(ValueError, match="mask_token_id"):
        llada_generate(ContextLM(0), prompt, 4, 4, 4)
    with pytest.raises(ValueError, match="mask_token_id"):
        dream_generate(ContextLM(0), prompt, 4, 4)
    with pytest.raises(ValueError, match="alg"):
        dream_generate(ContextLM(0), torch.tensor([[1, 2]]), 4, 4, alg="greedy")
