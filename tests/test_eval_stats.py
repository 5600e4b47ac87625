"""SPEC §5 statistics (fairref.eval.stats): bootstrap over problems, Kaplan–Meier, paired tests.

Kaplan–Meier is checked on a hand-worked example and, without censoring, against the
empirical CCDF; the bootstrap interval against its defining properties; the sign test
against the binomial sum written out.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairref.eval.stats import bootstrap_ci, kaplan_meier, paired_comparison, pooled_rate


def test_kaplan_meier_matches_a_hand_worked_example():
    """durations 1, 2+, 3, 3, 4+, 5 (+ = censored). At s=1: 6 at risk, 1 event → 5/6.
    s=3: the one censored at 2 has left, 4 at risk, 2 events → 5/6 · 2/4 = 5/12.
    s=5: 1 at risk (4+ has left), 1 event → 0."""
    km = kaplan_meier([1, 2, 3, 3, 4, 5], [True, False, True, True, False, True])
    assert km.times.tolist() == [1, 3, 5]
    assert km.at_risk.tolist() == [6, 4, 1] and km.events.tolist() == [1, 2, 1]
    assert np.allclose(km.survival, [5 / 6, 5 / 12, 0.0], rtol=0, atol=1e-15)
    assert np.allclose(km.at([0, 1, 2, 2.5, 3, 4, 5, 9]),
                       [1, 5 / 6, 5 / 6, 5 / 6, 5 / 12, 5 / 12, 0, 0], rtol=0, atol=1e-15)
    assert km.n == 6 and km.n_censored == 2


def test_censoring_at_an_event_time_keeps_the_subject_at_risk_there():
    """A subject censored at s is known to last beyond s: it counts in n_j at s."""
    km = kaplan_meier([2, 2], [True, False])
    assert km.at_risk.tolist() == [2] and km.survival.tolist() == [0.5]


@given(st.lists(st.integers(0, 12), min_size=1, max_size=40))
def test_kaplan_meier_without_censoring_is_the_empirical_ccdf(d):
    """With every event observed, Ŝ(s) = #{d_i > s} / N at every s (the product telescopes)."""
    d = np.array(d)
    km = kaplan_meier(d, np.ones(d.size, dtype=bool))
    s = np.arange(-1, 14)
    want = (d[None, :] > s[:, None]).mean(1)
    assert np.allclose(km.at(s), want, rtol=0, atol=1e-12)


@given(st.lists(st.integers(0, 12), min_size=1, max_size=40), st.data())
def test_kaplan_meier_lies_between_the_all_events_and_no_censoring_bounds(d, data):
    """Censoring can only raise Ŝ above the curve that treats censoring times as events,
    and never above the fraction not yet known to have had the event."""
    d = np.array(d)
    e = np.array(data.draw(st.lists(st.booleans(), min_size=d.size, max_size=d.size)))
    s = np.arange(-1, 14)
    km = kaplan_meier(d, e).at(s)
    as_events = (d[None, :] > s[:, None]).mean(1)
    upper = 1 - ((d[None, :] <= s[:, None]) & e[None, :]).mean(1)
    assert (km >= as_events - 1e-12).all() and (km <= upper + 1e-12).all()


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    ok = rng.random(200) < 0.3
    a, b = bootstrap_ci(ok, seed=5), bootstrap_ci(ok, seed=5)
    assert a == b and a.n_resamples == 1000
    assert a.estimate == ok.mean() and a.lo <= a.estimate <= a.hi and a.lo < a.hi


def test_bootstrap_interval_shrinks_with_more_problems():
    """Width ∝ 1/√N: 16× the problems (same rate) give an interval about 4× narrower;
    asserting only 'at least 2× narrower' leaves room for resampling noise."""
    small = np.tile([1.0, 0.0, 0.0, 0.0], 25)  # N = 100, rate ¼
    large = np.tile(small, 16)  # N = 1600
    w_small = (lambda i: i.hi - i.lo)(bootstrap_ci(small))
    w_large = (lambda i: i.hi - i.lo)(bootstrap_ci(large))
    assert w_large < w_small / 2


def test_bootstrap_pooled_ratio_weights_problems_by_their_slots():
    """Σ num / Σ den, not the mean of per-problem ratios: (0 + 9) / (1 + 9) = 0.9."""
    r = bootstrap_ci([0, 9], [1, 9])
    assert r.estimate == 0.9 and 0 <= r.lo <= r.hi <= 1


def test_bootstrap_of_a_constant_is_that_constant():
    r = bootstrap_ci(np.full(30, 0.25))
    assert r.lo == r.hi == r.estimate == 0.25


@pytest.mark.parametrize("kw, match", [
    (dict(num=[1.0, float("nan")]), "non-finite"),
    (dict(num=[[1.0]]), "1-D"),
    (dict(num=[1.0], den=[0.0]), "sums to 0"),
    (dict(num=[1.0, 2.0], den=[1.0]), "same length"),
    (dict(num=[]), "at least one"),
])
def test_bootstrap_rejects_bad_input_with_a_clear_message(kw, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(**kw)


def test_sign_test_equals_the_exact_binomial_sum():
    """8 of 10 untied pairs favour A (2 ties dropped): p = 2·Σ_{k≥8} C(10,k)/2^10."""
    a = [1] * 8 + [0] * 2 + [1, 0]
    b = [0] * 8 + [1] * 2 + [1, 0]
    r = paired_comparison(a, b)
    want = 2 * sum(math.comb(10, k) for k in range(8, 11)) / 2**10
    assert (r.n_pos, r.n_neg, r.n_ties) == (8, 2, 2)
    assert r.sign_test_p == pytest.approx(want, rel=1e-12)
    assert r.mean_diff.estimate == pytest.approx(6 / 12, rel=1e-15)
    assert r.mean_diff.lo <= r.mean_diff.estimate <= r.mean_diff.hi


def test_identical_methods_are_not_different():
    x = np.random.default_rng(0).random(20)
    r = paired_comparison(x, x)
    assert r.n_ties == 20 and r.sign_test_p == 1.0 and r.wilcoxon_p is None
    assert r.mean_diff.lo == r.mean_diff.hi == 0.0
    assert set(r.to_dict()) >= {"mean_diff", "sign_test_p", "wilcoxon_p"}


def test_pooled_rate_is_none_without_slots_and_the_bootstrap_estimate_otherwise():
    assert pooled_rate([0, 0], [0, 0]) == {"value": None, "num": 0.0, "den": 0.0, "ci95": None}
    r = pooled_rate([1, 3], [2, 6], seed=4)
    ci = bootstrap_ci([1, 3], [2, 6], seed=4)
    assert r == {"value": 0.5, "num": 4.0, "den": 8.0, "ci95": [ci.lo, ci.hi]}
