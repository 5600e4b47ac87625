"""Evaluation (SPEC §5): the one teacher-forced loop, the metrics, and their statistics.

- ``teacher_forced.py`` — :func:`iter_trace_states` / :func:`iter_batches`, the batched
  loop over teacher states that every teacher-forced quantity (and ``bounds_check``) uses.
- ``metrics.py`` — frontier token/set flip rates, masked KL, post-commit mismatch,
  stability lag, task accuracy.
- ``stats.py`` — bootstrap intervals over problems, Kaplan–Meier, paired comparisons.
"""
