"""Calibration inputs for Stage II, taken from the teacher's traces (SPEC §4.1, §4.4).

- :func:`teacher_states`: S partly-masked states per rollout, at steps
  t_k = ⌊(k + ½)·T/S⌋, k = 0..S−1, with x_t the state *before* step t commits — the inputs a
  dLLM really sees, taken from the teacher, never from the quantized model — together with
  the frontier band B_t of that step (which the §3.4 token weights need).
- :func:`plain_inputs`: the "plain" data of GPTQ / QuaRot / FlatQuant (§4.4): each
  rollout's final sequence, the prompt and the teacher's completed answer with nothing
  masked, repeated S times so that every method sees the same prompts and token count, row
  for row.

Both return a :class:`CalibStates`, rollout-major (row n = rollout r·S + k), the rollouts
in the probe's order (repeat-major, then batch order).

Legend: T steps, B prompts in a trace, L = P + G, S states per rollout, N = rollouts·S.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from fairref.diffusion.trace import Trace


@dataclass(frozen=True)
class CalibStates:
    """Calibration sequences for Stage II, one row per state (module docstring)."""

    ids: Tensor  # (N, L) int64: x_t (teacher states) or the final sequence (plain)
    attention_mask: Tensor | None  # (N, L) bool, True = real token; None: all real
    band: Tensor  # (N, L) bool: B_t at the state's step (all False for plain inputs)
    step: Tensor  # (N,) int64: t_k, or T for a final sequence
    rollout: Tensor  # (N,) int64: the rollout's row in the probe (repeat-major)
    prompt_len: int  # P

    def to(self, device) -> "CalibStates":
        """The same states with every tensor on ``device`` (where the model calibrates)."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return CalibStates(ids=mv(self.ids), attention_mask=mv(self.attention_mask),
                           band=mv(self.band), step=mv(self.step), rollout=mv(self.rollout),
                           prompt_len=self.prompt_len)


def state_steps(T: int, S: int) -> list[int]:
    """t_k = ⌊(k + ½)·T/S⌋ for k = 0..S−1 (SPEC §4.1), in integer arithmetic: ⌊(2k+1)T/(2S)⌋.
    Distinct and in [0, T) whenever 1 ≤ S ≤ T."""
    for name, v in (("T", T), ("S", S)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if S > T:
        raise ValueError(f"states_per_rollout={S} exceeds the {T} sampler steps; a rollout "
                         f"has only {T} distinct states: use at most {T}")
    return [((2 * k + 1) * T) // (2 * S) for k in range(S)]


def _check_traces(traces: Sequence[Trace], bands: Sequence[Tensor] | None) -> int:
    if not traces:
        raise ValueError("no traces given; run the probe on at least one prompt")
    if bands is not None and len(bands) != len(traces):
        raise ValueError(f"{len(bands)} bands for {len(traces)} traces")
    P = traces[0].prompt_len
    L = traces[0].x.shape[-1]
    for tr in traces:
        if tr.prompt_len != P or tr.x.shape[-1] != L:
            raise ValueError("traces differ in prompt length or sequence length; probe all "
                             "calibration prompts with one prompt format")
    return P


def _stack_mask(traces: Sequence[Trace], repeat: int) -> Tensor | None:
    """The traces' attention masks, each row repeated ``repeat`` times: (N, L) or None."""
    if all(tr.attention_mask is None for tr in traces):
        return None
    rows = [torch.ones(tr.y.shape, dtype=torch.bool) if tr.attention_mask is None
            else tr.attention_mask.to(torch.bool) for tr in traces]  # each (B, L)
    return torch.cat(rows).repeat_interleave(repeat, dim=0)  # (N, L)


def teacher_states(traces: Sequence[Trace], bands: Sequence[Tensor], S: int) -> CalibStates:
    """S teacher states per rollout (SPEC §4.1) with their bands; ``bands[i]`` (T, B, L)
    is B_t of ``traces[i]`` (``probe.frontier_band``, as ``ProbeResult.bands``)."""
    P = _check_traces(traces, bands)
    ids, band, step = [], [], []
    for tr, B_t in zip(traces, bands):
        T, B, L = tr.x.shape
        if tuple(B_t.shape) != (T, B, L):
            raise ValueError(f"band has shape {tuple(B_t.shape)}, its trace {(T, B, L)}")
        t = torch.tensor(state_steps(T, S))  # (S,)
        # (S, B, L) → (B, S, L) → (B·S, L): rollout-major
        ids.append(tr.x[t].transpose(0, 1).reshape(B * S, L))
        band.append(B_t[t].transpose(0, 1).reshape(B * S, L))
        step.append(t.repeat(B))
    ids_all = torch.cat(ids)  # (N, L)
    N = ids_all.shape[0]
    return CalibStates(ids=ids_all, attention_mask=_stack_mask(traces, S),
                       band=torch.cat(band), step=torch.cat(step),
                       rollout=torch.arange(N // S).repeat_interleave(S), prompt_len=P)


def plain_inputs(traces: Sequence[Trace], S: int) -> CalibStates:
    """Each rollout's final, fully unmasked sequence y, repeated S times (SPEC §4.4): the
    same prompts and token count as :func:`teacher_states` with the same S."""
    P = _check_traces(traces, None)
    if isinstance(S, bool) or not isinstance(S, int) or S < 1:
        raise ValueError(f"S must be an int >= 1, got {S!r}")
    ids = torch.cat([tr.y for tr in traces]).repeat_interleave(S, dim=0)  # (N, L)
    T = torch.tensor([tr.x.shape[0] for tr in traces for _ in range(tr.y.shape[0])])  # (rows,)
    N = ids.shape[0]
    return CalibStates(ids=ids, attention_mask=_stack_mask(traces, S),
                       band=torch.zeros_like(ids, dtype=torch.bool),
                       step=T.repeat_interleave(S),
                       rollout=torch.arange(N // S).repeat_interleave(S), prompt_len=P)
