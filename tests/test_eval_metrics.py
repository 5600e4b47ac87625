"""SPEC §5 metrics (fairref.eval.metrics) on models whose answers are known.

The models here compute their logits with elementwise float32 operations and gathers only
(no reduction whose order a BLAS or a thread count could change), so their logits are the
same bits in any batch, on any x86-64 CPU; every count below is compared exactly with a
slow NumPy loop over the definition, or with a value worked out by hand.
"""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import dream_generate, llada_generate
from fairref.eval.metrics import (
    MARGIN_EDGES,
    amplification,
    margin_bin,
    post_commit_mismatch,
    sampler_top_k,
    stability_lag,
    task_accuracy,
    teacher_forced_metrics,
)
from fairref.models import random_model
from tiny import tiny_config

V, MASK, EOS = 8, 7, 6


class TableLM:
    """z[b, i] = table[i] + emb[x[b, i]] + w · (masked count of row b): position, own token
    and how far the run has got; the mask id is never proposed. Elementwise float32 only."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, table, emb=None, w=None):
        self.table = torch.as_tensor(table, dtype=torch.float32)  # (L_max, V)
        self.emb = torch.zeros(V, V) if emb is None else torch.as_tensor(emb, dtype=torch.float32)
        self.w = torch.zeros(V) if w is None else torch.as_tensor(w, dtype=torch.float32)

    @classmethod
    def random(cls, seed, L_max=16, scale=3.0):
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(L_max, V, generator=g) * scale,
                   torch.randn(V, V, generator=g), torch.randn(V, generator=g) * 0.5)

    def np_logits(self, x):
        """The same formula in NumPy float32, one state ``x`` (L,) → (L, V)."""
        x = np.asarray(x)
        n = np.float32((x == MASK).sum())
        z = (self.table.numpy()[: x.size] + self.emb.numpy()[x]) + self.w.numpy() * n
        z[:, MASK] = -1e4
        return z

    def logits(self, input_ids, attention_mask=None):
        B, L = input_ids.shape
        n = (input_ids == MASK).sum(-1).to(torch.float32)  # (B,) exact small integers
        z = (self.table[:L] + self.emb[input_ids]) + self.w * n[:, None, None]  # (B, L, V)
        z[..., MASK] = -1e4
        return z


def _perturbed(model, seed, eps=0.7):
    g = torch.Generator().manual_seed(seed)
    return TableLM(model.table + eps * torch.randn(model.table.shape, generator=g),
                   model.emb, model.w)


def _run(model, prompts, sampler, **kw):
    if sampler == "llada":
        return llada_generate(model, prompts, kw.get("steps", 4), kw.get("G", 8),
                              kw.get("block", 4), record=True)
    return dream_generate(model, prompts, kw.get("steps", 4), kw.get("G", 8),
                          alg=kw.get("alg", "maskgit_plus"), record=True)


def _log_softmax64(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))


def _softmax64(z):
    return np.exp(_log_softmax64(z))


def _oracle(teacher, student, trace):
    """Slow NumPy loop over SPEC §5's definitions: flips, per-bin counts, masked KL."""
    T, B, L = trace.x.shape
    flips = slots = 0
    bins, bin_flips = np.zeros(4, int), np.zeros(4, int)
    kl = []
    for t in range(T):
        for b in range(B):
            x = trace.x[t, b].numpy()
            zt, zs = teacher.np_logits(x), student.np_logits(x)
            for i in range(L):
                if trace.committed[t, b, i]:
                    f = zt[i].argmax() != zs[i].argmax()
                    p = np.sort(_softmax64(zt[i]))[::-1]
                    g = p[0] - p[1]
                    k = 0 if g < 0.1 else 1 if g < 0.25 else 2 if g < 0.5 else 3
                    flips, slots = flips + f, slots + 1
                    bins[k] += 1
                    bin_flips[k] += f
                if trace.masked[t, b, i] and trace.active[t, b, i]:
                    lp, lq = _log_softmax64(zt[i]), _log_softmax64(zs[i])
                    kl.append(np.sum(np.exp(lp) * (lp - lq)))
    return flips, slots, bins, bin_flips, np.mean(kl)


@given(st.integers(0, 10_000), st.sampled_from(["llada", "dream"]), st.integers(1, 7))
def test_flip_counts_bins_and_masked_kl_equal_a_slow_numpy_oracle(seed, sampler, batch_size):
    """Per-slot flips, their margin bins and the float64 masked KL equal the definition
    evaluated state by state; the batching of the loop changes nothing."""
    teacher, student = TableLM.random(seed), _perturbed(TableLM.random(seed), seed + 1)
    prompts = torch.randint(0, 6, (3, 3), generator=torch.Generator().manual_seed(seed))
    _, tr = _run(teacher, prompts, sampler)
    m = teacher_forced_metrics(teacher, student, tr, batch_size=batch_size)
    flips, slots, bins, bin_flips, kl = _oracle(teacher, student, tr)
    assert m.token_flips.sum() == flips and m.frontier_slots.sum() == slots == 3 * 8
    assert m.bin_counts.tolist() == bins.tolist() and m.bin_flips.tolist() == bin_flips.tolist()
    # float64 sums of O(20) terms each O(1): a relative 1e-12 is far above their rounding
    assert m.masked_kl == pytest.approx(kl, rel=1e-12, abs=1e-15)


