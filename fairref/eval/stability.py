"""Stability lag (SPEC §5): how long after its commit a written token stays the model's choice.

Counterfactual on the teacher's trajectory: for a generated position i (commit step τ_i,
token y_i) and each later state x_t, re-mask only i and ask a model (the teacher for the
paper's claim that committed tokens settle; the quantized model for its post-commit
instability) whether its argmax at i is still y_i. The lag is the least s ≥ 0 after which
the answer is y_i at every remaining state; a position still unstable at the end is
right-censored, and the CCDF is the Kaplan–Meier estimate (``stats.kaplan_meier``).

The queries — T − τ_i + 1 per position, O(G·T) per rollout — are built a chunk at a time
and run through the one batched loop, :func:`~fairref.eval.teacher_forced.iter_batches`.

Legend: T steps, B rollouts, L length, V vocabulary, n positions, m queries, b batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fairref.diffusion.trace import Trace
from fairref.eval.stats import Survival, kaplan_meier, pooled_rate
from fairref.eval.teacher_forced import (
    DEFAULT_BATCH_SIZE,
    check_teacher_forced,
    iter_batches,
)


@dataclass(frozen=True)
class StabilityLag:
    """Per committed position of the teacher's rollouts: lag and censoring (SPEC §5)."""

    problem: np.ndarray  # (n,) problem id
    position: np.ndarray  # (n,) absolute position i
    tau: np.ndarray  # (n,) commit step τ_i
    lag: np.ndarray  # (n,) lag_i when observed; the censoring time T − τ_i otherwise
    observed: np.ndarray  # (n,) bool: False = still unstable at the end (censored)

    def survival(self) -> Survival:
        """Kaplan–Meier estimate of P(lag > s), the CCDF of SPEC §5."""
        return kaplan_meier(self.lag, self.observed)

    def to_dict(self, n_resamples: int = 1000, seed: int = 0) -> dict:
        N = int(self.problem.max()) + 1 if self.problem.size else 0
        unstable = np.bincount(self.problem, weights=((self.lag > 0) | ~self.observed) * 1.0,
                               minlength=N)
        total = np.bincount(self.problem, minlength=N).astype(np.float64)
        return {"n_positions": int(self.lag.size), "censored": int((~self.observed).sum()),
                "unstable_fraction": pooled_rate(unstable, total, n_resamples, seed),
                "ccdf_km": self.survival().to_dict()}


def stability_lag(model, traces: Trace | Sequence[Trace],
                  batch_size: int = DEFAULT_BATCH_SIZE) -> StabilityLag:
    """Counterfactual stability of each committed token along the teacher's trajectory.

    For a generated position i (commit step τ_i, token y_i) and each state x_t with
    τ_i ≤ t ≤ T (x_T = the final tokens), ``model`` sees x_t with only i re-masked (at
    t = τ_i it is masked already) and is *stable* at t when its argmax at i is y_i.
    lag_i = the least s ≥ 0 with stability at every t ≥ τ_i + s; if it is unstable at
    t = T the lag is censored at T − τ_i (it exceeds that). T − τ_i + 1 forward passes per
    position, batched through :func:`~fairref.eval.teacher_forced.iter_batches`.
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    out = {k: [] for k in ("problem", "position", "tau", "lag", "observed")}
    base = 0
    for tr in traces:
        check_teacher_forced(tr)
        T, B, L = tr.x.shape
        states = torch.cat([tr.x, tr.y[None]])  # (T + 1, B, L): x_0 … x_T
        r, i = torch.nonzero(tr.tau >= 0, as_tuple=True)  # (n,) committed positions
        tau = tr.tau[r, i]  # (n,)
        # one query per (position, t ∈ [τ_i, T]): q indexes the position, t the state
        reps = T + 1 - tau  # (n,)
        q = torch.repeat_interleave(torch.arange(r.numel()), reps)  # (m,)
        t = tau[q] + torch.arange(q.numel()) - torch.repeat_interleave(
            torch.cumsum(reps, 0) - reps, reps)  # (m,) τ, τ+1, …, T per position
        stable = torch.empty(q.numel(), dtype=torch.bool)
        chunk = 16 * batch_size  # build the re-masked states a chunk at a time
        for c0 in range(0, q.numel(), chunk):
            qc, tc = q[c0:c0 + chunk], t[c0:c0 + chunk]
            x = states[tc, r[qc]].clone()  # (m_c, L)
            x[torch.arange(qc.numel()), i[qc]] = tr.mask_token_id  # re-mask only i
            am = None if tr.attention_mask is None else tr.attention_mask[r[qc]]
            for batch in iter_batches((model,), x, am, batch_size):
                j = batch.index  # (b,) rows of this chunk
                z = batch.outputs[0].z  # (b, L, V)
                rows = torch.arange(j.numel(), device=z.device)
                z_i = z[rows, i[qc[j]].to(z.device)]  # (b, V): the logits at i only
                stable[c0 + j] = z_i.argmax(-1).cpu() == tr.y[r[qc[j]], i[qc[j]]]
        # last unstable t per position (τ − 1 when none): lag = last + 1 − τ
        last = (tau - 1).scatter_reduce(0, q[~stable], t[~stable], reduce="amax")  # (n,)
        observed = last < T
        out["problem"].append((base + r).numpy())
        out["position"].append(i.numpy())
        out["tau"].append(tau.numpy())
        out["lag"].append(torch.where(observed, last + 1 - tau, T - tau).numpy())
        out["observed"].append(observed.numpy())
        base += B
    return StabilityLag(**{k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64)
                           for k, v in out.items()})
