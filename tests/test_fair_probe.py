"""Stage I probing (SPEC §3.1–3.2): frontier band, fragility-weighted hits, reliability.

Hand-built traces pin B_t, h and ρ to values worked out by hand; a slow, obviously correct
Python oracle of the band is compared bit-exactly with ``frontier_band`` on real sampler
runs (LLaDA and Dream loops, every score kind); φ is checked against T4′ (``fairref.bounds``);
``probe`` runs through ``generate`` with seeded repeats. The shipped toys are probed on
training prompts in a slow test.

Legend: T steps, B batch, P prompt length, G generation length, L = P + G.
"""

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.bounds import flip_bounds
from fairref.diffusion import SamplerSettings, Trace, dream_generate, llada_generate
from fairref.fair.probe import (
    fragility,
    frontier_band,
    frontier_hits,
    probe,
    reliability,
    score_is_random,
)

V, MASK = 10, 9
NAN = float("nan")


def hand_trace(P, y, F, A, *, conf=None, p1=None, z1=None, z2=None, p_y=None, k=None,
               settings=None):
    """A valid one-row Trace from its commit sets ``F[t]`` and active sets ``A[t]``
    (absolute positions); per-step per-position statistics are dicts {position: value}
    (unset: 0.5 / NaN). x, masked, cand, tau follow from F and y."""
    T, L = len(F), len(y)
    y = torch.tensor([y])  # (1, L)
    x = torch.full((T, 1, L), MASK, dtype=torch.int64)
    cur = y.clone()
    cur[:, P:] = MASK
    tau = torch.full((1, L), -1, dtype=torch.int64)
    for t in range(T):
        x[t] = cur
        for i in F[t]:
            cur[0, i] = y[0, i]
            tau[0, i] = t

    def grid(d, default, dtype):
        g = torch.full((T, 1, L), default, dtype=dtype)
        for t, row in enumerate(d or []):
            for i, v in row.items():
                g[t, 0, i] = v
        return g

    masked = x == MASK
    nan_off = lambda g: torch.where(masked, g, torch.full_like(g, NAN))  # noqa: E731
    return Trace(
        x=x, masked=masked,
        active=torch.tensor([[[i in A[t] for i in range(L)]] for t in range(T)]),
        k=torch.tensor([[len(f)] for f in F]) if k is None else torch.tensor(k).view(T, 1),
        committed=torch.tensor([[[i in F[t] for i in range(L)]] for t in range(T)]),
        cand=torch.where(masked, y.expand(T, 1, L), x),
        p1=grid(p1, 0.5, torch.float32), p2=grid(None, 0.1, torch.float32),
        z1=grid(z1, 5.0, torch.float32), z2=grid(z2, 1.0, torch.float32),
        conf=nan_off(grid(conf, 0.5, torch.float64)), p_y=nan_off(grid(p_y, 0.5, torch.float32)),
        tau=tau, y=y, prompt_len=P, gen_length=L - P, mask_token_id=MASK,
        settings=settings or {"sampler": "llada", "remasking": "low_confidence"},
    ).validate()


def positions(band, t):
    return set(torch.nonzero(band[t, 0]).view(-1).tolist())


# ----------------------------------------------------------------------------- B_t by hand


