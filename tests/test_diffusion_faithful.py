"""Faithfulness of the samplers to the public loops (SPEC §2, "Faithfulness details").

``public_llada`` and ``public_dream`` below are plain transcriptions, written for this
test, of the semantics of ``ML-GSAI/LLaDA/generate.py::generate`` and
``Dream-org/Dream-v0-Instruct-7B/generation_utils.py::_sample``: one step at a time,
in-place updates, and — the point of the comparison — the *global* RNG via
``torch.manual_seed`` / ``rand_like`` / ``torch.distributions.Categorical``, exactly the
calls the public code makes. The library draws from an explicit ``torch.Generator``
instead; equal tokens for equal seeds show the draws are the same numbers in the same
order. Models are tiny random modules whose logits depend on the whole sequence.
"""

import numpy as np
import torch
import torch.distributions as dists
import torch.nn.functional as Fn
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import dream_generate, llada_generate


V, MASK = 12, 11  # vocabulary and mask id of the test models


class RandomLM(torch.nn.Module):
    """Embedding + a sequence-wide mixing term + linear head: logits at i depend on every
    token (a stand-in for bidirectional attention). ``tied=True`` drops the per-position
    term, so all masked positions share one distribution — every confidence ties, which
    makes top-k tie-breaking decide the result."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, seed: int, tied: bool = False, scale: float = 3.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = torch.nn.Parameter(torch.randn(V, 8, generator=g))
        self.W = torch.nn.Parameter(torch.randn(8, V, generator=g) * scale)
        self.pos = torch.nn.Parameter(torch.randn(64, 8, generator=g))
        self.tied = tied
        self.calls = 0

    def logits(self, input_ids, attention_mask=None):
        self.calls += 1
        h = self.E[input_ids]  # (B, L, 8)
        ctx = h.mean(1, keepdim=True)  # (B, 1, 8): depends on the whole sequence
        if self.tied:
            h = torch.zeros_like(h)
        else:
            h = h + self.pos[: input_ids.shape[1]]
        return torch.tanh(h + ctx) @ self.W  # (B, L, V)


def public_llada(model, prompt, steps, gen_length, block_length, temperature, cfg_scale,
                 remasking, seed):
    """The public LLaDA loop's semantics, global RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), MASK, dtype=torch.long)
    x[:, :P] = prompt
    prompt_index = x != MASK
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    for blk in range(n_blocks):
        start, end = P + blk * block_length, P + (blk + 1) * block_length
        n_masked = (x[:, start:end] == MASK).sum(1)
        counts = torch.zeros(B, per_block, dtype=torch.long)
        for b in range(B):
            for i in range(per_block):
                counts[b, i] = n_masked[b] // per_block + (1 if i < n_masked[b] % per_block else 0)
        for i in range(per_block):
            mask_index = x == MASK
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = MASK
                both = model.logits(torch.cat([x, un_x], dim=0))
                cond, uncond = both[:B], both[B:]
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = model.logits(x)
            if temperature == 0:
                noisy = logits
            else:
                l64 = logits.to(torch.float64)
                noise = torch.rand_like(l64, dtype=torch.float64)
                noisy = l64.exp() / (-torch.log(noise)) ** temperature
            x0 = noisy.argmax(-1)
            if remasking == "low_confidence":
                probs = Fn.softmax(logits.to(torch.float64), dim=-1)
                x0_p = probs.gather(-1, x0[..., None])[..., 0]
            else:
                x0_p = torch.rand(x0.shape)
            x0_p[:, end:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            for b in range(B):
                chosen = torch.topk(confidence[b], k=int(counts[b, i])).indices
                for j in chosen.tolist():
                    x[b, j] = x0[b, j]
    return x


def public_sample_tokens(logits, temperature, top_p, top_k, margin, neg_entropy):
    """Dream's sample_tokens semantics (global RNG through Categorical)."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        srt, order = torch.sort(logits, descending=True)
        cum = torch.cumsum(Fn.softmax(srt, dim=-1), dim=-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        full = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, remove)
        logits = logits.masked_fill(full, torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        try:
            x0 = dists.Categorical(probs=probs).sample()
            conf = probs.gather(-1, x0[:, None])[:, 0]
        except Exception:
            conf, x0 = probs.max(dim=-1)
    else:
        conf, x0 = probs.max(dim=-1)
    if margin:
        srt = torch.sort(probs, dim=-1, descending=True)[0]
        conf = srt[:, 0] - srt[:, 1]
    if neg_entropy:
        conf = (probs * torch.log(probs + 1e-10)).sum(-1)
    return conf, x0


def public_dream(model, prompt, steps, max_new_tokens, alg, alg_temp, eps, temperature,
                 top_p, top_k, seed):
    """The public Dream loop's semantics, global RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    B, P = prompt.shape
    x = Fn.pad(prompt, (0, max_new_tokens), value=MASK)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == MASK
        logits = model.logits(x)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index]) + MASK
            take = torch.rand(*x0.shape) < p_transfer
            _, x0[take] = public_sample_tokens(mask_logits[take], temperature, top_p, top_k,
                                               False, False)
            x[mask_index] = x0.clone()
            continue
        conf, x0 = public_sample_tokens(mask_logits, temperature, top_p, top_k,
                                        alg == "topk_margin", alg == "entropy")
        n_avg = mask_index.sum() / mask_index.shape[0]
        k = int(n_avg * (1 - s / t)) if i < steps - 1 else int(n_avg)
        full = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full[mask_index] = conf
        if k > 0:
            if alg_temp is None or alg_temp == 0:
                _, idx = torch.topk(full, k)
            else:
                idx = torch.multinomial(Fn.softmax(full / alg_temp, dim=-1), num_samples=k)
            proposal = torch.zeros_like(x) + MASK
            proposal[mask_index] = x0.clone()
            for b in range(B):
                for j in idx[b].tolist():
                    x[b, j] = proposal[b, j]
    return x


