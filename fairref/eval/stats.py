"""Statistics for the SPEC §5 report: intervals over problems, survival curves, paired tests.

- :func:`bootstrap_ci` — percentile bootstrap over *problems* (SPEC §5: 1000 resamples,
  seeded). A pooled rate Σ num / Σ den (e.g. flips / frontier slots) is resampled by whole
  problems, so the interval reflects that slots of one problem are not independent.
- :func:`kaplan_meier` — the product-limit estimate Ŝ(s) = Π_{s_j ≤ s} (1 − d_j / n_j) of
  P(lag > s) with right-censoring (stability lags still unstable at the end, divergence
  steps that never came). Checked by hand in the tests and against the empirical CCDF
  when nothing is censored.
- :func:`paired_comparison` — two methods on the same problems: a paired bootstrap
  interval of the mean difference, the exact sign test (``scipy.stats.binomtest``) and the
  Wilcoxon signed-rank test (``scipy.stats.wilcoxon``).

Everything here is NumPy/SciPy in float64 on small per-problem arrays; no model is run.
Legend: N problems, R resamples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

#: SPEC §5: bootstrap resamples over problems
N_RESAMPLES = 1000


def _vector(name: str, v) -> np.ndarray:
    """``v`` as a finite 1-D float64 array, or a ``ValueError`` naming ``name``."""
    a = np.asarray(v, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one value per problem (1-D), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains a non-finite value; drop undefined problems first")
    return a


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    estimate: float  # the statistic on the original sample
    lo: float  # lower percentile bound
    hi: float  # upper percentile bound
    level: float  # nominal coverage, e.g. 0.95
    n: int  # problems resampled
    n_resamples: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(num, den=None, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of a mean or a pooled ratio, resampling problems.

    ``num`` (N,) per-problem values; with ``den`` (N,) the statistic is the pooled ratio
    Σ num / Σ den (a rate over slots, each problem contributing ``den`` slots), otherwise
    the mean of ``num``. Each of the ``n_resamples`` resamples draws N problems with
    replacement from ``numpy.random.default_rng(seed)``; a resample whose Σ den is 0 is
    dropped (its ratio is undefined). Bounds are the (1 ± level)/2 quantiles (NumPy's
    default linear interpolation).
    """
    x = _vector("num", num)
    d = np.ones_like(x) if den is None else _vector("den", den)
    if x.shape != d.shape:
        raise ValueError(f"num and den must have the same length, got {x.size} and {d.size}")
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one problem")
    if (d < 0).any():
        raise ValueError("den must be >= 0 (a count of slots per problem)")
    if d.sum() == 0:
        raise ValueError("den sums to 0: the ratio is undefined on this sample")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))  # (R, N)
    num_r, den_r = x[idx].sum(1), d[idx].sum(1)  # (R,)
    ok = den_r > 0
    stat = num_r[ok] / den_r[ok]  # (R',) the statistic of each usable resample
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return Interval(estimate=float(x.sum() / d.sum()), lo=float(lo), hi=float(hi),
                    level=level, n=int(x.size), n_resamples=n_resamples, seed=seed)