def test_band_is_frontier_plus_next_ranked_candidates_ties_to_lowest_index():
    """One region, P = 1, G = 4. Step 0 writes {1}; of the rest, scores 0.5, 0.5, 0.5 tie:
    the lowest index (2) joins. Step 1 writes {2, 3}; ⌈β·2⌉ = 2 more are wanted, only {4}
    is left: the cap |M_t ∩ A_t|. Step 2 writes {4}, nothing is behind it."""
    G = {1, 2, 3, 4}
    tr = hand_trace(1, [7, 1, 2, 3, 4], F=[{1}, {2, 3}, {4}], A=[G, G, G],
                    conf=[{1: 0.9, 2: 0.5, 3: 0.5, 4: 0.5}, {2: 0.8, 3: 0.8, 4: 0.3}])
    band = frontier_band(tr, beta=1.0)
    assert [positions(band, t) for t in range(3)] == [{1, 2}, {2, 3, 4}, {4}]
    # β = 2.5 at step 0: ⌈2.5⌉ = 3 more, all of {2, 3, 4}
    assert positions(frontier_band(tr, beta=2.5), 0) == {1, 2, 3, 4}
    # β = 0.01: still ⌈0.01·1⌉ = 1 position behind the frontier
    assert positions(frontier_band(tr, beta=0.01), 0) == {1, 2}
    # candidates scored −inf still rank before the prompt position 0 (not a candidate)
    inf = hand_trace(1, [7, 1, 2, 3, 4], F=[{1}, {2, 3}, {4}], A=[G, G, G],
                     conf=[{1: 0.9, 2: -math.inf, 3: -math.inf, 4: -math.inf}])
    assert positions(frontier_band(inf), 0) == {1, 2}


def test_band_ranks_by_score_and_stays_inside_the_active_block():
    """Two LLaDA blocks {1, 2}, {3, 4}. At step 0 the out-of-block positions 3, 4 carry the
    highest scores (LLaDA records them) but are not candidates; inside, 2 is written and 1
    joins. At step 2 position 4 (score 0.9) is written, 3 joins."""
    A1, A2 = {1, 2}, {3, 4}
    tr = hand_trace(1, [7, 1, 2, 3, 4], F=[{2}, {1}, {4}, {3}], A=[A1, A1, A2, A2],
                    conf=[{1: 0.2, 2: 0.6, 3: 0.99, 4: 0.98}, {}, {3: 0.4, 4: 0.9}])
    band = frontier_band(tr)
    assert [positions(band, t) for t in range(4)] == [{1, 2}, {1}, {3, 4}, {3}]


@pytest.mark.parametrize("settings", [
    {"sampler": "llada", "remasking": "random"},
    {"sampler": "dream", "alg": "origin", "alg_temp": None},
    {"sampler": "dream", "alg": "maskgit_plus", "alg_temp": 0.5},
])
def test_band_ranks_by_top1_probability_when_the_score_is_random(settings):
    """conf prefers position 2, p1 prefers 4: with a random score p1 decides. Dream
    origin records no k_t (−1): |F_t| = 1 stands for it."""
    assert score_is_random(settings)
    G = {1, 2, 3, 4}
    k = [-1, -1] if settings.get("alg") == "origin" else None
    tr = hand_trace(1, [7, 1, 2, 3, 4], F=[{1}, {2, 3, 4}], A=[G, G], k=k,
                    conf=[{1: 0.1, 2: 0.9, 3: 0.5, 4: 0.2}],
                    p1=[{1: 0.5, 2: 0.3, 3: 0.4, 4: 0.8}], settings=settings)
    assert positions(frontier_band(tr), 0) == {1, 4}
    tr_score = hand_trace(1, [7, 1, 2, 3, 4], F=[{1}, {2, 3, 4}], A=[G, G],
                          conf=[{1: 0.1, 2: 0.9, 3: 0.5, 4: 0.2}],
                          p1=[{1: 0.5, 2: 0.3, 3: 0.4, 4: 0.8}])
    assert positions(frontier_band(tr_score), 0) == {1, 2}


# ----------------------------------------------------------------------------- h and ρ by hand


