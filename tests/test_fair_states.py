"""Calibration states and plain inputs for Stage II (SPEC §4.1, §4.4).

The state steps are checked against t_k = ⌊(k + ½)·T/S⌋ in exact rationals; the states
against the traces they were cut from (x_t before step t commits, B_t of that step), the
plain inputs against the rollouts' final sequences; both share prompts and token count.

Legend: T steps, B prompts, P prompt length, G generation length, L = P + G, S states.
"""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import SamplerSettings
from fairref.fair.prior import Prior, PriorConfig, row_weights
from fairref.fair.probe import probe
from fairref.fair.states import plain_inputs, state_steps, teacher_states

V, MASK = 10, 9


class ContextLM:
    """Random logits depending on the whole sequence and the position."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        self.E, self.W = torch.randn(V, 8, generator=g), torch.randn(8, V, generator=g) * 3
        self.pos = torch.randn(64, 8, generator=g)

    def logits(self, input_ids, attention_mask=None):
        h = self.E[input_ids]  # (B, L, 8)
        z = torch.tanh(h + h.mean(1, keepdim=True) + self.pos[: input_ids.shape[1]]) @ self.W
        z[..., MASK] = -1e4
        return z


@given(st.integers(1, 200), st.data())
def test_state_steps_are_floor_of_k_plus_half_times_T_over_S(T, data):
    S = data.draw(st.integers(1, T))
    ts = state_steps(T, S)
    assert ts == [math.floor((k + Fraction(1, 2)) * T / S) for k in range(S)]
    assert len(set(ts)) == S and 0 <= ts[0] and ts[-1] < T


def test_state_steps_rejects_more_states_than_steps():
    with pytest.raises(ValueError, match="exceeds the 8 sampler steps"):
        state_steps(8, 9)


def _probe(temperature=1.0, rollouts=2, attention_mask=None):
    model = ContextLM(2)
    prompts = torch.randint(0, MASK, (3, 3), generator=torch.Generator().manual_seed(0))
    s = SamplerSettings(steps=8, gen_length=6, block_length=3, temperature=temperature)
    return probe(model, prompts, s, rollouts=rollouts, seed=5, batch_size=2,
                 attention_mask=attention_mask)


def test_teacher_states_are_the_traced_states_before_the_commit_with_their_bands():
    """Row n = rollout r·S + k is x_{t_k} of rollout r (before step t_k commits) with B_{t_k};
    rollouts in the probe's order (repeat-major, then batch order, across batch chunks)."""
    res = _probe()
    S = 4
    cs = teacher_states(res.traces, res.bands, S)
    rows = [(tr, band, b) for tr, band in zip(res.traces, res.bands)
            for b in range(tr.x.shape[1])]
    assert cs.ids.shape == (len(rows) * S, 3 + 6) and len(rows) == 6
    ts = state_steps(8, S)
    for n in range(cs.ids.shape[0]):
        r, k = divmod(n, S)
        tr, band, b = rows[r]
        assert int(cs.rollout[n]) == r and int(cs.step[n]) == ts[k]
        assert torch.equal(cs.ids[n], tr.x[ts[k], b]) and torch.equal(cs.band[n], band[ts[k], b])
        # x_t is the state before the commit: the band's frontier is still masked in it
        assert bool((cs.ids[n][tr.committed[ts[k], b]] == MASK).all())
    assert cs.prompt_len == 3 and cs.attention_mask is None


def test_plain_inputs_are_the_final_sequences_with_the_same_prompts_and_token_count():
    res = _probe()
    S = 3
    cs, plain = teacher_states(res.traces, res.bands, S), plain_inputs(res.traces, S)
    assert plain.ids.shape == cs.ids.shape and torch.equal(plain.rollout, cs.rollout)
    assert torch.equal(plain.ids[:, :3], cs.ids[:, :3])  # same prompt on every row
    assert not (plain.ids == MASK).any() and not plain.band.any()
    finals = torch.cat([tr.y for tr in res.traces])  # (rollouts, L)
    assert torch.equal(plain.ids, finals.repeat_interleave(S, dim=0))
    assert bool((plain.step == 8).all())


def test_states_carry_the_attention_mask_and_weights_zero_its_padding():
    """Left-padded prompts: the mask (extended over the generated region) follows each
    state, and the token weights of padded rows are 0 for both logit shifts."""
    attn = torch.ones(3, 3, dtype=torch.bool)
    attn[1, :2] = False
    res = _probe(temperature=0.0, rollouts=1, attention_mask=attn)
    cs = teacher_states(res.traces, res.bands, 2)
    want = torch.cat([attn, torch.ones(3, 6, dtype=torch.bool)], 1).repeat_interleave(2, 0)
    assert torch.equal(cs.attention_mask, want)
    prior = Prior.from_probe(res, PriorConfig())
    for shift in (0, 1):
        w = prior.token_weights(cs, logit_shift=shift)
        assert torch.equal(w, row_weights(prior.pi, cs.band, 3, logit_shift=shift,
                                          attention_mask=cs.attention_mask))
        assert bool((w[~want] == 0).all() and (w[want] > 0).all())


def test_teacher_states_rejects_mismatched_inputs():
    res = _probe(rollouts=1)
    with pytest.raises(ValueError, match="no traces"):
        teacher_states([], [], 2)
    with pytest.raises(ValueError, match="bands for"):
        teacher_states(res.traces, res.bands[:1], 2)
    with pytest.raises(ValueError, match="exceeds"):
        teacher_states(res.traces, res.bands, 9)
