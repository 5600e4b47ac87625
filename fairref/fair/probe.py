"""Stage I probing: teacher rollouts and their per-position statistics (SPEC §3.1, §3.2).

The full-precision teacher is rolled out on the calibration prompts through the one
sampling entry point, :func:`fairref.diffusion.generate`, with its trace recorded (SPEC §2
"Trace"). From each trace this file derives, per rollout and generation position j:

- the **frontier band** B_t (§3.1): F_t, the positions written at step t, plus the next
  ⌈β·k_t⌉ candidates of M_t ∩ A_t ranked by the sampler's score — by the teacher's top-1
  probability p₍₁₎ when that score is random (LLaDA ``random``, Dream ``origin``,
  ``alg_temp`` > 0) — capped at |M_t ∩ A_t|; rank ties go to the lowest position index.
  Dream ``origin`` has no k_t (trace ``k`` = −1): there |F_t| stands for k_t.
- the **fragility-weighted frontier hits** h_j = Σ_{t: j ∈ B_t} φ(m_{j,t}) with the
  teacher's logit margin m = z₍₁₎ − z₍₂₎ and φ(m) = 1/max(m, m_min)² (the per-position
  factor 2/m² of the flip bound T4′, SPEC §6, up to its constant 2), or φ ≡ 1 (plain hits).
- the **masked-stage reliability** ρ_j (§3.2): the mean of p_t(y_j | x_t) over the last W
  steps t ≤ τ_j at which j was masked and inside the active block (fewer if fewer exist;
  t = τ_j always counts, F_t ⊆ M_t ∩ A_t). The trace records p_t(y | x_t) as ``p_y``
  (float32, computed in float64 from the step's logits), so no extra teacher pass is needed.
  Hard variant: the fraction of those steps at which y_j was the teacher's top-1 token,
  read from the trace as ``p_y ≥ p1`` — both are the float32 rounding of the same float64
  ``exp(z − lse_t)``, so the test is exact when y_j is the argmax; a distinct token that
  ties with the top-1 *probability* at float32 resolution (logits within ~1e-7) counts too.

Everything is per rollout; averaging over rollouts into H and R is the prior's job
(``prior.py``, §3.3).

Legend: T steps, B prompts in a batch, P prompt length, G generation length, L = P + G,
N rollouts (all prompts × all repeats, stacked).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from fairref.diffusion.generate import SamplerSettings, generate, sampler_family
from fairref.diffusion.trace import Trace

#: the fragility weights φ of §3.1
PHI_KINDS = ("inverse_square", "one")
#: the reliability variants of §3.2
RELIABILITY_KINDS = ("soft", "hard")


# ------------------------------------------------------------------------- rollouts


def score_is_random(settings: dict) -> bool:
    """Whether the sampler's score in a trace's ``settings`` is random (SPEC §3.1): then the
    band ranks candidates by the teacher's top-1 probability instead."""
    if settings.get("sampler") == "llada":
        return settings.get("remasking") == "random"
    return settings.get("alg") == "origin" or (settings.get("alg_temp") or 0) > 0


def sampler_is_deterministic(model, settings: SamplerSettings) -> bool:
    """True when a rollout draws no random number, so repeats of a prompt are identical."""
    if settings.temperature > 0:
        return False
    if sampler_family(model) == "llada":
        return settings.remasking != "random"
    return settings.alg != "origin" and not (settings.alg_temp or 0) > 0


