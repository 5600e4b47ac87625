"""Pieces shared by the LLaDA and Dream samplers (SPEC §2, "Samplers" and "Trace").

The two loops live in ``llada_sampler.py`` and ``dream_sampler.py``; this file holds what
they have in common: checking the prompt, laying out the initial state (prompt followed
by masks), extending the padding mask over the generated region, and recording a run
into a :class:`~fairref.diffusion.trace.Trace` (:class:`TraceRecorder`; the conventions of
each recorded field are in ``trace.py``).

Legend: T steps, B batch, P prompt length, G generated length, L = P + G, V vocabulary.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from fairref.diffusion.trace import STEP_FIELDS, Trace, commit_steps

#: keep each step's logits for p_y while all of them fit in this many bytes; else 2nd pass
LOGPROB_BUDGET_BYTES = 256 * 2**20
#: bytes of float64 scratch per chunk when reducing over the vocabulary
_CHUNK_BYTES = 64 * 2**20


def init_state(prompt_ids: Tensor, gen_length: int, mask_token_id: int,
               attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The state before the first step and the padding mask the model will see.

    ``prompt_ids`` (B, P) int, left-padded by the caller if prompts differ in length;
    ``attention_mask`` (B, P) (True/1 = real token) or None.
    Returns ``x`` (B, L) int64 = prompt then ``gen_length`` masks, and the mask extended
    with True over the generated region (the public loops append ones), as bool (B, L).
    """
    if not isinstance(prompt_ids, Tensor) or prompt_ids.dim() != 2:
        raise ValueError("prompt_ids must be a (B, P) integer tensor; add a batch dimension "
                         "with prompt_ids[None] for a single prompt")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    if gen_length < 1:
        raise ValueError(f"gen_length must be >= 1, got {gen_length}")
    if (prompt_ids == mask_token_id).any():
        # The public loops would treat such a position as one to generate; the trace
        # (tau = −1 for the prompt) and every metric assume the prompt is fixed.
        raise ValueError(f"prompt_ids contains mask_token_id={mask_token_id}; remove it or "
                         "pad with another id (pad positions are excluded by attention_mask)")
    B, P = prompt_ids.shape
    x = torch.full((B, P + gen_length), mask_token_id, dtype=torch.int64,
                   device=prompt_ids.device)  # (B, L)
    x[:, :P] = prompt_ids
    if attention_mask is None:
        return x, None
    if tuple(attention_mask.shape) != (B, P):
        raise ValueError(f"attention_mask must have the prompt's shape {(B, P)}, got "
                         f"{tuple(attention_mask.shape)}")
    ones = torch.ones((B, gen_length), dtype=torch.bool, device=prompt_ids.device)
    return x, torch.cat([attention_mask.to(torch.bool), ones], dim=1)  # (B, L)


def generator_seed(generator: torch.Generator | None) -> int | None:
    """The seed a generator was created with (``initial_seed``), for the trace settings."""
    return None if generator is None else int(generator.initial_seed())


def check_positive_int(name: str, value) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def logsumexp64(z: Tensor) -> Tensor:
    """log Σ_v exp(z_v) in float64, over row chunks so that a 126k vocabulary does not
    need a full float64 copy of the logits. ``z``: (B, L, V) → (B, L) float64."""
    V = z.shape[-1]
    flat = z.reshape(-1, V)  # (B·L, V)
    rows = max(1, _CHUNK_BYTES // (8 * V))
    parts = [torch.logsumexp(flat[r:r + rows].to(torch.float64), dim=-1)
             for r in range(0, flat.shape[0], rows)]
    return torch.cat(parts).reshape(z.shape[:-1])


class TraceRecorder:
    """Accumulates a :class:`Trace` step by step; the samplers own one when ``record=True``.

    It only reads the sampler's tensors (no RNG, no in-place writes), so recording cannot
    change the tokens. Per-step rows are copied to the CPU as they are recorded.
    """

    def __init__(self, steps: int):
        self.steps = steps  # T, known up front: sizes the p_y budget
        self.rows: dict[str, list[Tensor]] = {n: [] for n in STEP_FIELDS if n != "p_y"}
        self.lse: list[Tensor] = []  # per step (B, L) float64 log-normalizers
        self.keep_logits: bool | None = None  # decided at the first step, once V is known
        self.logits: list[Tensor] = []

    def step(self, x: Tensor, active: Tensor, k: Tensor, committed: Tensor,
             cand: Tensor, logits: Tensor, conf: Tensor | None, mask_token_id: int) -> None:
        """Record one step. ``x`` is the state *before* the commit; ``logits`` (B, L, V) the
        teacher logits of this step; ``conf`` (B, L) the sampler score (None: no score)."""
        if logits.shape[-1] < 2:
            raise ValueError("recording needs a vocabulary of at least 2 tokens (top-2 stats)")
        if self.keep_logits is None:  # p_y design: see the trace.py docstring
            self.keep_logits = (self.steps * logits.numel() * logits.element_size()
                                <= LOGPROB_BUDGET_BYTES)
        M = x == mask_token_id  # (B, L): M_t
        z12 = torch.topk(logits, 2, dim=-1).values.to(torch.float64)  # (B, L, 2)
        lse = logsumexp64(logits)  # (B, L)
        p12 = torch.exp(z12 - lse.unsqueeze(-1))  # (B, L, 2): top-1/top-2 probabilities
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
        conf64 = nan.expand(M.shape) if conf is None else conf.to(torch.float64)
        f32 = torch.float32
        for name, v in (("x", x), ("masked", M), ("active", active), ("k", k),
                        ("committed", committed), ("cand", torch.where(M, cand, x)),
                        ("p1", p12[..., 0].to(f32)), ("p2", p12[..., 1].to(f32)),
                        ("z1", z12[..., 0].to(f32)), ("z2", z12[..., 1].to(f32)),
                        ("conf", torch.where(M, conf64, nan))):
            self.rows[name].append(v.detach().to("cpu", copy=True))
        self.lse.append(lse)
        if self.keep_logits:
            self.logits.append(logits.detach().clone())

    def finish(self, y: Tensor, prompt_len: int, mask_token_id: int, settings: dict,
               attention_mask: Tensor | None,
               teacher_logits: Callable[[Tensor], Tensor]) -> Trace:
        """Stack the steps, derive ``tau`` and ``p_y`` = exp(z_t[y] − lse_t), return the trace.

        ``teacher_logits(x_t)`` recomputes the step's teacher logits from the state; it is
        called only when the logits did not fit the budget (the second pass)."""
        st = {name: torch.stack(v) for name, v in self.rows.items()}  # each (T, B, ...)
        p_y = torch.full(st["x"].shape, float("nan"), dtype=torch.float32)  # (T, B, L)
        for t in range(st["x"].shape[0]):
            z = self.logits[t] if self.keep_logits else teacher_logits(st["x"][t].to(y.device))
            z_y = torch.gather(z, -1, y.unsqueeze(-1)).squeeze(-1).to(torch.float64)  # (B, L)
            p = torch.exp(z_y - self.lse[t]).to(torch.float32).cpu()
            p_y[t] = torch.where(st["masked"][t], p, p_y[t])
        L = y.shape[1]
        return Trace(**st, p_y=p_y, tau=commit_steps(st["committed"]), y=y.cpu().clone(),
                     prompt_len=prompt_len, gen_length=L - prompt_len,
                     mask_token_id=mask_token_id, settings=settings,
                     attention_mask=None if attention_mask is None else attention_mask.cpu())
