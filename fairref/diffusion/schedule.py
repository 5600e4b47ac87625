"""Commit schedules of the two public samplers (SPEC §2, "Samplers").

How many masked positions a sampler commits at each step, as pure functions:

- LLaDA (``ML-GSAI/LLaDA`` ``generate.py``, ``get_num_transfer_tokens``): a block's masked
  count is split evenly over the block's steps, the remainder going to the earliest steps.
- Dream (``Dream-org/Dream-v0-Instruct-7B`` ``generation_utils.py``, ``_sample``): float32
  timesteps ``linspace(1, eps, steps + 1)``; from ``t`` to ``s`` it commits
  ``int(n̄ · (1 − s/t))`` where ``n̄`` is the masked count averaged over the batch, and
  everything left at the last step.

Both were checked against those loops; the arithmetic (integer division for LLaDA, float32
tensors for Dream) is kept identical so that the counts match bit for bit.

Legend: B batch, T steps.
"""

from __future__ import annotations

import torch
from torch import Tensor


def llada_transfer_counts(mask_count: Tensor, steps: int) -> Tensor:
    """Tokens committed at each step of one LLaDA block.

    ``mask_count``: (B,) int — masked positions in the block per row.
    Returns (B, steps) int64 with ``out[b].sum() == mask_count[b]``; each entry is
    ``mask_count // steps``, plus one for the first ``mask_count % steps`` steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}; give each block at least one step")
    n = torch.as_tensor(mask_count, dtype=torch.int64).reshape(-1)  # (B,)
    if (n < 0).any():
        raise ValueError(f"mask_count must be >= 0, got {n.tolist()}")
    base = n // steps  # (B,)
    remainder = n % steps  # (B,)
    # step i gets one extra token exactly when i < remainder: the earliest steps take the rest
    i = torch.arange(steps, device=n.device)  # (T,)
    return base[:, None] + (i[None, :] < remainder[:, None]).to(torch.int64)  # (B, T)


def dream_timesteps(steps: int, eps: float, device: torch.device | str | None = None) -> Tensor:
    """Dream's time grid: float32 ``linspace(1, eps, steps + 1)`` → (steps + 1,).

    float32 on purpose: the public loop builds it with the default dtype, and the commit
    count ``int(n̄ · (1 − s/t))`` is sensitive to the last bit where ``n̄ · (1 − s/t)`` is
    close to an integer. For the same reason it is built on the device of the run, as the
    public loop does (a CUDA linspace need not round like the CPU one).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}; the public default is 1e-3")
    return torch.linspace(1, eps, steps + 1, dtype=torch.float32, device=device)


def dream_transfer_count(n_masked_mean, t, s, last: bool) -> int:
    """Tokens Dream commits going from time ``t`` to ``s``.

    ``n_masked_mean`` is the masked count averaged over the batch (a float32 0-d tensor in
    the public loop: ``mask_index.sum() / B``); ``t``, ``s`` are consecutive entries of
    :func:`dream_timesteps`. At the last step (``last=True``) everything left is committed:
    ``int(n̄)``. The product is evaluated in float32 as in the public loop.
    """
    n = torch.as_tensor(n_masked_mean, dtype=torch.float32)
    if last:
        return int(n)
    t = torch.as_tensor(t, dtype=torch.float32)
    s = torch.as_tensor(s, dtype=torch.float32)
    if not (t > 0):
        raise ValueError(f"t must be > 0, got {float(t)}")
    return int(n * (1 - s / t))
