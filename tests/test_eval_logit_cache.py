"""Logits looked up by state (fairref.eval.logit_cache) and evaluate's reuse of them.

The cache must return exactly what the model returns for every row, key rows by their
content *and* padding mask, never run the model on a row it holds, and degrade to the
plain path when its budget is spent. ``evaluate(reuse_logits=True)`` must give the same
result as the plain path, while running the teacher once per distinct state. Models here
compute every row on its own (``RowWise``), so batch composition cannot change a bit on
any CPU and equality is exact by construction.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import SamplerSettings, sampler_family
from fairref.eval.logit_cache import LogitCache
from fairref.eval.run import evaluate, teacher_eval_traces
from fairref.fair.pipeline import calibrate
from fairref.models import random_model
from tiny import tiny_config

V, MASK, EOS, PAD = 24, 23, 22, 21


class RowWise:
    """``model`` run one row at a time (batch-invariant by construction); counts rows."""

    def __init__(self, model):
        self.__wrapped__ = model
        self.rows = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["__wrapped__"], name)

    @torch.no_grad()
    def logits(self, x, attention_mask=None):
        self.rows += x.shape[0]
        return torch.cat([self.__wrapped__.logits(
            x[i:i + 1], attention_mask=None if attention_mask is None
            else attention_mask[i:i + 1]) for i in range(x.shape[0])])


def _model(arch, seed=0):
    return random_model(tiny_config(arch, V, MASK, EOS, PAD, bos=20), seed).eval()


@given(st.integers(0, 10_000), st.integers(1, 6), st.booleans())
def test_cached_rows_are_the_models_logits_and_are_not_recomputed(seed, b, pad):
    model, ref = RowWise(_model("llada")), RowWise(_model("llada"))  # ref: the oracle
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (b, 5), generator=g)
    am = None
    if pad:
        am = torch.ones(b, 5, dtype=torch.bool)
        am[0, 0] = False
    cache = LogitCache(model)
    first = cache.logits(x, attention_mask=am)
    assert torch.equal(first, ref.logits(x, attention_mask=am))
    rows = model.rows
    # the same rows again, shuffled among new ones: only the new rows reach the model
    fresh = torch.randint(0, V, (2, 5), generator=g)
    both = torch.cat([fresh[:1], x.flip(0), fresh[1:]])
    am2 = None if am is None else torch.cat([torch.ones(1, 5, dtype=torch.bool), am.flip(0),
                                             torch.ones(1, 5, dtype=torch.bool)])
    again = cache.logits(both, attention_mask=am2)
    assert torch.equal(again, ref.logits(both, attention_mask=am2))
    new_keys = {tuple(r) for r in fresh.tolist()} - {tuple(r) for r in x.tolist()}
    assert model.rows - rows <= 2 and (model.rows - rows >= 1 or not new_keys)


def test_the_padding_mask_is_part_of_the_key():
    model = RowWise(_model("dream"))
    cache = LogitCache(model)
    x = torch.tensor([[PAD, 5, 6, MASK]])
    plain = cache.logits(x)
    padded = cache.logits(x, attention_mask=torch.tensor([[False, True, True, True]]))
    assert model.rows == 2 and not torch.equal(plain, padded)


def test_duplicate_rows_in_one_batch_and_a_spent_budget_still_give_the_models_logits():
    model = RowWise(_model("llada"))
    x = torch.tensor([[1, 2, MASK], [1, 2, MASK], [3, 4, MASK]])
    want = RowWise(_model("llada")).logits(x)
    cache = LogitCache(model, max_bytes=0)  # keeps nothing
    assert torch.equal(cache.logits(x), want) and torch.equal(cache.logits(x), want)
    assert len(cache) == 0 and cache.bytes == 0 and model.rows == 6
    one_row = want[0].numel() * want.element_size()
    cache = LogitCache(model, max_bytes=one_row)  # keeps the first row only
    assert torch.equal(cache.logits(x), want) and len(cache) == 1
    assert torch.equal(cache.logits(x), want)
    with pytest.raises(ValueError, match="max_bytes"):
        LogitCache(model, max_bytes=-1)


def test_a_wrapped_model_keeps_its_sampler_and_attributes():
    for arch in ("llada", "dream"):
        model = _model(arch)
        cache = LogitCache(RowWise(model))
        assert sampler_family(cache) == sampler_family(model) == arch
        assert cache.mask_token_id == MASK and cache.logit_shift == model.logit_shift


SETTINGS = {"llada": SamplerSettings(steps=4, gen_length=8, block_length=4),
            "dream": SamplerSettings(steps=4, gen_length=8, alg="entropy", temperature=0.2,
                                     top_p=0.9)}


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_evaluate_with_reused_logits_equals_the_plain_path_and_runs_fewer_rows(arch):
    teacher = _model(arch, 1)
    students = {"w4a4": calibrate(teacher, "rtn", w_bits=4, a_bits=4).model,
                "w3a16": calibrate(teacher, "rtn", w_bits=3, a_bits=16).model}
    ids = torch.randint(0, 20, (6, 3), generator=torch.Generator().manual_seed(3))
    s = SETTINGS[arch]

    def run(reuse):
        t = RowWise(teacher)
        st_ = {k: RowWise(v) for k, v in students.items()}
        res = evaluate(t, st_, ids, s, chunk=4, batch_size=5, seed=7, reuse_logits=reuse,
                       eos_token_id=EOS, lag_problems=3)
        return res, t.rows, {k: v.rows for k, v in st_.items()}

    plain, t_plain, s_plain = run(False)
    reused, t_reused, s_reused = run(True)
    for name in plain.models:
        a, b = plain.models[name].to_dict(), reused.models[name].to_dict()
        a.pop("seconds"), b.pop("seconds")
        assert a == b, name
    # the plain path runs the teacher again on every state for each student's
    # teacher-forced pass (and the stability lag's re-masked states, which are new)
    assert t_reused < t_plain and all(s_reused[k] < s_plain[k] for k in students)


def test_a_teacher_cache_shared_across_calls_runs_the_teacher_only_for_its_rollout():
    teacher = _model("llada", 2)
    student = calibrate(teacher, "rtn", w_bits=4, a_bits=4).model
    ids = torch.randint(0, 20, (5, 3), generator=torch.Generator().manual_seed(4))
    s = SETTINGS["llada"]
    counted = RowWise(teacher)
    cache = LogitCache(counted)
    traces = teacher_eval_traces(cache, ids, s)
    after_rollout = counted.rows
    for _ in range(2):
        evaluate(counted, {"q": student}, ids, s, teacher_traces=traces, teacher_cache=cache)
    assert counted.rows == after_rollout  # every teacher-forced state is a rollout state
    assert after_rollout <= s.steps * ids.shape[0]
    with pytest.raises(ValueError, match="teacher_cache wraps another model"):
        evaluate(teacher, {"q": student}, ids, s, teacher_traces=traces, teacher_cache=cache)
