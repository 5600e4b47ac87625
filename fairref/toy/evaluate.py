"""Task accuracy and frontier statistics of a toy model under the library samplers (SPEC §2, §5).

Generation goes through ``fairref.diffusion.generate`` with each toy's shipped sampler,
:func:`toy_sampler`: the settings of the checkpoint's own ``generation_config.json``, read
by ``fairref.diffusion.load_generation_config`` (the file is the one source of truth; there
is no second copy of it in code). The LLaDA toy ships semi-autoregressive decoding
(block_length 4, 8 steps: 2 steps and 2 commits per block), the Dream toy its one-region
``maskgit_plus`` loop; toy_models/README.md says why.

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

from fairref.diffusion import SamplerSettings, generate, load_generation_config, sampler_family
from fairref.toy import TOY_MODELS, checkpoint_dir
from fairref.toy.char_tokenizer import decode_completion, encode_prompts
from fairref.toy.tasks import TASKS, check, make_problems


def toy_sampler(name: str) -> SamplerSettings:
    """The sampler a shipped toy is run with: its ``generation_config.json`` (module docstring).

    ``name`` is ``"llada"`` / ``"dream"`` or the folder name; the toy's short name is also
    its sampler family. Read on every call (cheap), so a changed file or
    ``$FAIRREF_TOY_MODELS`` is never shadowed by a stale copy.
    """
    d = checkpoint_dir(name)  # raises ValueError naming the known toys
    family = {folder: short for short, folder in TOY_MODELS.items()}[d.name]
    return load_generation_config(d, family)[0]


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
    model, task: str, problems: list[tuple[str, str]], cfg: SamplerSettings,
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
    """A short progress line: held-out accuracy per task on ``n`` problems each, under the
    sampler the shipped toy of the same architecture is run with (:func:`toy_sampler`)."""
    cfg = toy_sampler(sampler_family(model))
    parts = []
    for task in TASKS:
        ok = run_task(model, task, make_problems(task, n, seed, split="heldout"), cfg)
        parts.append(f"{task} {sum(ok) / len(ok):.2f}")
    return " ".join(parts)


def describe_sampler(settings: SamplerSettings, family: str) -> str:
    """A short description of ``settings`` for reports, with only the fields the ``family``
    loop reads, e.g. "LLaDA low_confidence, 16 tokens in 8 steps, blocks of 4, temperature 0"."""
    s = settings
    if family == "llada":
        B = s.block_length or s.gen_length
        blocks = "one block" if B >= s.gen_length else f"blocks of {B}"
        extra = f", cfg_scale {s.cfg_scale:g}" if s.cfg_scale else ""
        head = f"LLaDA {s.remasking}, {s.gen_length} tokens in {s.steps} steps, {blocks}"
    else:
        extra = "".join(f", {k} {getattr(s, k)}" for k in ("alg_temp", "top_p", "top_k")
                        if getattr(s, k) is not None)
        head = f"Dream {s.alg}, {s.gen_length} tokens in {s.steps} steps, one region"
    return f"{head}, temperature {s.temperature:g}{extra}"