def test_a_student_equal_to_the_teacher_flips_nothing_and_has_zero_kl():
    teacher = TableLM.random(3)
    _, tr = _run(teacher, torch.tensor([[1, 2, 3], [4, 5, 0]]), "llada")
    m = teacher_forced_metrics(teacher, copy.deepcopy(teacher), tr)
    assert m.token_flip_rate == 0 and m.masked_kl == 0 and m.set_flip_rate == 0
    assert m.teacher_set_mismatch == 0


def _swap(table, i, a, b):
    table = table.clone()
    table[i, [a, b]] = table[i, [b, a]]
    return table


def _confident_table(L, order):
    """Row i: token (i mod 6) with logit order[i], all others 0 (so p1 rises with it)."""
    t = torch.zeros(L, V)
    for i, s in enumerate(order):
        t[i, i % 6] = s
    return t


def test_a_student_that_swaps_two_logits_at_one_position_flips_exactly_there():
    """Swapping the top-1 and another logit at position j moves the argmax there only;
    the top-1 probability is unchanged, so the commit sets (and sets flips) do not move."""
    P, G = 2, 6
    table = _confident_table(P + G, [0, 0, 6, 5, 4, 3, 2, 1])
    j = P + 3
    teacher, student = TableLM(table), TableLM(_swap(table, j, j % 6, 0))
    _, tr = llada_generate(teacher, torch.tensor([[1, 2], [3, 4]]), 3, G, G, record=True)
    m = teacher_forced_metrics(teacher, student, tr)
    assert m.token_flips.tolist() == [1, 1] and m.frontier_slots.tolist() == [G, G]
    assert m.token_flip_rate == 1 / G and m.set_flip_rate == 0


def test_a_less_confident_student_flips_the_set_at_exactly_the_step_it_reorders():
    """G = 4, 2 steps of k = 2; teacher confidences 4 > 3 > 2 > 1 commit {0,1} then {2,3}.
    The student's position 1 drops to 1.5 < 2: it would commit {0,2} at step 0 (a set flip)
    and {2,3} at step 1 (the same set): set flip rate ½, no token flips."""
    P = 1
    table = _confident_table(P + 4, [0, 4, 3, 2, 1])
    low = table.clone()
    low[P + 1, (P + 1) % 6] = 1.5
    teacher, student = TableLM(table), TableLM(low)
    _, tr = llada_generate(teacher, torch.tensor([[1]]), 2, 4, 4, record=True)
    assert tr.committed[0, 0].nonzero().flatten().tolist() == [P, P + 1]
    m = teacher_forced_metrics(teacher, student, tr)
    assert m.set_flips.tolist() == [1] and m.set_steps.tolist() == [2]
    assert m.token_flip_rate == 0 and m.rule.score == "top1_prob" and m.rule.float64


def test_set_flip_is_na_for_random_rules():
    teacher = TableLM.random(0)
    prompts = torch.tensor([[1, 2]])
    _, tr = llada_generate(teacher, prompts, 4, 8, 4, remasking="random",
                           generator=torch.Generator().manual_seed(0), record=True)
    m = teacher_forced_metrics(teacher, teacher, tr)
    assert m.rule is None and m.set_flip_rate is None
    assert m.to_dict()["frontier_set_flip"] == "n/a"
    _, tr = dream_generate(teacher, prompts, 4, 8, alg="origin",
                           generator=torch.Generator().manual_seed(0), record=True)
    assert teacher_forced_metrics(teacher, teacher, tr).to_dict()["frontier_set_flip"] == "n/a"


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_the_set_rule_on_the_teachers_own_logits_reproduces_its_frontier(alg):
    """The rule (float64 scores, lowest-position ties) reproduces the sampler's own F_t
    on well-separated scores; so a set flip is the student's doing."""
    teacher = TableLM.random(7)
    _, tr = dream_generate(teacher, torch.tensor([[1, 2], [3, 4]]), 4, 8, alg=alg, record=True)
    m = teacher_forced_metrics(teacher, _perturbed(teacher, 9), tr)
    assert m.teacher_set_mismatch == 0 and m.set_steps.sum() > 0


