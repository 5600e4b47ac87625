"""The one teacher-forced loop (fairref.eval.teacher_forced).

It must visit every recorded state exactly once, in step-major order, with the trace's
own fields and padding mask; batching must not change any output of a model whose logits
do not depend on the batch; the hidden-state path must give the logits ``model.logits``
gives and rows aligned to the predicted position (Dream's shift). ``bounds_check`` runs on
it: tests/test_bounds_check.py checks it unchanged.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import dream_generate, llada_generate
from fairref.eval.teacher_forced import check_teacher_forced, iter_batches, iter_trace_states
from fairref.models import random_model
from tiny import tiny_config

V, MASK = 8, 7


class PositionLM:
    """z[b, i] = table[i] + emb[x[b, i]], and the padding mask it was given is kept:
    elementwise float32, so its logits are the same bits in any batch."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        self.table, self.emb = torch.randn(32, V, generator=g), torch.randn(V, V, generator=g)
        self.seen_masks = []

    def logits(self, input_ids, attention_mask=None):
        self.seen_masks.append(attention_mask)
        z = self.table[: input_ids.shape[1]] + self.emb[input_ids]  # (B, L, V)
        z[..., MASK] = -1e4
        return z


@given(st.integers(0, 1000), st.integers(1, 12), st.booleans())
def test_every_state_is_visited_once_with_its_trace_fields_whatever_the_batch(seed, bs, pad):
    teacher, student = PositionLM(seed), PositionLM(seed + 1)
    prompts = torch.randint(0, 6, (3, 3), generator=torch.Generator().manual_seed(seed))
    am = None
    if pad:
        am = torch.ones(3, 3, dtype=torch.bool)
        am[1, 0] = False
    _, tr = llada_generate(teacher, prompts, 4, 8, 4, record=True, attention_mask=am)
    seen = []
    for sb in iter_trace_states(teacher, student, [tr, tr], batch_size=bs):
        assert sb.x.shape[0] <= bs
        for j in range(sb.x.shape[0]):
            t, r = int(sb.t[j]), int(sb.row[j])
            seen.append((sb.trace, t, r))
            assert torch.equal(sb.x[j], tr.x[t, r])
            for name in ("masked", "active", "committed"):
                assert torch.equal(getattr(sb, name)[j], getattr(tr, name)[t, r])
            assert int(sb.k[j]) == int(tr.k[t, r])
            if pad:
                assert torch.equal(sb.attention_mask[j], tr.attention_mask[r])
            else:
                assert sb.attention_mask is None
            # the same bits as a run on that one state alone
            assert torch.equal(sb.teacher.z[j], teacher.logits(tr.x[t, r][None])[0])
            assert torch.equal(sb.student.z[j], student.logits(tr.x[t, r][None])[0])
    T, B, _ = tr.x.shape
    assert seen == [(n, t, r) for n in range(2) for t in range(T) for r in range(B)]


def test_the_padding_mask_reaches_the_model():
    teacher = PositionLM(0)
    x = torch.full((3, 5), MASK)
    am = torch.ones(3, 5, dtype=torch.bool)
    am[2, 0] = False
    teacher.seen_masks.clear()
    list(iter_batches([teacher], x, am, batch_size=2))
    assert torch.equal(torch.cat(teacher.seen_masks), am)


def test_outputs_carry_no_autograd_graph():
    model = random_model(tiny_config("llada", 12, mask=11, eos=10, pad=10), seed=0)
    (batch,) = iter_batches([model], torch.full((2, 4), 11), batch_size=4, hidden=True)
    assert not batch.outputs[0].z.requires_grad and not batch.outputs[0].h.requires_grad


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_the_hidden_path_gives_model_logits_and_rows_aligned_to_predicted_positions(arch):
    """z from (embed, run_block, head, shift) equals model.logits bit for bit (the same
    operations in the same order); h row i is the network's row i − logit_shift."""
    model = random_model(tiny_config(arch, 12, mask=11, eos=10, pad=10), seed=0, std=0.3)
    x = torch.randint(0, 11, (3, 6), generator=torch.Generator().manual_seed(0))
    am = torch.ones(3, 6, dtype=torch.bool)
    am[0, 0] = False
    (batch,) = iter_batches([model], x, am, batch_size=8, hidden=True)
    out = batch.outputs[0]
    with torch.no_grad():
        assert torch.equal(out.z, model.logits(x, attention_mask=am))
        h = model.forward_hidden(x, am)[-1]  # (B, L, d) unshifted
    s = model.logit_shift
    assert s == (1 if arch == "dream" else 0)
    assert torch.equal(out.h[:, s:], h[:, : h.shape[1] - s])


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_a_real_sampler_trace_replays_to_the_recorded_top1_logits(arch):
    """On the teacher's own states the loop's teacher logits reproduce the recorded z1
    (the sampler's logits) to float32 rounding of a different batch."""
    cfg = tiny_config(arch, 20, mask=19, eos=18, pad=18, L_max=32)
    model = random_model(cfg, seed=0, std=0.3).eval()
    prompts = torch.randint(0, 18, (2, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, tr = (llada_generate(model, prompts, 4, 8, 4, record=True) if arch == "llada"
                 else dream_generate(model, prompts, 4, 8, record=True))
    for sb in iter_trace_states(model, None, tr, batch_size=3):
        assert sb.student is None
        z1 = sb.teacher.z.amax(-1)  # (b, L)
        want = tr.z1[sb.t, sb.row]  # (b, L)
        # |z| = O(10) from a 32-wide float32 network: 1e-4 absolute is ~100× its rounding
        assert torch.allclose(z1, want, rtol=0, atol=1e-4)


def test_bad_arguments_are_rejected_with_a_clear_message():
    m = PositionLM(0)
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches([m], torch.zeros(2, 3, dtype=torch.int64), batch_size=0))
    with pytest.raises(ValueError, match=r"\(S, L\)"):
        list(iter_batches([m], torch.zeros(3, dtype=torch.int64)))
    with pytest.raises(ValueError, match="attention_mask"):
        list(iter_batches([m], torch.zeros(2, 3, dtype=torch.int64),
                          torch.ones(2, 4, dtype=torch.bool)))
    _, tr = llada_generate(m, torch.tensor([[1, 2]]), 2, 4, 4, cfg_scale=1.0, record=True)
    with pytest.raises(ValueError, match="cfg_scale"):
        check_teacher_forced(tr)
