"""The recorded trajectory (SPEC §2 "Trace"; consumed by Stage I §3 and the metrics §5).

The invariants ``Trace.validate`` checks must hold on every run and must catch broken
traces; recording must not change tokens or the random stream; the JSON file round-trips
exactly; ``p_y``, ``p1``/``z1`` and ``conf`` agree with an independent recomputation
from the model.
"""

import dataclasses
import math
import os
import tempfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fairref.diffusion.sampler as sampler_mod
from fairref.diffusion import Trace, dream_generate, llada_generate

V, MASK = 10, 9
ALGS = ["origin", "maskgit_plus", "topk_margin", "entropy"]


class ContextLM:
    """Random logits depending on the whole sequence (masked mean of embeddings) and the
    position; the mask id is never proposed, so every generated position gets a token."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, seed, scale=3.0):
        g = torch.Generator().manual_seed(seed)
        self.E, self.W = torch.randn(V, 8, generator=g), torch.randn(8, V, generator=g) * scale
        self.pos = torch.randn(64, 8, generator=g)

    def logits(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        keep = torch.ones(B, L) if attention_mask is None else attention_mask.float()
        h = self.E[input_ids]  # (B, L, 8)
        ctx = (h * keep[..., None]).sum(1, keepdim=True) / keep.sum(1)[:, None, None]
        z = torch.tanh(h + ctx + self.pos[:L]) @ self.W  # (B, L, V)
        z[..., MASK] = -1e4
        return z


@st.composite
def runs(draw):
    """A sampler call: either sampler, random or greedy, with or without padding."""
    seed = draw(st.integers(0, 10_000))
    B, P = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(seed))
    mask = None
    if draw(st.booleans()) and P > 1:
        mask = torch.ones(B, P, dtype=torch.bool)
        mask[0, 0] = False  # one left pad in row 0
    if draw(st.booleans()):
        block, n_blocks = draw(st.integers(1, 5)), draw(st.integers(1, 3))
        kw = dict(steps=draw(st.integers(1, block + 1)) * n_blocks, gen_length=block * n_blocks,
                  block_length=block, temperature=draw(st.sampled_from([0.0, 1.0])),
                  cfg_scale=draw(st.sampled_from([0.0, 1.5])),
                  remasking=draw(st.sampled_from(["low_confidence", "random"])))
        fn = llada_generate
    else:
        kw = dict(steps=draw(st.integers(1, 12)), max_new_tokens=draw(st.integers(1, 10)),
                  alg=draw(st.sampled_from(ALGS)), temperature=draw(st.sampled_from([0.0, 0.8])),
                  alg_temp=draw(st.sampled_from([None, 0.5])),
                  top_p=draw(st.sampled_from([None, 0.9])))
        fn = dream_generate
    return fn, ContextLM(seed), prompt, dict(kw, attention_mask=mask), seed


def _teacher_logits(model, trace, x_t):
    """Independent recomputation of the logits the sampler acted on at state x_t."""
    s, attn = trace.settings, trace.attention_mask
    if s["sampler"] == "llada" and s["cfg_scale"] > 0:
        x_u = x_t.clone()
        x_u[:, : trace.prompt_len] = MASK
        a2 = None if attn is None else torch.cat([attn, attn])
        z = model.logits(torch.cat([x_t, x_u]), a2)
        B = x_t.shape[0]
        return z[B:] + (s["cfg_scale"] + 1) * (z[:B] - z[B:])
    return model.logits(x_t, attn)


def _same(a, b):
    """Bit-equal tensors, NaN equal to NaN, same dtype and shape."""
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and bool(
        (torch.isnan(a) & torch.isnan(b) | (a == b)).all() if a.is_floating_point()
        else (a == b).all())


@given(runs())
def test_trace_invariants_hold_and_recording_changes_neither_tokens_nor_the_random_stream(run):
    """validate() passes; the traced tokens equal an unrecorded run's, and the generator
    ends in the same state (recording drew no random numbers)."""
    fn, model, prompt, kw, seed = run
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    plain = fn(model, prompt, generator=g1, **kw)
    out, tr = fn(model, prompt, generator=g2, record=True, **kw)
    assert torch.equal(out, plain) and torch.equal(g1.get_state(), g2.get_state())
    tr.validate()
    assert torch.equal(tr.y, out) and tr.settings["generator_seed"] == seed
    assert bool((tr.tau[:, : tr.prompt_len] == -1).all())
    assert tr.x.shape[0] == kw["steps"]


@given(runs())
def test_p_y_p1_z1_and_conf_agree_with_the_model(run):
    """p_y = p_t(y | x_t) and p1/z1 are the teacher's softmax statistics at the recorded
    states; for LLaDA low_confidence, conf = float64 p_t(x̂); for Dream's deterministic
    maskgit_plus, conf = p1. Tolerance: stored values are float32 roundings of float64
    quantities (relative 2^-24) and the float64 paths differ by O(1e-15); Dream's own
    float32 softmax adds about V·2^-24 absolute."""
    fn, model, prompt, kw, seed = run
    _, tr = fn(model, prompt, generator=torch.Generator().manual_seed(seed), record=True, **kw)
    for t in range(tr.x.shape[0]):
        z = _teacher_logits(model, tr, tr.x[t]).double()  # (B, L, V)
        p = torch.softmax(z, -1)
        M = tr.masked[t]
        p_y = p.gather(-1, tr.y[..., None])[..., 0]
        assert torch.allclose(tr.p_y[t][M].double(), p_y[M], rtol=2**-23, atol=1e-12)
        assert bool(tr.p_y[t][~M].isnan().all())
        assert torch.allclose(tr.p1[t].double(), p.max(-1).values, rtol=2**-23, atol=1e-12)
        assert torch.allclose(tr.z1[t].double(), z.max(-1).values, rtol=2**-23, atol=0)
        conf = tr.conf[t]
        assert bool(conf[~M].isnan().all())
        s = tr.settings
        if s["sampler"] == "llada" and s["remasking"] == "low_confidence":
            p_cand = p.gather(-1, tr.cand[t][..., None])[..., 0]
            assert torch.allclose(conf[M], p_cand[M], rtol=1e-12, atol=0)
        if s["sampler"] == "dream" and s["alg"] == "maskgit_plus" and s["temperature"] == 0 \
                and s["top_p"] is None:
            assert torch.allclose(conf[M], p.max(-1).values[M], rtol=0, atol=(V + 2) * 2**-24)


def test_second_pass_p_y_equals_the_kept_log_probs(monkeypatch):
    """Above the memory budget p_y comes from re-running the teacher; it must be the same
    numbers as when the log-probs are kept (same inputs, same deterministic forward)."""
    model = ContextLM(4)
    prompt = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(0))
    kw = dict(steps=8, gen_length=8, block_length=4, cfg_scale=1.0, record=True)
    _, kept = llada_generate(model, prompt, **kw)
    _, kept_d = dream_generate(model, prompt, 6, 8, record=True)
    monkeypatch.setattr(sampler_mod, "LOGPROB_BUDGET_BYTES", 0)
    _, second = llada_generate(model, prompt, **kw)
    _, second_d = dream_generate(model, prompt, 6, 8, record=True)
    assert _same(kept.p_y, second.p_y) and _same(kept_d.p_y, second_d.p_y)


@given(runs())
def test_json_round_trip_is_lossless(run):
    """Every tensor (dtype, shape, bits — NaN and ±inf included) and all metadata survive
    to_json → from_json."""
    fn, model, prompt, kw, seed = run
    _, tr = fn(model, prompt, generator=torch.Generator().manual_seed(seed), record=True, **kw)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        tr.to_json(path)
        back = Trace.from_json(path)
    for f in dataclasses.fields(Trace):
        a, b = getattr(tr, f.name), getattr(back, f.name)
        assert _same(a, b) if isinstance(a, torch.Tensor) or a is None else a == b, f.name
    back.validate()


def _llada_trace():
    model = ContextLM(1)
    prompt = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(1))
    return llada_generate(model, prompt, 8, 8, 4, record=True)[1]


def _broken(trace, **changes):
    return dataclasses.replace(trace, **changes)


def test_validate_catches_each_broken_invariant():
    """A trace edited to break one invariant at a time is rejected with a message naming it."""
    tr = _llada_trace().validate()
    t0 = 2
    j = int(tr.committed[t0, 0].nonzero()[0])  # a position committed at step t0 in row 0

    x = tr.x.clone()
    x[t0 + 1 :, 0, j] = (x[t0 + 1 :, 0, j] + 1) % MASK  # the committed token changes later
    y = tr.y.clone()
    y[0, j] = x[-1, 0, j]
    with pytest.raises(ValueError, match="filled"):
        _broken(tr, x=x, y=y).validate()

    F = tr.committed.clone()
    F[t0, 0, j] = False  # never committed
    with pytest.raises(ValueError, match="exactly once|k_t"):
        _broken(tr, committed=F).validate()

    F = tr.committed.clone()
    F[0, 0, 0] = True  # a prompt position
    with pytest.raises(ValueError, match="subset|prompt"):
        _broken(tr, committed=F).validate()

    k = tr.k.clone()
    k[t0, 0] += 1
    with pytest.raises(ValueError, match="k_t"):
        _broken(tr, k=k).validate()

    A = tr.active.clone()
    A[t0, 0, j] = False
    with pytest.raises(ValueError, match="subset"):
        _broken(tr, active=A).validate()

    tau = tr.tau.clone()
    tau[0, j] += 1
    with pytest.raises(ValueError, match="tau"):
        _broken(tr, tau=tau).validate()


def test_llada_active_block_and_dream_origin_conventions():
    """LLaDA's A_t is block t // steps_per_block; Dream's is the whole generated region;
    origin has no k_t (−1) and no score (NaN)."""
    tr = _llada_trace()
    P, per_block = tr.prompt_len, 4
    for t in range(tr.x.shape[0]):
        lo = P + (t // per_block) * 4
        want = torch.zeros(tr.x.shape[1:], dtype=torch.bool)
        want[:, lo : lo + 4] = True
        assert torch.equal(tr.active[t], want)
    prompt = torch.randint(0, MASK, (2, 3), generator=torch.Generator().manual_seed(2))
    _, td = dream_generate(ContextLM(2), prompt, 5, 6, alg="origin",
                           generator=torch.Generator().manual_seed(0), record=True)
    td.validate()
    assert bool((td.k == -1).all()) and bool(td.conf.isnan().all())
    assert bool(td.active[:, :, :3].logical_not().all()) and bool(td.active[:, :, 3:].all())
    assert math.isclose(float(td.margin[0, 0, -1]), float(td.z1[0, 0, -1] - td.z2[0, 0, -1]))
