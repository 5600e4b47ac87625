"""Evaluation (SPEC §5): the one teacher-forced loop, the metrics, and their statistics.

- ``teacher_forced.py`` — :func:`iter_trace_states` / :func:`iter_batches`, the batched
  loop over teacher states that every teacher-forced quantity (and ``bounds_check``) uses.
- ``metrics.py`` — frontier token/set flip rates and masked KL (one pass), post-commit
  mismatch and amplification, task accuracy; ``stability.py`` — stability lag.
- ``stats.py`` — bootstrap intervals over problems, Kaplan–Meier, paired comparisons.
- ``run.py`` — :func:`evaluate`, teacher and students on the same problems;
  ``logit_cache.py`` — no model run twice on one state; ``compare.py`` — tables of them.
- ``pieces.py`` — :class:`PieceStore`, an experiment kept as resumable pieces (the
  paper's tables under ``paper_repro/``).
"""

from fairref.eval.metrics import (
    amplification,
    post_commit_mismatch,
    stability_lag,
    task_accuracy,
    teacher_forced_metrics,
)
from fairref.eval.stats import bootstrap_ci, kaplan_meier, paired_comparison, pooled_rate
from fairref.eval.teacher_forced import iter_batches, iter_trace_states

__all__ = [
    "amplification",
    "bootstrap_ci",
    "iter_batches",
    "iter_trace_states",
    "kaplan_meier",
    "paired_comparison",
    "pooled_rate",
    "post_commit_mismatch",
    "stability_lag",
    "task_accuracy",
    "teacher_forced_metrics",
]