def pooled_rate(num, den, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """JSON-ready pooled rate Σ num / Σ den with its 95% bootstrap interval over problems
    (:func:`bootstrap_ci`); value and interval are None when Σ den = 0."""
    num, den = _vector("num", num), _vector("den", den)
    if den.sum() == 0:
        return {"value": None, "num": float(num.sum()), "den": float(den.sum()), "ci95": None}
    ci = bootstrap_ci(num, den, n_resamples=n_resamples, seed=seed)
    return {"value": ci.estimate, "num": float(num.sum()), "den": float(den.sum()),
            "ci95": [ci.lo, ci.hi]}


@dataclass(frozen=True)
class Survival:
    """Kaplan–Meier estimate: Ŝ just after each distinct event time."""

    times: np.ndarray  # (K,) distinct times with at least one event, ascending
    survival: np.ndarray  # (K,) Ŝ(times[j]) = P(duration > times[j])
    at_risk: np.ndarray  # (K,) n_j: durations ≥ times[j]
    events: np.ndarray  # (K,) d_j: events at times[j]
    n: int  # subjects
    n_censored: int

    def at(self, s) -> np.ndarray:
        """Ŝ(s) = P(duration > s) (the CCDF) at each value of ``s``: a right-continuous
        step function, 1 before the first event."""
        j = np.searchsorted(self.times, np.asarray(s, dtype=np.float64), side="right")
        return np.concatenate([[1.0], self.survival])[j]

    def to_dict(self) -> dict:
        return {"times": self.times.tolist(), "survival": self.survival.tolist(),
                "at_risk": self.at_risk.tolist(), "events": self.events.tolist(),
                "n": self.n, "n_censored": self.n_censored}


def kaplan_meier(durations, observed) -> Survival:
    """Product-limit estimate of P(duration > s) with right-censoring.

    ``durations`` (N,): the event time where ``observed`` (N,) bool is True, else the last
    time the subject was seen (it is known only that its duration exceeds it). At each
    distinct event time s_j, n_j = #{durations ≥ s_j} (subjects censored at s_j are still at
    risk there: they are known to last beyond it) and d_j = #{events at s_j};
    Ŝ(s) = Π_{s_j ≤ s} (1 − d_j / n_j).
    """
    t = _vector("durations", durations)
    e = np.asarray(observed, dtype=bool)
    if e.shape != t.shape:
        raise ValueError(f"observed must have one flag per duration, got {e.shape} and {t.shape}")
    times = np.unique(t[e])  # (K,) ascending
    n_j = (t[None, :] >= times[:, None]).sum(1)  # (K,)
    d_j = ((t[None, :] == times[:, None]) & e[None, :]).sum(1)  # (K,)
    S = np.cumprod(1.0 - d_j / n_j)  # (K,)
    return Survival(times=times, survival=S, at_risk=n_j, events=d_j, n=int(t.size),
                    n_censored=int((~e).sum()))


@dataclass(frozen=True)
class PairedComparison:
    """Method A against method B on the same problems (difference = A − B)."""

    mean_diff: Interval  # paired bootstrap of mean(A − B)
    n_pos: int  # problems where A > B
    n_neg: int  # problems where A < B
    n_ties: int  # problems where A == B (left out of both tests)
    sign_test_p: float  # exact two-sided binomial test of n_pos vs n_neg at ½
    wilcoxon_p: float | None  # two-sided signed-rank test; None when every pair is tied

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean_diff"] = self.mean_diff.to_dict()
        return d


def paired_comparison(a, b, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      level: float = 0.95) -> PairedComparison:
    """Compare per-problem outcomes ``a`` and ``b`` (N,) of two methods on the same problems.

    The bootstrap resamples problems (pairs stay together); the sign test uses only the
    sign of each difference (exact, no assumption on their distribution); Wilcoxon also
    uses their ranks (zero differences dropped, SciPy's ``zero_method="wilcox"``).
    """
    x, y = _vector("a", a), _vector("b", b)
    if x.shape != y.shape:
        raise ValueError(f"a and b must have one value per problem each, got {x.size} "
                         f"and {y.size}")
    diff = x - y  # (N,)
    n_pos, n_neg = int((diff > 0).sum()), int((diff < 0).sum())
    sign_p = 1.0 if n_pos + n_neg == 0 else float(
        sps.binomtest(n_pos, n_pos + n_neg, 0.5, alternative="two-sided").pvalue)
    wil_p = None if n_pos + n_neg == 0 else float(
        sps.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
    return PairedComparison(mean_diff=bootstrap_ci(diff, None, n_resamples, seed, level),
                            n_pos=n_pos, n_neg=n_neg, n_ties=int(diff.size - n_pos - n_neg),
                            sign_test_p=sign_p, wilcoxon_p=wil_p)