def test_margin_bins_are_left_closed_and_the_last_holds_one():
    g = torch.tensor([0.0, 0.0999, 0.1, 0.2499, 0.25, 0.4999, 0.5, 1.0], dtype=torch.float64)
    assert margin_bin(g).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert MARGIN_EDGES == (0.0, 0.1, 0.25, 0.5, 1.0)


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), min_size=1, max_size=12),
       st.data())
def test_sampler_top_k_selects_exactly_the_k_highest_candidates(row, data):
    """Distinct scores (by construction: value·12 + position): the selection is the k
    largest among the candidates, whatever the non-candidates score."""
    score = torch.tensor([[v * 12.0 + i for i, (v, _) in enumerate(row)]], dtype=torch.float64)
    cand = torch.tensor([[c for _, c in row]])
    k = data.draw(st.integers(0, int(cand.sum())))
    sel = sampler_top_k(score, cand, torch.tensor([k]))[0]
    ranked = sorted((float(score[0, i]), i) for i in range(len(row)) if row[i][1])[::-1]
    assert sorted(sel.nonzero().flatten().tolist()) == sorted(i for _, i in ranked[:k])


# ------------------------------------------------------------------ post-commit mismatch
def test_mismatch_counts_the_swapped_position_and_diverges_at_its_commit_step():
    P, G = 2, 6
    table = _confident_table(P + G, [0, 0, 6, 5, 4, 3, 2, 1])
    j = P + 3
    teacher, student = TableLM(table), TableLM(_swap(table, j, j % 6, 0))
    prompts = torch.tensor([[1, 2], [3, 4]])
    _, ta = llada_generate(teacher, prompts, 3, G, G, record=True)
    _, tb = llada_generate(student, prompts, 3, G, G, record=True)
    r = post_commit_mismatch(ta, tb, include_after_eos=True)
    assert r.mismatched.tolist() == [1, 1] and r.counted.tolist() == [G, G]
    assert r.rate == 1 / G
    assert r.divergence_step.tolist() == [int(ta.tau[0, j])] * 2 and r.diverged.all()
    same = post_commit_mismatch(ta, ta, include_after_eos=True)
    assert same.rate == 0 and not same.diverged.any()
    assert same.divergence_step.tolist() == [3, 3]  # censored at T


def test_positions_after_the_teachers_eos_are_excluded_by_default():
    """The teacher writes EOS at generation position 1; the swap at position 3 is after it."""
    P, G = 2, 6
    table = _confident_table(P + G, [0, 0, 6, 5, 4, 3, 2, 1])
    table[P + 1] = 0
    table[P + 1, EOS] = 5  # the teacher's EOS
    j = P + 3
    teacher, student = TableLM(table), TableLM(_swap(table, j, j % 6, 0))
    prompts = torch.tensor([[1, 2]])
    _, ta = llada_generate(teacher, prompts, 3, G, G, record=True)
    _, tb = llada_generate(student, prompts, 3, G, G, record=True)
    r = post_commit_mismatch(ta, tb, eos_token_id=EOS)
    assert r.counted.tolist() == [2] and r.rate == 0 and not r.diverged.any()
    assert post_commit_mismatch(ta, tb, include_after_eos=True).rate == 1 / G
    with pytest.raises(ValueError, match="eos_token_id"):
        post_commit_mismatch(ta, tb)


def test_mismatch_rejects_rollouts_from_different_prompts():
    teacher = TableLM.random(0)
    _, ta = _run(teacher, torch.tensor([[1, 2]]), "llada")
    _, tb = _run(teacher, torch.tensor([[2, 1]]), "llada")
    with pytest.raises(ValueError, match="different prompts"):
        post_commit_mismatch(ta, tb, eos_token_id=EOS)


def test_amplification_is_na_when_nothing_flips():
    assert amplification(0.2, 0.0) is None and amplification(None, 0.1) is None
    assert amplification(0.2, 0.1) == pytest.approx(2.0)


# ------------------------------------------------------------------ stability lag
def _lag_oracle(model, trace):
    """The definition, one forward pass per (i, t), the least s by a literal search."""
    T, B, L = trace.x.shape
    states = torch.cat([trace.x, trace.y[None]])
    out = {}
    for b in range(B):
        for i in range(trace.prompt_len, L):
            tau, y = int(trace.tau[b, i]), int(trace.y[b, i])
            stable = {}
            for t in range(tau, T + 1):
                x = states[t, b].numpy().copy()
                x[i] = MASK
                stable[t] = model.np_logits(x)[i].argmax() == y
            s = next((s for s in range(T - tau + 1)
                      if all(stable[t] for t in range(tau + s, T + 1))), None)
            out[(b, i)] = (s, True) if s is not None else (T - tau, False)
    return out