def test_frontier_hits_sum_phi_of_the_margin_over_band_steps():
    """Bands {1, 2}, {2, 3, 4}, {4} (first hand trace). Margins: position 2 has 0.01 at
    step 0 (below m_min = 0.05: φ = 400) and 2 at step 1 (φ = ¼); position 4 has 0.5 at
    step 1 (φ = 4) and 0.25 at step 2 (φ = 16); the rest 4 (φ = 1/16). Position 4's
    margin at step 0 (0.001, not in the band) must not count."""
    G = {1, 2, 3, 4}
    z1 = [{2: 1.01, 4: 1.001}, {2: 3.0, 4: 1.5}, {4: 1.25}]
    tr = hand_trace(1, [7, 1, 2, 3, 4], F=[{1}, {2, 3}, {4}], A=[G, G, G], z1=z1,
                    conf=[{1: 0.9, 2: 0.5, 3: 0.5, 4: 0.5}, {2: 0.8, 3: 0.8, 4: 0.3}])
    band = frontier_band(tr)
    h = frontier_hits(tr, band, "inverse_square", m_min=0.05)
    # z2 = 1 everywhere; float32 margins, so compare with φ of the stored values
    m = lambda z: float(torch.tensor(z, dtype=torch.float32)) - 1.0  # noqa: E731
    want = [1 / 16, 1 / max(m(1.01), 0.05) ** 2 + 1 / 4, 1 / 16,
            1 / m(1.5) ** 2 + 1 / m(1.25) ** 2]
    assert h.dtype == torch.float64 and h.shape == (1, 4)
    assert h[0].tolist() == pytest.approx(want, rel=1e-15)
    assert want[1] == pytest.approx(400.25) and want[3] == pytest.approx(20.0)
    assert frontier_hits(tr, band, "one")[0].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_reliability_averages_the_last_W_masked_active_steps_up_to_the_commit():
    """Two blocks {1, 2} (steps 0, 1) and {3, 4} (steps 2, 3), T = 4, W = 4. Position 4 is
    masked throughout but active only at steps 2, 3 (committed at 3): ρ = mean of those
    two, its p_y = 0.9 at the inactive steps 0, 1 must not count. Position 2, committed
    at step 0: only p_0. W = 1 keeps just t = τ_j. Hard: the steps at which p_y equals p1
    (y was the top-1 token)."""
    A1, A2 = {1, 2}, {3, 4}
    p_y = [{1: 0.1, 2: 0.7, 3: 0.9, 4: 0.9}, {1: 0.3}, {3: 0.2, 4: 0.5}, {3: 0.6, 4: 0.25}]
    p1 = [{1: 0.8, 2: 0.7, 3: 0.9, 4: 0.9}, {1: 0.3}, {3: 0.5, 4: 0.5}, {3: 0.6, 4: 0.5}]
    tr = hand_trace(1, [7, 1, 2, 3, 4], F=[{2}, {1}, {3}, {4}], A=[A1, A1, A2, A2],
                    p_y=p_y, p1=p1)
    f = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731 stored float32
    rho = reliability(tr, window=4, kind="soft")[0].tolist()
    assert rho == pytest.approx([(f(.1) + f(.3)) / 2, f(.7), f(.2), (f(.5) + f(.25)) / 2],
                                rel=1e-15)
    assert reliability(tr, window=1)[0].tolist() == [f(.3), f(.7), f(.2), f(.25)]
    assert reliability(tr, window=4, kind="hard")[0].tolist() == [0.5, 1.0, 0.0, 0.5]


# ----------------------------------------------------------------------------- band oracle


class ContextLM:
    """Logits depending on the whole sequence and the position (never the mask id); with
    ``tie`` the position enters only through its parity, so masked positions of equal
    parity get identical logits, hence exactly tied scores."""

    mask_token_id = MASK
    logit_shift = 0

    def __init__(self, seed, tie=False):
        g = torch.Generator().manual_seed(seed)
        self.E, self.W = torch.randn(V, 8, generator=g), torch.randn(8, V, generator=g) * 3
        self.pos = torch.randn(64, 8, generator=g)
        self.tie = tie

    def logits(self, input_ids, attention_mask=None):
        h = self.E[input_ids]  # (B, L, 8)
        i = torch.arange(input_ids.shape[1])
        pos = self.pos[i % 2 if self.tie else i]  # (L, 8)
        z = torch.tanh(h + h.mean(1, keepdim=True) + pos) @ self.W  # (B, L, V)
        z[..., MASK] = -1e4
        return z