@torch.no_grad()
def teacher_rollouts(model, prompt_ids: Tensor, settings: SamplerSettings, *,
                     rollouts: int = 1, seed: int = 0, attention_mask: Tensor | None = None,
                     batch_size: int | None = None) -> tuple[list[Trace], list[int | None]]:
    """Recorded teacher runs on ``prompt_ids`` (B, P), through :func:`generate` only.

    ``rollouts`` repeats per prompt; repeat r draws from a generator seeded ``seed + r``
    (on the prompt's device). A deterministic sampler (temperature 0 and a non-random
    score) gives one distinct rollout per prompt, so it is run once whatever ``rollouts``
    says (a warning if more were asked). ``batch_size`` prompts per call (None: all);
    neither loop lets a row influence another (Dream's batch-averaged commit count is the
    same for every batch here, since all rows share G), but at temperature > 0 the random
    stream, hence the rollouts, depend on it. Returns the traces (repeat-major, then
    batch order) and the seed of each repeat (None when deterministic).
    """
    if isinstance(rollouts, bool) or not isinstance(rollouts, int) or rollouts < 1:
        raise ValueError(f"rollouts must be an int >= 1, got {rollouts!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
    if sampler_is_deterministic(model, settings):
        if rollouts > 1:
            warnings.warn(f"rollouts={rollouts} with a deterministic sampler (temperature 0, "
                          "non-random score): every repeat is identical, running one",
                          stacklevel=2)
        seeds: list[int | None] = [None]
    else:
        seeds = [seed + r for r in range(rollouts)]
    B = prompt_ids.shape[0]
    step = batch_size or B
    traces = []
    for s in seeds:
        gen = None
        if s is not None:
            gen = torch.Generator(device=prompt_ids.device).manual_seed(s)
        for lo in range(0, B, step):
            attn = None if attention_mask is None else attention_mask[lo:lo + step]
            _, trace = generate(model, prompt_ids[lo:lo + step], settings,
                                attention_mask=attn, generator=gen, record=True)
            traces.append(trace)
    return traces, seeds


# ------------------------------------------------------------------------- §3.1 band


def frontier_band(trace: Trace, beta: float = 1.0) -> Tensor:
    """B_t of SPEC §3.1 for every step and row: ``(T, B, L)`` bool (module docstring)."""
    if not beta > 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    C = trace.masked & trace.active  # (T, B, L): the candidates M_t ∩ A_t
    F = trace.committed  # (T, B, L): F_t ⊆ C
    score = trace.p1.to(torch.float64) if score_is_random(trace.settings) else trace.conf
    if torch.isnan(score[C]).any():
        raise ValueError("the trace has no sampler score (NaN conf) at some candidate; "
                         "its settings must name a random score so that p1 ranks instead")
    # only candidates not written this step compete for the band's extra places
    open_ = C & ~F  # (T, B, L)
    rest = torch.where(open_, score, -torch.inf)  # (T, B, L)
    # descending and stable: among equal scores the lower position index comes first
    order = torch.sort(rest, dim=-1, descending=True, stable=True).indices  # (T, B, L)
    # then, stably, open candidates before everything else (even one scored −inf)
    closed = (~open_).gather(-1, order).to(torch.int8)  # (T, B, L) in rank order
    order = order.gather(-1, torch.sort(closed, dim=-1, stable=True).indices)
    k = torch.where(trace.k >= 0, trace.k, F.sum(-1))  # (T, B): origin has no k_t: |F_t|
    # ⌈β·k_t⌉ in float64; the cap |M_t ∩ A_t| is met by taking only from C \ F_t
    extra = torch.ceil(beta * k.to(torch.float64)).to(torch.int64)  # (T, B)
    extra = torch.minimum(extra, open_.sum(-1))  # (T, B)
    rank = torch.arange(C.shape[-1]).expand_as(order)  # (T, B, L): rank of order[..., r]
    take = rank < extra.unsqueeze(-1)  # (T, B, L) in rank order
    behind = torch.zeros_like(F).scatter_(-1, order, take)  # (T, B, L) back in positions
    return F | behind


def fragility(m: Tensor, kind: str = "inverse_square", m_min: float = 0.05) -> Tensor:
    """φ(m) of SPEC §3.1, float64: 1/max(m, m_min)² (``inverse_square``) or 1 (``one``).

    ``m``: the teacher's logit margin z₍₁₎ − z₍₂₎ ≥ 0, any shape. m_min keeps a tie (m = 0)
    finite; T4′ caps each position's flip bound at 1 for the same reason."""
    if kind not in PHI_KINDS:
        raise ValueError(f"phi must be one of {PHI_KINDS}, got {kind!r}")
    if not m_min > 0:
        raise ValueError(f"m_min must be > 0, got {m_min!r}")
    m = m.to(torch.float64)
    if kind == "one":
        return torch.ones_like(m)
    return 1.0 / m.clamp(min=m_min).square()


def frontier_hits(trace: Trace, band: Tensor, phi: str = "inverse_square",
                  m_min: float = 0.05) -> Tensor:
    """h_j = Σ_{t: j ∈ B_t} φ(m_{j,t}) per row and generation position: ``(B, G)`` float64.

    ``band``: (T, B, L) from :func:`frontier_band`. The margin is z₍₁₎ − z₍₂₎ taken in
    float64 from the recorded float32 logits (exact)."""
    P = trace.prompt_len
    m = trace.z1.to(torch.float64) - trace.z2.to(torch.float64)  # (T, B, L)
    w = torch.where(band, fragility(m, phi, m_min), 0.0)  # (T, B, L)
    return w.sum(0)[:, P:]  # (B, G)


# ------------------------------------------------------------------------- §3.2 reliability


def reliability(trace: Trace, window: int = 4, kind: str = "soft") -> Tensor:
    """ρ_j of SPEC §3.2 per row and generation position: ``(B, G)`` float64.

    The mean of p_t(y_j | x_t) (``soft``) or of 1[y_j is the top-1 token] (``hard``, read
    as ``p_y ≥ p1``) over the last ``window`` steps t ≤ τ_j with j ∈ M_t ∩ A_t."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if kind not in RELIABILITY_KINDS:
        raise ValueError(f"reliability must be one of {RELIABILITY_KINDS}, got {kind!r}")
    T = trace.x.shape[0]
    P = trace.prompt_len
    t = torch.arange(T).view(-1, 1, 1)  # (T, 1, 1)
    eligible = trace.masked & trace.active & (t <= trace.tau.unsqueeze(0))  # (T, B, L)
    # rank eligible steps from the last one back: the newest has rank 1
    from_last = eligible.flip(0).to(torch.int64).cumsum(0).flip(0)  # (T, B, L)
    window_mask = eligible & (from_last <= window)  # (T, B, L): the last W eligible steps
    if kind == "soft":
        v = trace.p_y.to(torch.float64)  # (T, B, L); NaN only where not masked
    else:
        v = (trace.p_y >= trace.p1).to(torch.float64)
    total = torch.where(window_mask, v, 0.0).sum(0)  # (B, L)
    count = window_mask.sum(0)  # (B, L), ≥ 1 on generated positions (t = τ_j counts)
    if (count[:, P:] == 0).any():
        raise ValueError("a generated position was never masked in its active block up to "
                         "its commit step; the trace is inconsistent (run Trace.validate)")
    return (total / count)[:, P:]  # (B, G)


# ------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class ProbeResult:
    """Per-rollout Stage I statistics (SPEC §3.1–3.2) and the traces they came from."""

    h: Tensor  # (N, G) float64: fragility-weighted frontier hits per rollout
    rho: Tensor  # (N, G) float64: masked-stage reliability per rollout
    hits: Tensor  # (N, G) int64: plain band counts |{t: j ∈ B_t}|
    margin_sum: Tensor  # (N, G) float64: Σ m_{j,t} over those band steps
    traces: tuple[Trace, ...]  # the recorded runs, repeat-major then batch order
    bands: tuple[Tensor, ...]  # B_t of each trace, (T, B, L) bool
    prompt_index: Tensor  # (N,) int64: which calibration prompt each rollout row ran on
    seeds: tuple[int | None, ...]  # the generator seed of each repeat (None: deterministic)
    settings: SamplerSettings  # the sampler settings of the rollouts
    options: dict  # beta, phi, m_min, window, reliability: the §3.1–3.2 options used


def probe(model, prompt_ids: Tensor, settings: SamplerSettings, *, beta: float = 1.0,
          phi: str = "inverse_square", m_min: float = 0.05, window: int = 4,
          reliability_kind: str = "soft", rollouts: int = 1, seed: int = 0,
          attention_mask: Tensor | None = None, batch_size: int | None = None
          ) -> ProbeResult:
    """Roll the teacher out on ``prompt_ids`` (B, P) and measure h, ρ per rollout (§3.1–3.2).

    Arguments as in :func:`teacher_rollouts`, :func:`frontier_band`,
    :func:`frontier_hits` and :func:`reliability` (defaults: SPEC §3)."""
    traces, seeds = teacher_rollouts(model, prompt_ids, settings, rollouts=rollouts,
                                     seed=seed, attention_mask=attention_mask,
                                     batch_size=batch_size)
    h, rho, hits, msum, bands = [], [], [], [], []
    for tr in traces:
        try:
            tr.validate()
        except ValueError as e:
            raise ValueError(f"the teacher's trace is not a valid trajectory ({e}); Stage I "
                             "needs every generated position written exactly once (a model "
                             "that proposes the mask id itself breaks this)") from e
        band = frontier_band(tr, beta)  # (T, B, L)
        P = tr.prompt_len
        m = tr.z1.to(torch.float64) - tr.z2.to(torch.float64)  # (T, B, L)
        h.append(frontier_hits(tr, band, phi, m_min))
        rho.append(reliability(tr, window, reliability_kind))
        hits.append(band.sum(0)[:, P:])
        msum.append(torch.where(band, m, 0.0).sum(0)[:, P:])
        bands.append(band)
    B = prompt_ids.shape[0]
    prompt_index = torch.arange(B).repeat(len(seeds))  # (N,)
    return ProbeResult(h=torch.cat(h), rho=torch.cat(rho), hits=torch.cat(hits),
                       margin_sum=torch.cat(msum), traces=tuple(traces), bands=tuple(bands),
                       prompt_index=prompt_index, seeds=tuple(seeds), settings=settings,
                       options=dict(beta=beta, phi=phi, m_min=m_min, window=window,
                                    reliability=reliability_kind))
