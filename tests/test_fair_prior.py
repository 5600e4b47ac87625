"""The Stage I prior and its token weights (SPEC §3.3, §3.4).

The bisected π is compared with an exact rational oracle (the piecewise-linear equation
mean clip(a·u) = 1 solved in ``fractions``); the properties say the claim in their names
and reach the hard cases by construction (many zeros, a single positive u, ties, huge
dynamic range, near-constant u, π_min = 1). Token weights are checked against a plain
per-row loop of the §3.4 definition, bit for bit, including Dream's shift and padding.

Legend: G generation length, S states, P prompt length, L = P + G.
"""

import json
import math
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairref.diffusion import SamplerSettings
from fairref.fair.prior import Prior, PriorConfig, mix_terms, row_weights, unit_mean_clip

EPS = 2.0**-52


@st.composite
def u_vectors(draw):
    """u ≥ 0 of length G, built to hit the degenerate and the ill-conditioned cases."""
    G = draw(st.integers(1, 48))
    kind = draw(st.sampled_from(["lognormal", "zeros", "one_positive", "ties", "near_const",
                                 "const"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if kind == "lognormal":  # up to ~12 decades of dynamic range
        u = torch.exp(torch.randn(G, generator=g, dtype=torch.float64) * 6)
    elif kind == "zeros":  # a random fraction of exact zeros
        u = torch.rand(G, generator=g, dtype=torch.float64)
        u[torch.rand(G, generator=g) < draw(st.floats(0.0, 1.0))] = 0.0
        u[draw(st.integers(0, G - 1))] = 1.0  # at least one positive
    elif kind == "one_positive":
        u = torch.zeros(G, dtype=torch.float64)
        u[draw(st.integers(0, G - 1))] = draw(st.floats(1e-6, 1e6))
    elif kind == "ties":
        u = torch.randint(0, 4, (G,), generator=g).to(torch.float64)
        u[0] = 3.0
    elif kind == "near_const":  # constant up to one ulp here and there
        u = torch.full((G,), 0.7, dtype=torch.float64)
        u[torch.rand(G, generator=g) < 0.3] = math.nextafter(0.7, 1.0)
    else:
        u = torch.full((G,), draw(st.floats(1e-6, 1e6)), dtype=torch.float64)
    pi_min = draw(st.sampled_from([0.25, 0.01, 0.5, 1.0]))
    pi_max = draw(st.sampled_from([4.0, 1.0, 1.5, 100.0]))
    return u, pi_min, pi_max


def oracle_pi(u, pi_min, pi_max):
    """π by the definition in exact rationals, or None when no a > 0 reaches mean 1."""
    uq = [Fraction(x) for x in u.tolist()]
    lo_, hi_ = Fraction(pi_min), Fraction(pi_max)
    G = len(uq)

    def f(a):
        return sum(min(max(a * x, lo_), hi_) for x in uq) / G

    if len(set(uq)) == 1:
        return [1.0] * G
    bps = sorted({Fraction(0)} | {c / x for x in uq if x > 0 for c in (lo_, hi_)})
    if f(bps[-1]) < 1:
        return None
    k = next(i for i, b in enumerate(bps) if f(b) >= 1)
    if k == 0:
        a = bps[0]
    else:
        b0, b1 = bps[k - 1], bps[k]
        a = b0 + (1 - f(b0)) * (b1 - b0) / (f(b1) - f(b0))  # f is linear on [b0, b1]
    return [float(min(max(a * x, lo_), hi_)) for x in uq]


@given(u_vectors())
def test_bisected_pi_has_mean_one_to_float64_rounding_stays_in_the_clip_and_matches_oracle(c):
    """When a root exists: π_min ≤ π ≤ π_max, |mean(π) − 1| ≤ 4·G·ε·π_max (the rounding of
    a·u and of the mean inside the bisection's test; the sum here is exact, ``fsum``), and
    π equals the exact rational solution to within the same bound times G (an error e in
    the mean moves a by e/slope, slope = Σ_unclipped u / G)."""
    u, lo, hi = c
    want = oracle_pi(u, lo, hi)
    if want is None:
        return  # covered by the fallback test
    pi, _ = unit_mean_clip(u, lo, hi)
    G = u.numel()
    assert bool(((pi >= lo) & (pi <= hi)).all())
    assert abs(math.fsum(pi.tolist()) / G - 1) <= 4 * G * EPS * hi
    assert max(abs(a - b) for a, b in zip(pi.tolist(), want)) <= 4 * G * G * EPS * hi


@given(u_vectors())
def test_pi_is_monotone_in_u(c):
    """u_i ≤ u_j ⇒ π_i ≤ π_j, in every branch (bisection, fallback, constant)."""
    u, lo, hi = c
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pi, _ = unit_mean_clip(u, lo, hi)
    order = torch.argsort(u, stable=True)
    assert bool((pi[order].diff() >= 0).all())


@given(u_vectors(), st.integers(-20, 20))
def test_scaling_u_by_a_power_of_two_leaves_pi_unchanged_bit_for_bit(c, e):
    """π depends on u only up to scale: the bisection's bracket and midpoints scale by
    exactly 2^−e, so every a·u is the same float."""
    u, lo, hi = c
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pi, _ = unit_mean_clip(u, lo, hi)
        pi2, _ = unit_mean_clip(u * 2.0**e, lo, hi)
    assert torch.equal(pi, pi2)


@given(st.integers(1, 64), st.floats(1e-300, 1e300))
def test_constant_u_gives_pi_exactly_one_without_bisection(G, c):
    pi, a = unit_mean_clip(torch.full((G,), c, dtype=torch.float64), 0.25, 4.0)
    assert a is None and torch.equal(pi, torch.ones(G, dtype=torch.float64))


def test_all_zero_but_one_u_bisects_when_it_can_and_falls_back_with_a_warning():
    """u = (0, 0, 0, 1): the zeros sit at π_min = ¼, so the one positive takes
    4 − 3/4 = 3.25 ≤ π_max. With G = 16 the reachable mean is (4 + 15/4)/16 < 1: no a
    exists, π = u / mean(u) = 16·e_j, and a warning says so."""
    u = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    pi, a = unit_mean_clip(u, 0.25, 4.0)
    assert pi.tolist() == pytest.approx([0.25, 0.25, 0.25, 3.25], abs=4 * 4 * EPS * 4)
    u16 = torch.zeros(16, dtype=torch.float64)
    u16[5] = 2.0
    with pytest.warns(UserWarning, match="15 of 16 positions have u = 0"):
        pi16, a16 = unit_mean_clip(u16, 0.25, 4.0)
    assert a16 is None and pi16.tolist() == [16.0 if j == 5 else 0.0 for j in range(16)]


def test_a_term_with_mean_zero_is_replaced_by_one():
    """H ≡ 0 (no band hits anywhere): u = λ + (1−λ)·R/mean(R); both zero: u ≡ 1, π ≡ 1."""
    R = torch.tensor([0.1, 0.3, 0.2, 0.2], dtype=torch.float64)
    Z = torch.zeros(4, dtype=torch.float64)
    assert torch.equal(mix_terms(Z, R, 0.5), 0.5 + 0.5 * (R / R.mean()))
    assert torch.equal(mix_terms(R, Z, 0.25), 0.25 * (R / R.mean()) + 0.75)
    prior = Prior.from_stats(Z, Z)
    assert torch.equal(prior.pi, torch.ones(4, dtype=torch.float64)) and prior.scale is None


# ----------------------------------------------------------------------------- the Prior


def _prior(G=8, seed=0, **config):
    g = torch.Generator().manual_seed(seed)
    H = torch.rand(G, generator=g, dtype=torch.float64) * 5
    R = torch.rand(G, generator=g, dtype=torch.float64) * 0.2
    mm = torch.rand(G, generator=g, dtype=torch.float64) * 10
    mm[1] = math.nan  # a position never in the band
    return Prior.from_stats(H, R, PriorConfig(**config), hits=torch.rand(G, generator=g,
                            dtype=torch.float64), margin_mean=mm,
                            settings=SamplerSettings(steps=8, gen_length=G, temperature=0.5),
                            seeds=(3, 4), prompt_count=11)


def _same_prior(a, b):
    for k in ("pi", "H", "R", "hits", "margin_mean"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype == torch.float64 and torch.equal(x.isnan(), y.isnan())
        assert torch.equal(x.nan_to_num(), y.nan_to_num()), k
    for k in ("config", "settings", "seeds", "prompt_count", "scale", "shuffle_seed"):
        assert getattr(a, k) == getattr(b, k), k


def test_prior_json_round_trip_is_exact(tmp_path):
    p = _prior(lam=0.3, gamma=0.5, phi="one")
    for prior in (p, p.shuffled(7), Prior.from_stats(torch.ones(3), torch.ones(3))):
        prior.save(tmp_path / "prior.json")
        _same_prior(Prior.load(tmp_path / "prior.json"), prior)
    assert json.loads((tmp_path / "prior.json").read_text())["format"] == "fairref.prior"
    assert [f.name for f in tmp_path.iterdir()] == ["prior.json"]  # no temporary left


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("R"), "missing keys \\['R'\\]"),
    (lambda d: d.update(pi=d["pi"][:-1]), "'pi' must be a list of gen_length=8"),
    (lambda d: d.update(H=["x"] * 8), "'H' holds a non-number"),
    (lambda d: d["config"].update(pi_min=2.0), "pi_min <= 1"),
    (lambda d: d["sampler"].update(alg="bogus"), "alg must be one of"),
    (lambda d: d.update(format="other"), "not a fairref.prior file"),
    (lambda d: d.update(version=99), "version 99"),
])
def test_prior_load_names_what_is_wrong_and_where(tmp_path, edit, match):
    d = _prior().to_dict()
    edit(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as e:
        Prior.load(f)
    assert str(f) in str(e.value)


def test_prior_load_and_save_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no prior file"):
        Prior.load(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        Prior.load(tmp_path / "broken.json")
    # a missing folder is created, as for every file fairref writes (fairref.files)
    _prior().save(tmp_path / "new" / "p.json")
    assert Prior.load(tmp_path / "new" / "p.json").pi.tolist() == _prior().pi.tolist()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        _prior().save(tmp_path / "file" / "p.json")
    # a write that fails half-way leaves the previous file intact and no temporary
    good = tmp_path / "p.json"
    _prior(seed=1).save(good)
    before = good.read_text()

    def broken(self, text, **kw):
        open(self, "w").write(text[:10])
        raise OSError("disk full")
    monkeypatch.setattr("pathlib.Path.write_text", broken)
    with pytest.raises(OSError):
        _prior(seed=2).save(good)
    monkeypatch.undo()
    assert good.read_text() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["broken.json", "file", "new",
                                                          "p.json"]


def test_prior_plot_writes_a_png(tmp_path):
    _prior().plot(tmp_path / "prior.png")
    assert (tmp_path / "prior.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shuffled_permutes_pi_with_a_fixed_seed_and_keeps_h_r_consistent():
    p = _prior(G=16)
    s1, s2, s3 = p.shuffled(5), p.shuffled(5), p.shuffled(6)
    assert torch.equal(s1.pi, s2.pi) and not torch.equal(s1.pi, s3.pi)
    assert torch.equal(s1.pi.sort().values, p.pi.sort().values) and s1.shuffle_seed == 5
    perm = [p.pi.tolist().index(v) for v in s1.pi.tolist()]  # π values are distinct here
    assert s1.H.tolist() == [p.H[j] for j in perm] and s1.R.tolist() == [p.R[j] for j in perm]
    # π re-derived from the shuffled H, R is the shuffled π (up to summation order)
    assert s1.replace().pi.tolist() == pytest.approx(s1.pi.tolist(), abs=1e-12)


def test_ablation_constructors_set_lambda_and_gamma():
    p = _prior(G=16)
    lam1, lam0 = p.frontier_only(), p.reliability_only()
    assert lam1.config.lam == 1.0 and lam0.config.lam == 0.0
    assert torch.equal(lam1.pi, unit_mean_clip(p.H / p.H.mean(), 0.25, 4.0)[0])
    assert torch.equal(lam0.pi, unit_mean_clip(p.R / p.R.mean(), 0.25, 4.0)[0])
    assert p.no_frontier_emphasis().config.gamma == 0.0
    assert lam1.seeds == p.seeds and lam1.prompt_count == 11
    with pytest.raises(ValueError, match="new probe"):
        p.replace(beta=2.0)


@pytest.mark.parametrize("bad", [dict(lam=1.5), dict(pi_min=0.0), dict(pi_max=0.5),
                                 dict(beta=-1.0), dict(window=0), dict(phi="cube"),
                                 dict(reliability="x"), dict(gamma=-1.0), dict(m_min=0.0),
                                 dict(pi_prompt=math.inf)])
def test_prior_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="PriorConfig"):
        PriorConfig(**bad)


# ----------------------------------------------------------------------------- weights


def weights_oracle(pi, band, P, pi_prompt, gamma, shift, real):
    """§3.4 row by row in plain Python."""
    S, L = len(band), len(band[0])
    out = []
    for n in range(S):
        def pos_w(i):
            if i >= L or not real[n][i]:
                return pi_prompt  # predicts no (real) position
            return pi[i - P] * (1 + gamma * float(band[n][i])) if i >= P else pi_prompt
        out.append([0.0 if not real[n][i] else pos_w(i + shift) for i in range(L)])
    return out


@st.composite
def weight_cases(draw):
    G, P, S = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    pi = torch.rand(G, generator=g, dtype=torch.float64) * 4
    band = torch.rand(S, P + G, generator=g) < 0.4
    real = torch.ones(S, P + G, dtype=torch.bool)
    pad = draw(st.sampled_from(["none", "left", "right"]))
    for n in range(S):
        c = draw(st.integers(0, P - 1))
        if pad == "left":
            real[n, :c] = False
        elif pad == "right":  # padding after real tokens: its predecessor predicts nothing
            real[n, P + G - c:] = False
    return (pi, band, P, draw(st.sampled_from([1.0, 0.0, 0.5])),
            draw(st.sampled_from([1.0, 0.0, 2.5])), draw(st.sampled_from([0, 1])),
            None if pad == "none" else real)


@given(weight_cases())
def test_token_weights_follow_the_definition_per_row_including_shift_and_padding(case):
    """w = the §3.4 definition bit for bit; w ≥ 0 and finite; padding rows 0."""
    pi, band, P, pi_prompt, gamma, shift, real = case
    w = row_weights(pi, band, P, pi_prompt=pi_prompt, gamma=gamma, logit_shift=shift,
                    attention_mask=real)
    r = torch.ones_like(band) if real is None else real
    assert w.dtype == torch.float64
    assert w.tolist() == weights_oracle(pi.tolist(), band.tolist(), P, pi_prompt, gamma,
                                        shift, r.tolist())
    assert bool(torch.isfinite(w).all() and (w >= 0).all() and (w[~r] == 0).all())


@given(st.integers(1, 12), st.integers(1, 6), st.floats(1e-3, 1e3), st.floats(0, 1),
       st.sampled_from([0, 1]), st.integers(0, 2**31))
def test_weights_are_exactly_one_on_real_rows_when_u_is_constant_gamma_zero_prompt_one(
        G, P, h, r, shift, seed):
    """The condition under which ``fair`` reproduces ``masked-uniform`` byte for byte:
    constant H and R (hence constant u), γ = 0, π_prompt = 1 ⇒ w = 1 on every real row."""
    prior = Prior.from_stats(torch.full((G,), h, dtype=torch.float64),
                             torch.full((G,), r, dtype=torch.float64),
                             PriorConfig(gamma=0.0, pi_prompt=1.0))
    g = torch.Generator().manual_seed(seed)
    band = torch.rand(3, P + G, generator=g) < 0.5
    real = torch.ones(3, P + G, dtype=torch.bool)
    real[1, : P - 1] = False
    w = row_weights(prior.pi, band, P, pi_prompt=1.0, gamma=0.0, logit_shift=shift,
                    attention_mask=real)
    assert torch.equal(w[real], torch.ones(int(real.sum()), dtype=torch.float64))
    assert torch.equal(w[~real], torch.zeros(int((~real).sum()), dtype=torch.float64))


def test_row_weights_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="prompt_len"):
        row_weights(torch.ones(4), torch.zeros(2, 6, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="logit_shift"):
        row_weights(torch.ones(4), torch.zeros(2, 7, dtype=torch.bool), 3, logit_shift=2)