def band_oracle(trace, beta):
    """B_t by the definition, one step and row at a time, in plain Python."""
    T, B, L = trace.x.shape
    rand = score_is_random(trace.settings)
    out = torch.zeros(T, B, L, dtype=torch.bool)
    for t in range(T):
        for b in range(B):
            F = [i for i in range(L) if trace.committed[t, b, i]]
            C = [i for i in range(L) if trace.masked[t, b, i] and trace.active[t, b, i]]
            k = int(trace.k[t, b]) if trace.k[t, b] >= 0 else len(F)
            score = (lambda i: float(trace.p1[t, b, i])) if rand else \
                (lambda i: float(trace.conf[t, b, i]))
            rest = sorted((i for i in C if i not in F), key=lambda i: (-score(i), i))
            n = min(len(C), len(F) + math.ceil(beta * k)) - len(F)
            for i in F + rest[:max(n, 0)]:
                out[t, b, i] = True
    return out


@st.composite
def sampler_traces(draw):
    """A recorded run of either loop, any score kind, with or without ties and noise."""
    seed = draw(st.integers(0, 10_000))
    model = ContextLM(seed, tie=draw(st.booleans()))
    B, P = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    prompt = torch.randint(0, MASK, (B, P), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    temp = draw(st.sampled_from([0.0, 1.0]))
    if draw(st.booleans()):
        blk, nb = draw(st.integers(1, 5)), draw(st.integers(1, 3))
        _, tr = llada_generate(model, prompt, draw(st.integers(1, blk)) * nb, blk * nb, blk,
                               temperature=temp, generator=g, record=True,
                               remasking=draw(st.sampled_from(["low_confidence", "random"])))
    else:
        _, tr = dream_generate(model, prompt, draw(st.integers(1, 10)), draw(st.integers(1, 10)),
                               alg=draw(st.sampled_from(["origin", "maskgit_plus",
                                                         "topk_margin", "entropy"])),
                               alg_temp=draw(st.sampled_from([None, 0.5])), temperature=temp,
                               generator=g, record=True)
    return tr, draw(st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0]))


@given(sampler_traces())
def test_band_equals_the_definition_on_sampler_runs(case):
    """frontier_band = the §3.1 definition (Python oracle, bit-exact: selection only), and
    F_t ⊆ B_t ⊆ M_t ∩ A_t."""
    tr, beta = case
    band = frontier_band(tr, beta)
    assert torch.equal(band, band_oracle(tr, beta))
    assert not (tr.committed & ~band).any() and not (band & ~(tr.masked & tr.active)).any()


# ----------------------------------------------------------------------------- φ and T4′


