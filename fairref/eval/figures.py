"""Figures of the SPEC §5 metrics, as ``fairref demo`` and the paper scripts draw them.

Two plots, each from the JSON-ready numbers of :mod:`fairref.eval.run` (so a figure can be
redrawn from a saved ``results.json`` without running a model):

- :func:`plot_flip_by_margin` — the frontier token flip rate in each bin of the teacher's
  probability margin g = p₍₁₎ − p₍₂₎ (SPEC §5 bins), one bar per method, each bin's count
  of frontier slots written under it: flips should concentrate where g is small (T4, §6).
- :func:`plot_lag_ccdf` — the Kaplan–Meier estimate of P(stability lag > s) (SPEC §5), one
  step curve per model; censored lags (still unstable at the end) keep the curve up.

Matplotlib with the non-interactive Agg backend; every file is written to a temporary
name beside the target and renamed into place (nothing half-written, SPEC §7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from fairref.files import write_atomic


def _pyplot():
    """pyplot on the Agg backend (no display needed; safe in tests and on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically, close it, and return ``path``."""
    plt = _pyplot()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def plot_flip_by_margin(bins: Mapping[str, Sequence[dict]], path: str | Path,
                        title: str) -> Path:
    """Grouped bars: frontier token flip rate (%) per teacher-margin bin, per method.

    ``bins``: method → the ``frontier_token_flip_by_margin`` list of
    ``TeacherForcedMetrics.to_dict`` (dicts with ``lo``, ``hi``, ``count``, ``flips``,
    ``rate``; rate None for an empty bin, drawn as no bar). The counts are the teacher's,
    identical for every method, and are written under each bin.
    """
    plt = _pyplot()
    names = list(bins)
    if not names:
        raise ValueError("plot_flip_by_margin needs at least one method")
    ref = bins[names[0]]
    K = len(ref)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for m, name in enumerate(names):
        rate = np.array([np.nan if b["rate"] is None else 100.0 * b["rate"]
                         for b in bins[name]])  # (K,) percent
        ax.bar(np.arange(K) + (m - (len(names) - 1) / 2) * width, rate, width, label=name)
    ax.set_xticks(np.arange(K))
    ax.set_xticklabels([f"[{b['lo']:g}, {b['hi']:g}{']' if b['hi'] == 1 else ')'}\n"
                        f"{b['count']} slots" for b in ref])
    ax.set_xlabel("teacher's probability margin p(1) − p(2) at the frontier slot")
    ax.set_ylabel("frontier token flip rate (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_lag_ccdf(curves: Mapping[str, dict], path: str | Path, title: str) -> Path:
    """Kaplan–Meier step curves of P(stability lag > s), one per model.

    ``curves``: model → a ``Survival.to_dict()`` (``times``, ``survival``, ``n``,
    ``n_censored``). Lags are whole steps, so Ŝ is drawn at s = 0, 1, … one past the last
    event time: Ŝ(s) = P(lag > s) is 1 before the first event and right-continuous (a lag
    of 0 — stable from its commit on — already counts at s = 0).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    s_max = int(max([max(c["times"], default=0) for c in curves.values()] + [1]))
    s = np.arange(s_max + 2)  # lags are whole steps: 0 … one past the last event
    styles = ["-o", "--s", ":^", "-.v", "-D", "--x", ":P"]
    for k, (name, c) in enumerate(curves.items()):
        times = np.asarray(c["times"], dtype=np.float64)  # (K,) event times, ascending
        S = np.concatenate([[1.0], np.asarray(c["survival"], dtype=np.float64)])  # (K + 1,)
        # Ŝ(s) = survival[j] for the last event time t_j ≤ s, and 1 before the first event
        ax.step(s, S[np.searchsorted(times, s, side="right")], styles[k % len(styles)],
                where="post", markersize=4,
                label=f"{name} (n={c['n']}, censored {c['n_censored']})")
    ax.set_xticks(s)
    ax.set_xlabel("steps after the commit, s")
    ax.set_ylabel("P(stability lag > s)  (Kaplan–Meier)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
