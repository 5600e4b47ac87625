"""Task accuracy and frontier statistics of a toy model under the library samplers (SPEC §2, §5).

Generation goes through ``fairref.diffusion.generate`` with the toy models' default
settings, :data:`TOY_SAMPLER`.

From a recorded trace (SPEC §2 "Trace") two statistics describe how close the teacher's
decisions are (SPEC §3.1, §6 T4/T4s):

- the commit margins g = p(1) − p(2) of every committed position (t, i ∈ F_t);
- the step gaps: at every step with k_t > 0 and candidates left behind, the difference
  between the k_t-th and the (k_t+1)-th highest confidence among M_t ∩ A_t (the gap_t of
  T4s: how far the last committed candidate was ahead of the first one left masked),
  together with that k_t-th confidence itself. A small gap between two near-certain
  candidates (EOS padding, digits the model is sure of) is a tie that cannot matter; a
  small gap below a confidence of 0.9 is a contested choice of *which* position to write.

Legend: T steps, B batch, P prompt length, G generation length, L = P + G.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fairref.diffusion import SamplerSettings, generate
from fairref.toy.char_tokenizer import GEN_LEN, decode_completion, encode_prompts
from fairref.toy.tasks import TASKS, check, make_problems


#: the toy models' default sampler (both architectures): G = 16 tokens in 8 steps (so
#: k_t = 2 tokens commit per LLaDA step; Dream's schedule commits 1–4), one block,
#: temperature 0, LLaDA ``low_confidence`` and Dream ``maskgit_plus`` (both rank candidates
#: by the top-1 probability). Each checkpoint's generation_config.json says the same.
TOY_SAMPLER = SamplerSettings(steps=8, gen_length=GEN_LEN)


@dataclass
class FrontierStats:
    """Accumulated commit margins and step gaps (see the module docstring)."""

    margins: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    last_conf: list[float] = field(default_factory=list)  # the k_t-th confidence, per gap


def frontier_stats(trace) -> tuple[list[float], list[float], list[float]]:
    """Commit margins, step gaps and the k_t-th confidence of each gap, of one recorded run
    (module docstring)."""
    margin = (trace.p1 - trace.p2).double()  # (T, B, L) probability margin
    margins = margin[trace.committed].tolist()
    cand = trace.masked & trace.active  # (T, B, L): M_t ∩ A_t
    conf = torch.where(cand, trace.conf, torch.full_like(trace.conf, -torch.inf))  # (T, B, L)
    srt = conf.sort(dim=-1, descending=True).values  # (T, B, L)
    n_cand = cand.sum(dim=-1)  # (T, B)
    k = trace.k  # (T, B)
    has_gap = (k > 0) & (n_cand > k)  # (T, B): a step that left candidates behind
    kk = k.clamp(min=1)[..., None]  # (T, B, 1)
    last_in = srt.gather(-1, kk - 1)[..., 0]  # (T, B): k_t-th confidence
    first_out = srt.gather(-1, kk.clamp(max=srt.shape[-1] - 1))[..., 0]  # (k_t+1)-th
    gaps = (last_in - first_out)[has_gap].tolist()
    return margins, gaps, last_in[has_gap].tolist()


@torch.no_grad()
def run_task(
    model, task: str, problems: list[tuple[str, str]], cfg: SamplerSettings = TOY_SAMPLER,
    stats: FrontierStats | None = None, chunk: int = 500, completions: list[str] | None = None,
) -> list[bool]:
    """Exact-match correctness of the sampler's answer for each problem of ``task``;
    with ``stats`` the run is recorded and its frontier statistics appended, and with
    ``completions`` the decoded completions are appended to it."""
    ok: list[bool] = []
    for i in range(0, len(problems), chunk):
        part = problems[i : i + chunk]
        prompt_ids = encode_prompts([p for p, _ in part])  # (b, P)
        P = prompt_ids.shape[1]
        if stats is None:
            x = generate(model, prompt_ids, cfg)  # (b, L)
        else:
            x, trace = generate(model, prompt_ids, cfg, record=True)
            m, g, c = frontier_stats(trace)
            stats.margins += m
            stats.gaps += g
            stats.last_conf += c
        texts = [decode_completion(row) for row in x[:, P:]]
        ok += [check(task, p, c) for (p, _), c in zip(part, texts)]
        if completions is not None:
            completions += texts
    return ok


def quick_accuracy(model, n: int = 48, seed: int = 123) -> str:
    """A short progress line: held-out accuracy per task on ``n`` problems each."""
    cfg = TOY_SAMPLER
    parts = []
    for task in TASKS:
        ok = run_task(model, task, make_problems(task, n, seed, split="heldout"), cfg)
        parts.append(f"{task} {sum(ok) / len(ok):.2f}")
    return " ".join(parts)