@st.composite
def llada_settings(draw):
    """Block/step layouts built to divide (block count × steps per block)."""
    block_length = draw(st.integers(1, 6))
    n_blocks = draw(st.integers(1, 3))
    per_block = draw(st.integers(1, block_length + 2))  # more steps than tokens: k = 0 steps
    return dict(gen_length=block_length * n_blocks, block_length=block_length,
                steps=per_block * n_blocks,
                temperature=draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0])),
                cfg_scale=draw(st.sampled_from([0.0, 0.0, 1.5])),
                remasking=draw(st.sampled_from(["low_confidence", "random"])))


@given(llada_settings(), st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**31 - 1),
       st.booleans(), st.sampled_from([0.3, 3.0]))
def test_llada_matches_the_public_loop_token_for_token(cfg, B, P, seed, tied, scale):
    """Same model, settings and seed → the same tokens as the public loop, including at
    temperature > 0 (the generator yields the draws the global RNG would) and when all
    confidences tie (``tied``: top-k tie-breaking must be the public one)."""
    model = RandomLM(seed % 1000, tied=tied, scale=scale)
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(seed))
    want = public_llada(model, prompt, seed=seed, **cfg)
    got = llada_generate(model, prompt, generator=torch.Generator().manual_seed(seed), **cfg)
    assert torch.equal(got, want)


@given(st.sampled_from(["origin", "maskgit_plus", "topk_margin", "entropy"]),
       st.integers(1, 12), st.integers(1, 10), st.integers(1, 3), st.integers(1, 4),
       st.sampled_from([0.0, 0.0, 0.5, 1.0]), st.sampled_from([None, 0.0, 0.3]),
       st.sampled_from([None, 0.9, 0.5, 1.0]), st.sampled_from([None, 1, 3]),
       st.sampled_from([1e-3, 0.3]), st.integers(0, 2**31 - 1), st.booleans(),
       st.sampled_from([0.3, 3.0]))
def test_dream_matches_the_public_loop_token_for_token(alg, steps, G, B, P, temperature,
                                                       alg_temp, top_p, top_k, eps, seed, tied,
                                                       scale):
    """Same model, settings and seed → the same tokens as the public Dream loop for every
    alg, with alg_temp sampling, top-p / top-k filtering and temperature > 0. A flat model
    (scale 0.3) makes top-p keep several tokens; a peaked one (3.0) keeps one."""
    model = RandomLM(seed % 1000, tied=tied, scale=scale)
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(seed))
    kw = dict(alg=alg, alg_temp=alg_temp, eps=eps, temperature=temperature, top_p=top_p,
              top_k=top_k)
    want = public_dream(model, prompt, steps, G, seed=seed, **kw)
    got = dream_generate(model, prompt, steps, G, generator=torch.Generator().manual_seed(seed),
                         **kw)
    assert torch.equal(got, want)