@given(st.integers(0, 10_000), st.sampled_from(["llada", "dream"]), st.integers(1, 9))
def test_stability_lag_equals_the_definition_searched_literally(seed, sampler, batch_size):
    teacher = TableLM.random(seed, scale=1.0)  # w · n_masked then moves argmaxes over time
    student = _perturbed(teacher, seed + 1, eps=0.5)
    prompts = torch.randint(0, 6, (2, 3), generator=torch.Generator().manual_seed(seed))
    _, tr = _run(teacher, prompts, sampler)
    for model in (teacher, student):
        r = stability_lag(model, tr, batch_size=batch_size)
        want = _lag_oracle(model, tr)
        got = {(int(b), int(i)): (int(s), bool(o))
               for b, i, s, o in zip(r.problem, r.position, r.lag, r.observed)}
        assert got == want


def test_a_constant_model_is_stable_at_once_and_a_swapped_one_never():
    """A model that ignores the state writes the same token whenever asked: lag 0. A model
    whose argmax at j is another token is unstable to the end: censored at T − τ_j."""
    P, G = 2, 6
    table = _confident_table(P + G, [0, 0, 6, 5, 4, 3, 2, 1])
    j = P + 3
    teacher = TableLM(table)
    _, tr = llada_generate(teacher, torch.tensor([[1, 2]]), 3, G, G, record=True)
    r = stability_lag(teacher, tr)
    assert (r.lag == 0).all() and r.observed.all() and r.lag.size == G
    r = stability_lag(TableLM(_swap(table, j, j % 6, 0)), tr)
    k = int(np.flatnonzero(r.position == j)[0])
    assert not r.observed[k] and r.lag[k] == 3 - int(tr.tau[0, j])
    assert r.observed.sum() == G - 1
    assert r.to_dict()["censored"] == 1


# ------------------------------------------------------------------ real samplers, accuracy
@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_a_copy_of_a_real_tiny_model_shows_no_flip_no_kl_and_no_mismatch(arch):
    """Both models run in the same batch, so identical weights give identical logits."""
    cfg = tiny_config(arch, 20, mask=19, eos=18, pad=18, L_max=32)
    teacher = random_model(cfg, seed=0, std=0.3).eval()
    student = copy.deepcopy(teacher)
    prompts = torch.randint(0, 18, (3, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gen = (lambda m: llada_generate(m, prompts, 4, 8, 4, record=True)) if arch == "llada" \
            else (lambda m: dream_generate(m, prompts, 4, 8, record=True))
        (_, ta), (_, tb) = gen(teacher), gen(student)
    m = teacher_forced_metrics(teacher, student, ta, batch_size=5)
    assert m.token_flip_rate == 0 and m.masked_kl == 0
    assert m.set_flips.sum() == m.teacher_set_mismatch  # only where the rule is ambiguous
    assert post_commit_mismatch(ta, tb, eos_token_id=18).rate == 0
    d = m.to_dict()
    assert d["frontier_token_flip"]["ci95"] == [0.0, 0.0]
    assert sum(b["count"] for b in d["frontier_token_flip_by_margin"]) == 3 * 8


def test_task_accuracy_uses_the_checker_per_problem():
    a = task_accuracy(["1+1", "2+2", "3+3"], ["2", "5", "6"],
                      lambda p, c: eval(p) == int(c))  # noqa: S307 (test-only arithmetic)
    assert a.correct.tolist() == [True, False, True] and a.rate == 2 / 3
    assert a.to_dict()["accuracy"]["value"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one completion per problem"):
        task_accuracy(["1"], [], lambda p, c: True)


def test_traces_in_a_list_are_problems_in_order_and_results_are_json():
    """Per-problem counts of [a, b] are those of a then those of b; to_dict is plain JSON."""
    import json

    teacher, student = TableLM.random(11), _perturbed(TableLM.random(11), 12)
    _, ta = _run(teacher, torch.tensor([[1, 2, 3], [4, 5, 0]]), "llada")
    _, tb = _run(teacher, torch.tensor([[3, 3, 1]]), "llada")
    both = teacher_forced_metrics(teacher, student, [ta, tb], batch_size=3)
    one, two = (teacher_forced_metrics(teacher, student, t) for t in (ta, tb))
    for name in ("token_flips", "frontier_slots", "set_flips", "set_steps", "kl_slots"):
        assert getattr(both, name).tolist() == \
            getattr(one, name).tolist() + getattr(two, name).tolist()
    lag = stability_lag(student, [ta, tb])
    assert sorted(set(lag.problem.tolist())) == [0, 1, 2]
    _, sa = _run(student, torch.tensor([[1, 2, 3], [4, 5, 0]]), "llada")
    for d in (both.to_dict(), lag.to_dict(), post_commit_mismatch(ta, sa, EOS).to_dict()):
        assert json.loads(json.dumps(d)) == d