@given(st.integers(0, 10_000), st.sampled_from([2, 5, 50]), st.floats(1e-3, 1.0))
def test_phi_is_the_per_position_factor_of_the_T4_prime_flip_bound(seed, Vb, scale):
    """T4′: 1[flip] ≤ min(1, 2‖δ − c·1‖²/m²). Its per-position factor is 2/m² = 2·φ(m)
    for m ≥ m_min. Near-ties are built by construction (top-2 logits apart by 10^-u).
    Rounding: both sides are a few float64 operations: relative 8·2^-52."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(Vb, generator=g, dtype=torch.float64) * 4
    top = int(z.argmax())
    z[(top + 1) % Vb] = z[top] - 10 ** -(seed % 4)  # margin 1, 0.1, 0.01, 0.001
    delta = torch.randn(Vb, generator=g, dtype=torch.float64) * scale * 1e-3
    res = flip_bounds(z, delta)
    m = res.m
    m_min = float(m) / 2  # the floor is inactive, φ(m) = 1/m²
    d = (z + delta) - z  # the perturbation as realized in float64, as T4′ sees it
    d_c = d - d.mean()
    s2 = float((d_c * d_c).sum())
    phi = float(fragility(m, "inverse_square", m_min))
    assert float(res.t4_prime) == pytest.approx(min(1.0, 2 * s2 * phi), rel=8 * 2**-52)
    assert float(res.flipped) <= min(1.0, 2 * s2 * phi) * (1 + 8 * 2**-52)


# ----------------------------------------------------------------------------- the probe


def test_probe_runs_a_deterministic_sampler_once_and_warns_about_repeats():
    model = ContextLM(3)
    prompts = torch.randint(0, MASK, (3, 2), generator=torch.Generator().manual_seed(0))
    s = SamplerSettings(steps=4, gen_length=4)
    with pytest.warns(UserWarning, match="deterministic"):
        res = probe(model, prompts, s, rollouts=3)
    assert res.seeds == (None,) and res.h.shape == (3, 4) and res.rho.shape == (3, 4)
    assert res.prompt_index.tolist() == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = probe(model, prompts, s, rollouts=1)
    assert torch.equal(one.h, res.h) and torch.equal(one.rho, res.rho)


def test_probe_with_temperature_repeats_with_seeded_generators_reproducibly():
    """R repeats at seeds seed..seed+R−1, stacked repeat-major; repeat r equals a single
    probe at seed + r; batching in chunks keeps the rows in prompt order."""
    model = ContextLM(4)
    prompts = torch.randint(0, MASK, (2, 2), generator=torch.Generator().manual_seed(1))
    s = SamplerSettings(steps=4, gen_length=4, temperature=1.0)
    res = probe(model, prompts, s, rollouts=3, seed=10)
    assert res.seeds == (10, 11, 12) and res.h.shape == (6, 4)
    assert res.prompt_index.tolist() == [0, 1, 0, 1, 0, 1]
    r2 = probe(model, prompts, s, rollouts=1, seed=12)
    assert torch.equal(res.h[4:], r2.h) and torch.equal(res.rho[4:], r2.rho)
    assert res.options == dict(beta=1.0, phi="inverse_square", m_min=0.05, window=4,
                               reliability="soft")
    assert bool(torch.isfinite(res.h).all() and (res.h >= 0).all() and (res.h > 0).any())
    assert bool(((res.rho >= 0) & (res.rho <= 1)).all())


@pytest.mark.parametrize("bad, match", [(dict(rollouts=0), "rollouts"),
                                        (dict(beta=0.0), "beta"),
                                        (dict(window=0), "window"),
                                        (dict(phi="square"), "phi"),
                                        (dict(reliability_kind="medium"), "reliability")])
def test_probe_rejects_bad_options_by_name(bad, match):
    model = ContextLM(0)
    with pytest.raises(ValueError, match=match):
        probe(model, torch.zeros(1, 2, dtype=torch.int64), SamplerSettings(steps=2,
              gen_length=2), **bad)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llada", "dream"])
def test_toy_probe_to_prior_on_training_prompts(name):
    """probe → prior on 16 training prompts (4 per task) of a shipped toy, in seconds:
    h ≥ 0 finite, 0 ≤ ρ ≤ 1, and the prior meets its invariants."""
    from fairref.diffusion import load_generation_config
    from fairref.fair.prior import PriorConfig, estimate_prior
    from fairref.models import load
    from fairref.toy import checkpoint_dir
    from fairref.toy.char_tokenizer import encode_prompts
    from fairref.toy.tasks import TASKS, make_problems

    model = load(checkpoint_dir(name))
    settings, _ = load_generation_config(checkpoint_dir(name), name)
    prompts = [p for t in TASKS for p, _ in make_problems(t, 4, seed=0, split="train")]
    prior, res = estimate_prior(model, encode_prompts(prompts), settings, PriorConfig())
    assert res.h.shape == (16, settings.gen_length) and bool(torch.isfinite(res.h).all())
    assert bool(((res.rho >= 0) & (res.rho <= 1)).all())
    c = prior.config
    assert bool(((prior.pi >= c.pi_min) & (prior.pi <= c.pi_max)).all())
    assert math.fsum(prior.pi.tolist()) / prior.pi.numel() == pytest.approx(1, abs=1e-12)


class MaskProposer(ContextLM):
    """Proposes the mask id itself at the last position: the public loop then 'commits' a
    mask there, and the trajectory is not one Stage I can use."""

    def logits(self, input_ids, attention_mask=None):
        z = super().logits(input_ids, attention_mask)
        z[:, -1, MASK] = 1e4
        return z


def test_probe_refuses_a_trace_in_which_the_teacher_commits_the_mask_id():
    prompts = torch.zeros(1, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="not a valid trajectory"):
        probe(MaskProposer(0), prompts, SamplerSettings(steps=2, gen_length=2))
