"""Helpers of the method comparison (SPEC §4.4, §5): subsets, per-problem outcomes, shares.

The paper script ``paper_repro/fair_vs_baselines.py`` compares methods over several
disjoint calibration subsets (``fairref.toy.tasks.distinct_problems``) on the same held-out
problems. What it needs beyond
:func:`fairref.eval.run.evaluate` and :mod:`fairref.eval.stats` lives here, so the script
stays a config and a few calls:

- :func:`per_problem` — the per-problem outcomes of one student that a paired test
  compares (correct, frontier token flips, post-commit mismatches);
- :func:`label_shares` — the share of a per-rollout statistic's total that each label
  (e.g. task) contributes (the pooled prior's H and R, SPEC §3.3);
- :func:`mean_std` — mean and sample standard deviation over subsets;
- :func:`paired_table` — the Markdown table of paired tests (``stats.paired_comparison``
  results) that both paper scripts print;
- :func:`compare_trees` — two JSON result trees equal up to a relative tolerance on reals
  (the ``--check`` of the paper scripts).

Legend: N problems or rollouts, G generation length.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def per_problem(result) -> dict[str, np.ndarray]:
    """Per-problem outcomes of one student's ``ModelResult`` (N,) each, float64:
    ``correct`` (1/0), ``token_flips`` (flipped frontier slots) and ``mismatched``
    (post-commit mismatched positions). All students of one evaluation share the
    teacher's traces, so their frontier slots and counted positions are the same per
    problem and the counts are comparable pair by pair."""
    out = {}
    if result.accuracy is not None:
        out["correct"] = result.accuracy.correct.astype(np.float64)
    if result.teacher_forced is not None:
        out["token_flips"] = result.teacher_forced.token_flips.astype(np.float64)
    if result.mismatch is not None:
        out["mismatched"] = result.mismatch.mismatched.astype(np.float64)
    return out


def label_shares(values: Tensor, labels: Sequence[str]) -> dict[str, float]:
    """Share of Σ ``values`` (N, G) contributed by the rows of each label (N labels).

    For a pooled prior built from N rollouts, ``values`` = the probe's per-rollout h (or
    1 − ρ) gives each task's share of the pooled H (or R) summed over positions."""
    v = values.to(torch.float64)
    if v.dim() != 2 or v.shape[0] != len(labels):
        raise ValueError(f"values must be (N, G) with one label per row, got shape "
                         f"{tuple(v.shape)} and {len(labels)} labels")
    total = float(v.sum())
    if total == 0 or not math.isfinite(total):
        raise ValueError(f"values sum to {total}; shares are undefined")
    row = v.sum(1)  # (N,)
    names = list(dict.fromkeys(labels))  # first-seen order
    lab = np.asarray(labels)
    return {k: float(row[torch.from_numpy(lab == k)].sum()) / total for k in names}


def mean_std(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n"}`` over the non-None values (std: sample, ddof 1; None below
    two values); all None gives mean None."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(x.mean()) if x.size else None,
            "std": float(x.std(ddof=1)) if x.size > 1 else None, "n": int(x.size)}


#: the per-problem outcomes a paired test compares (:func:`per_problem`), as table columns
PAIRED_COLUMNS = {"correct": "Δ correct", "token_flips": "Δ token flips/problem",
                  "mismatched": "Δ mismatched/problem"}


def paired_table(paired: dict, first: str) -> list[str]:
    """Markdown rows (header first) of paired tests: per compared method, for each outcome
    of :data:`PAIRED_COLUMNS` the mean difference [95% bootstrap CI] and the sign-test p.
    ``paired``: method → outcome → ``paired_comparison(...).to_dict()``; ``first``: the
    name of the first column (e.g. "baseline")."""
    head = " | ".join(f"{c} | p" for c in PAIRED_COLUMNS.values())
    lines = [f"| {first} | {head} |", "|---|" + "---|---|" * len(PAIRED_COLUMNS)]
    for m, pc in paired.items():
        cells = []
        for k in PAIRED_COLUMNS:
            d = pc[k]["mean_diff"]
            cells += [f"{d['estimate']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]",
                      f"{pc[k]['sign_test_p']:.3g}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def compare_trees(new, old, rel: float = 1e-6, path: str = "") -> list[str]:
    """Where two JSON trees differ: keys, lengths and non-reals exactly, reals to a
    relative ``rel`` (absolute 1e-12 near 0). Empty when they agree."""
    if isinstance(new, dict) and isinstance(old, dict):
        if new.keys() != old.keys():
            return [f"{path}: keys {sorted(new)} != {sorted(old)}"]
        return [d for k in new for d in compare_trees(new[k], old[k], rel, f"{path}/{k}")]
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{path}: length {len(new)} != {len(old)}"]
        return [d for i, (a, b) in enumerate(zip(new, old))
                for d in compare_trees(a, b, rel, f"{path}[{i}]")]
    if isinstance(new, float) or isinstance(old, float):
        if isinstance(new, (int, float)) and isinstance(old, (int, float)) \
                and not isinstance(new, bool) and not isinstance(old, bool):
            if math.isclose(new, old, rel_tol=rel, abs_tol=1e-12):
                return []
        return [f"{path}: {new!r} != {old!r}"]
    return [] if new == old else [f"{path}: {new!r} != {old!r}"]
