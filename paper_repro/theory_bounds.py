"""The SPEC §6 bounds on the shipped toy models quantized at W4A4 (theory/, part 4).

For each toy model (LLaDA and Dream architecture) and each quantization method (RTN, and
GPTQ calibrated on masked teacher states with w ≡ 1, both after a Hadamard rotation), every candidate slot (masked, in the active
block) of every held-out teacher state is checked against T1, T1″, T2, T3, T4, T4′ and T4s
(fairref.bounds_check). Writes, into paper_repro/results/:

- theory_bounds.md    the tables: where each bound holds and how loose it is; the T1″
                      certificate; what the surrogate predicts (Spearman correlations);
                      flip counts against their bounds
- theory_bounds.json  the same numbers, machine-readable, with the config and environment
- theory_bounds.png   per model and method, how many orders of magnitude each bound is off

Sampler: pinned here to 16 tokens in 8 steps, temperature 0, decoding the whole region at
once (for the LLaDA toy one block of 16, for Dream its only regime): the sampler the toys
shipped when these results were made, and the one theory/README.md quotes them under. The
LLaDA toy now ships semi-autoregressive decoding (blocks of 4, toy_models/README.md); the
bounds are statements about every candidate slot of every teacher state, whichever sampler
produced the states, so the pin keeps the committed results reproducible (``--check``)
rather than moving them with the shipped default. The settings are recorded in the JSON
(``sampler``) and named in the Markdown.

Run: python paper_repro/theory_bounds.py [--quick] [--check]
Runtime (measured): 8.9 minutes for the full run (20 minutes for a ``--check`` at load 7),
5–7 minutes for ``--quick``, on a 2-core AMD EPYC shared with other jobs (load 4–7; one
thread, pinned below; the run is
dominated by the calibration and the teacher-forced forward passes). The unpinned
2-thread run took 2–3 minutes alone. ``--check`` recomputes and compares with the
committed JSON (counts exactly, every other number to a relative 1e-9), writing nothing.

Reproducibility: the numbers depend on float32 summation order, through GPTQ's solve and
the activation rounding of W4A4 (a rounding decision flipped by one ulp changes a weight
or an activation level, and the flip counts follow). Before torch is imported this script
pins the order: one thread, ATen's portable kernels (ATEN_CPU_CAPABILITY=default) and
MKL's conditional numerical reproducibility (MKL_CBWR=COMPATIBLE, the same results on any
x86-64 CPU); set the variables yourself to override. The environment is recorded in the
JSON, and ``--check`` reports what differs. Each pin is needed (measured at the ``--quick``
size, GPTQ's flip count on LLaDA): 27 with ATen AVX2 kernels at 1 or 2 threads, 31 with
AVX-512, 29 with AVX2 kernels and MKL_CBWR alone, 34 fully pinned — and the fully pinned
run gave identical JSON with MKL's AVX2 and AVX-512 code paths and when repeated.
"""

from __future__ import annotations

import os

# Pinned float order (see the docstring); must be set before torch is imported.
PINNED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
for _k, _v in PINNED_ENV.items():
    os.environ.setdefault(_k, _v)

import argparse
import copy
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]

from fairref.bounds_check import block_errors_on_trace, bounds_on_trace
from fairref.diffusion import SamplerSettings, generate
from fairref.fair import CalibConfig, quantize_model, state_steps
from fairref.files import write_atomic, write_text_atomic
from fairref.models import load
from fairref.toy.char_tokenizer import encode_prompts
from fairref.toy.tasks import TASKS, make_problems

CONFIG = {
    "models": ["llada_toy", "dream_toy"],
    "eval_problems_per_task": 64,  # held-out split, seed below
    "calib_problems_per_task": 32,  # training split: never the evaluation prompts
    "eval_seed": 1,
    "calib_seed": 2,
    "steps": 8,  # the pinned sampler (docstring): 16 tokens, 8 steps, the whole region at once
    "gen_length": 16,
    "states_per_rollout": 4,  # SPEC §4.1: t_k = ⌊(k + ½)·T/S⌋
    "phi_m_min": 0.05,  # the §3.1 fragility weight 1/max(m, m_min)² used as a T3 weight
    "threads": 1,  # one intra-op thread: a second one changes the summation order
    "inside_rel_tol": 1e-9,  # T1″ "inside": rounding slack, far above float64 error, far
    # below the certificate's width (≥ 1e-3 relative wherever r ≥ 3e-3)
}
METHODS = {
    "RTN": CalibConfig(solver="rtn"),
    "GPTQ (masked states, w=1)": CalibConfig(solver="gptq"),
}
# --check: counts must match exactly; any other number to this relative tolerance
CHECK_REL = 1e-9
OUT = ROOT / "paper_repro" / "results"


def sampler() -> SamplerSettings:
    """The pinned sampler (docstring); block_length None: LLaDA decodes one block of G."""
    return SamplerSettings(steps=CONFIG["steps"], gen_length=CONFIG["gen_length"])


def rollout(model, problems):
    """Teacher rollout with the pinned sampler; returns the trace (SPEC §2)."""
    x = encode_prompts([p for p, _ in problems])  # (B, P)
    settings = sampler()
    with torch.no_grad():
        _, trace = generate(model, x, settings, record=True)
    return trace


def calibration_states(trace):
    """S teacher states per rollout at t_k = ⌊(k + ½)·T/S⌋ (SPEC §4.1): (S·B, L)."""
    ts = state_steps(trace.x.shape[0], CONFIG["states_per_rollout"])
    return trace.x[ts].reshape(-1, trace.x.shape[-1])


def quantiles(v: torch.Tensor) -> dict:
    v = v.double()
    qs = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {"p10": qs[0], "median": qs[1], "p90": qs[2], "p99": qs[3], "max": float(v.max())}


def summarize(r: dict) -> dict:
    kl = r["kl"].clamp(min=0)
    phi = 1.0 / r["m"].clamp(min=CONFIG["phi_m_min"]) ** 2
    front = r["frontier"]
    return {
        "slots": int(kl.numel()),
        "frontier_slots": int(front.sum()),
        "T1_holds": float((kl <= r["t1_l2"]).double().mean()),
        "T1_range_holds": float((kl <= r["t1_range"]).double().mean()),
        "T2_holds": float((kl <= r["t2_bound"]).double().mean()),
        "T4_T4prime_hold": float(((r["flipped"].double() <= r["t4"])
                                  & (r["flipped"].double() <= r["t4_prime"])
                                  & (r["t4_prime"] <= r["t4_prime_hidden"] * (1 + 1e-12))
                                  ).double().mean()),
        "KL_over_T1": quantiles(kl / r["t1_l2"]),
        "KL_over_T2": quantiles(kl / r["t2_bound"]),
        "second_order_over_KL": quantiles(r["second_order"] / kl),
        "T3_uniform": {"sum_wKL": float(kl.sum()), "bound": float(r["t2_bound"].sum())},
        "T3_phi": {"sum_wKL": float((phi * kl).sum()), "bound": float((phi * r["t2_bound"]).sum())},
        "flips_all": int(r["flipped"].sum()),
        "flips_frontier": int(r["flipped"][front].sum()),
        "T4_sum": float(r["t4"].sum()),
        "T4prime_sum": float(r["t4_prime"].sum()),
        "T4prime_hidden_sum": float(r["t4_prime_hidden"].sum()),
        "T4_frontier_sum": float(r["t4"][front].sum()),
        "T4prime_frontier_sum": float(r["t4_prime"][front].sum()),
        "T4prime_le_T4_fraction": float((r["t4_prime"] <= r["t4"]).double().mean()),
        "T4_via_T1_sum": float(r["t4_via_t1"].sum()),
        "T4prime_le_T4_via_T1_fraction": float(
            (r["t4_prime"] <= r["t4_via_t1"] * (1 + 1e-12)).double().mean()),
        "weight_ratio_T4prime_over_T4_median": float(
            ((2 / r["m"] ** 2) / (1 / (2 * r["g"] ** 2))).median()),
        "set_flips": int(r["set_flipped"].sum()),
        "steps": int(r["set_flipped"].numel()),
        "T4s_sum": float(r["set_bound"].sum()),
        "T4s_holds": float((r["set_flipped"].double() <= r["set_bound"]).double().mean()),
        "teacher_margin_median": float(r["m"].median()),
        **certificate_summary(r),
        "spearman_KL_with": surrogate_correlations(r),
        "mean_KL": float(kl.mean()),
        "phi_weighted_mean_KL": float((phi * kl).sum() / phi.sum()),
        "blocks": block_errors(r),
    }


def certificate_summary(r: dict) -> dict:
    """T1″ on real noise: the fraction of slots inside [lower, upper] and how tight it is."""
    kl, lo, up = r["t1pp_kl"], r["t1pp_lower"], r["t1pp_upper"]
    tol = CONFIG["inside_rel_tol"]
    inside = (lo * (1 - tol) <= kl) & (kl <= up * (1 + tol))
    # the plain Σ p (log p − log q) of bounds_check (SPEC §5's formula), same check
    plain = r["kl"]
    plain_inside = (lo * (1 - tol) <= plain) & (plain <= up * (1 + tol))
    pos = kl > 0
    r_range = r["r_plus"] + r["r_minus"]
    return {
        "T1pp_inside": float(inside.double().mean()),
        "T1pp_plain_kl_inside": float(plain_inside.double().mean()),
        "KL_over_T1pp_upper": quantiles(kl[pos] / up[pos]),
        "T1pp_lower_over_KL": quantiles(lo[pos] / kl[pos]),
        "T1pp_range_r": quantiles(r_range),
        # a KL in bits (÷ log 2) would be caught here: above the upper side; T1, T2 for scale
        "T1pp_catches_bits": float((kl / math.log(2) > up * (1 + tol)).double().mean()),
        "T1_catches_bits": float((kl / math.log(2) > r["t1_l2"]).double().mean()),
        "T2_catches_bits": float((kl / math.log(2) > r["t2_bound"]).double().mean()),
    }


def surrogate_correlations(r: dict) -> dict:
    """Spearman ρ across slots of the KL with three would-be surrogates (SPEC §6 T2, T3)."""
    kl = r["t1pp_kl"].numpy()
    L2dh2 = (r["t2_L"] ** 2 * r["dh2"]).numpy()
    return {"dh2": float(spearmanr(kl, r["dh2"].numpy()).statistic),
            "L2_dh2": float(spearmanr(kl, L2dh2).statistic),
            "fisher": float(spearmanr(kl, r["fisher"].numpy()).statistic)}


def block_errors(r: dict) -> dict:
    """Per block ℓ on the held-out slots: L_ℓ = mean ‖Δh^ℓ‖² (w ≡ 1) and its φ-weighted form
    (SPEC §4.2, §3.1), and the Spearman ρ across slots of ‖Δh^ℓ_i‖² with KL_i."""
    kl, D = r["t1pp_kl"], r["dh2_blocks"]  # (n,), (n, N)
    phi = 1.0 / r["m"].clamp(min=CONFIG["phi_m_min"]) ** 2
    return {"L": D.mean(0).tolist(),
            "L_phi": ((phi[:, None] * D).sum(0) / phi.sum()).tolist(),
            "spearman_KL": [float(spearmanr(D[:, l].numpy(), kl.numpy()).statistic)
                            for l in range(D.shape[1])]}


def block_ranking(results: dict) -> dict:
    """Per model and block ℓ: does the method with the smaller L_ℓ also have the smaller
    mean KL? (+1 same order, −1 reversed), for w ≡ 1 and for φ-weighted L_ℓ and KL."""
    out = {}
    for model in CONFIG["models"]:
        a, b = [results[(model, m)] for m in METHODS]
        same = lambda x, y: 1 if (x[0] - x[1]) * (y[0] - y[1]) > 0 else -1  # noqa: E731
        n = len(a["blocks"]["L"])
        out[model] = {
            "uniform": [same((a["blocks"]["L"][l], b["blocks"]["L"][l]),
                             (a["mean_KL"], b["mean_KL"])) for l in range(n)],
            "phi": [same((a["blocks"]["L_phi"][l], b["blocks"]["L_phi"][l]),
                         (a["phi_weighted_mean_KL"], b["phi_weighted_mean_KL"]))
                    for l in range(n)]}
    return out


def table(results: dict, ranking: dict, block_losses: dict, env: dict) -> str:
    f = lambda x: f"{x:.3g}"  # noqa: E731
    rows = list(results.items())
    lines = [
        "# SPEC §6 bounds on the toy LLaDA and Dream models at W4A4 (Hadamard rotation)",
        "",
        f"Held-out teacher states: {CONFIG['eval_problems_per_task']} problems per task × "
        f"{len(TASKS)} tasks, every step of the sampler pinned by the script ({CONFIG['steps']} "
        f"steps, {CONFIG['gen_length']} tokens, temperature 0, the whole region at once: one "
        "block for LLaDA, although the LLaDA toy now ships blocks of 4 — the script's "
        "docstring says why); a *slot* is a masked position in the active block "
        "of one state. GPTQ is calibrated on "
        f"{CONFIG['calib_problems_per_task']} training problems per task (never the held-out "
        "ones), w ≡ 1. Generated by `python paper_repro/theory_bounds.py` in "
        f"{env['runtime_s'] / 60:.1f} min ({env['threads']} thread, ATen {env['cpu_capability']}, "
        f"MKL_CBWR={env['MKL_CBWR']}, torch {env['torch']}); `--check` reproduces it.",
        "",
        "KL = KL(p_FP ‖ p_W4A4) in nats at one slot. **T1** (logit bound): KL ≤ ¼‖δ − mean δ‖², "
        "δ the change of the logits. **T2** (hidden-state lift): KL ≤ ¼ L²‖Δh‖², Δh the "
        "change of the last hidden state, L = ‖W‖₂‖g‖_∞/r through the final RMSNorm and head. "
        "**T1″** (two-sided certificate): max(log1p(Vψ(−r₋)), Vψ(−r)) ≤ KL ≤ log1p(Vψ(r₊)), "
        "V = Var_p(δ), r± the range of δ above/below its p-mean, ψ(x) = (eˣ − 1 − x)/x² "
        "(theory/T1pp_two_sided_certificate.md).",
        "",
        "## Per-slot bounds: where they hold and how loose they are",
        "",
        "| model | method | slots | T1 holds | T2 holds | T1″ inside | KL/T1 median (max) "
        "| KL/T2 median (max) | KL/T1″ upper median [p10] | T1″ lower/KL median [p10] "
        "| r median [p90] | ½Var/KL median [p90] |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (mdl, meth), s in rows:
        lines.append(
            f"| {mdl} | {meth} | {s['slots']} | {s['T1_holds']:.1%} | {s['T2_holds']:.1%} | "
            f"{s['T1pp_inside']:.1%} | "
            f"{f(s['KL_over_T1']['median'])} ({f(s['KL_over_T1']['max'])}) | "
            f"{f(s['KL_over_T2']['median'])} ({f(s['KL_over_T2']['max'])}) | "
            f"{f(s['KL_over_T1pp_upper']['median'])} [{f(s['KL_over_T1pp_upper']['p10'])}] | "
            f"{f(s['T1pp_lower_over_KL']['median'])} [{f(s['T1pp_lower_over_KL']['p10'])}] | "
            f"{f(s['T1pp_range_r']['median'])} [{f(s['T1pp_range_r']['p90'])}] | "
            f"{f(s['second_order_over_KL']['median'])} [{f(s['second_order_over_KL']['p90'])}] |")
    lines += [
        "",
        "T1″ inside: lower ≤ KL ≤ upper up to a relative "
        f"{CONFIG['inside_rel_tol']:g} (rounding); the KL of bounds_check's Σ p (log p − log q) "
        "is inside on the same fraction: "
        + ", ".join(f"{s['T1pp_plain_kl_inside']:.1%}" for _, s in rows)
        + ". A KL reported in bits instead of nats would leave the certificate (above its "
        "upper side) on " + ", ".join(f"{s['T1pp_catches_bits']:.0%}" for _, s in rows)
        + " of the slots (rows in order); T1 on "
        + ", ".join(f"{s['T1_catches_bits']:.2%}" for _, s in rows) + ", T2 on "
        + ", ".join(f"{s['T2_catches_bits']:.2%}" for _, s in rows) + ".",
        "",
        "Reproducibility: this run pins the float order (one thread, ATen's portable "
        "kernels, MKL_CBWR=COMPATIBLE; see the script's docstring), and `--check` recomputes "
        "and compares. Rounding decides the flip counts through W4A4's activation rounding "
        "and GPTQ's solve: unpinned, at the `--quick` size (8 problems per task), moving "
        "between 1 and 2 threads and between ATen's AVX2, AVX-512 and portable kernels gave "
        "GPTQ flip counts of 27, 27, 31 and 34 on LLaDA (of 2304 slots) and 4, 6, 3 and 5 on "
        "Dream (of 2528), while RTN's stayed at 30 and 7 — the spread to expect when the pins "
        "are overridden (GPTQ quantizes each weight once, so one rounding flip in its inputs "
        "changes the model). Under the pins, runs with MKL's AVX2 and AVX-512 code paths and "
        "repeated runs agreed bit for bit.",
        "",
        "## What the surrogate predicts",
        "",
        "Spearman ρ across slots of the KL with: the plain hidden-state error ‖Δh‖² (what an "
        "unweighted MSE objective sees), T2's weight L²‖Δh‖², and the Fisher form "
        "½ Δhᵀ Jᵀ Cov_p J Δh (J = ∂z/∂h, the second-order term of the KL in Δh).",
        "",
        "| model | method | ρ(KL, ‖Δh‖²) | ρ(KL, L²‖Δh‖²) | ρ(KL, Fisher) |",
        "|---|---|---|---|---|",
    ]
    for (mdl, meth), s in rows:
        c = s["spearman_KL_with"]
        lines.append(f"| {mdl} | {meth} | {c['dh2']:.2f} | {c['L2_dh2']:.2f} | {c['fisher']:.2f} |")
    n_blocks = len(rows[0][1]["blocks"]["L"])
    blk = " | ".join(f"ℓ = {l + 1}" for l in range(n_blocks))
    lines += [
        "",
        "Per block ℓ (the output of block ℓ, at the same held-out slots): Spearman ρ across "
        "slots of ‖Δh^ℓ_i‖² with KL_i — how well one block's error, the term Stage II "
        "minimizes at that block, predicts the output KL at the same position.",
        "",
        f"| model | method | {blk} |",
        "|---|---|" + "---|" * n_blocks,
    ]
    for (mdl, meth), s in rows:
        lines.append(f"| {mdl} | {meth} | "
                     + " | ".join(f"{x:.2f}" for x in s["blocks"]["spearman_KL"]) + " |")
    lines += [
        "",
        "Across methods, per block: L_ℓ = mean ‖Δh^ℓ‖² on the held-out slots (w ≡ 1, and "
        "φ-weighted) next to the mean KL (likewise weighted); 'order' is +1 where the method "
        "with the smaller L_ℓ also has the smaller KL, −1 where it is reversed (two methods: "
        "one comparison per block, not a statistic). L_ℓ (calibration) is the Stage II "
        "objective GPTQ reported on its own calibration states.",
        "",
        "| model | method | mean KL | φ-mean KL | L_ℓ held-out, ℓ = 1…N | φ-L_ℓ held-out "
        "| L_ℓ (calibration) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (mdl, meth), s in rows:
        b = s["blocks"]
        lines.append(f"| {mdl} | {meth} | {f(s['mean_KL'])} | {f(s['phi_weighted_mean_KL'])} | "
                     + ", ".join(f(x) for x in b["L"]) + " | "
                     + ", ".join(f(x) for x in b["L_phi"]) + " | "
                     + ", ".join(f(x) for x in block_losses[(mdl, meth)]) + " |")
    for mdl, o in ranking.items():
        lines.append(f"| {mdl} | order (w ≡ 1; φ) | | | "
                     + ", ".join(f"{x:+d}" for x in o["uniform"]) + " | "
                     + ", ".join(f"{x:+d}" for x in o["phi"]) + " | |")
    lines += ["", "## Surrogate (T3, last block) and flip counts (T4, T4′, T4s)", "",
              "| model | method | Σ KL ≤ ¼Σ L²‖Δh‖² | Σ φKL ≤ ¼Σ φL²‖Δh‖² | flips (frontier) "
              "| T4 Σ | T4 via T1 Σ | T4′ Σ | T4′ via Δh Σ | (2/m²)/(1/2g²) median "
              "| set flips / steps | T4s Σ | T4, T4′, T4s hold |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (mdl, meth), s in rows:
        u, p = s["T3_uniform"], s["T3_phi"]
        lines.append(
            f"| {mdl} | {meth} | {f(u['sum_wKL'])} ≤ {f(u['bound'])} | {f(p['sum_wKL'])} ≤ "
            f"{f(p['bound'])} | {s['flips_all']} ({s['flips_frontier']}) | {f(s['T4_sum'])} | "
            f"{f(s['T4_via_T1_sum'])} | {f(s['T4prime_sum'])} | {f(s['T4prime_hidden_sum'])} | "
            f"{f(s['weight_ratio_T4prime_over_T4_median'])} | {s['set_flips']} / {s['steps']} | "
            f"{f(s['T4s_sum'])} | {s['T4_T4prime_hold']:.0%}, {s['T4s_holds']:.0%} |")
    lines += ["", "φ = 1/max(m, 0.05)², the frontier weight of SPEC §3.1. T4 and T4′ sums are "
              "over all slots; each term is min(1, ·), so a sum can never exceed the slot count. "
              "T4 is min(1, 2KL/g²); 'T4 via T1' is min(1, ‖δ − c1‖²/(2g²)), T4 with KL replaced "
              "by its T1 bound — the same currency as T4′ = min(1, 2‖δ − c1‖²/m²), which is never "
              "larger (theory/T4_frontier_flips.md). The median per-slot weight ratio "
              "(2/m²)/(1/(2g²)) shows how much sharper T4′ is on real margins.",
              "",
              "![How loose each bound is](theory_bounds.png)",
              "",
              "*Figure.* One panel per model and method (W4A4, Hadamard rotation). Each curve is "
              "the distribution over slots of log₁₀(KL ÷ bound): 0 means the bound is attained, "
              "−6 that it is a million times too large. T2 (the hidden-state lift, "
              "¼L²‖Δh‖²) has its median at "
              + _log10_span([s["KL_over_T2"]["median"] for _, s in rows])
              + ", T1 (the logit bound, ¼‖δ − mean δ‖²) at "
              + _log10_span([s["KL_over_T1"]["median"] for _, s in rows])
              + "; the T1″ certificate's upper side sits at "
              + _log10_span([s["KL_over_T1pp_upper"]["median"] for _, s in rows], 2)
              + " and its lower side (plotted as log₁₀(lower ÷ KL)) at "
              + _log10_span([s["T1pp_lower_over_KL"]["median"] for _, s in rows], 2)
              + ": the KL is pinned between them.",
              ""]
    return "\n".join(lines)


def _log10_span(values: list[float], digits: int = 1) -> str:
    """'−7.4 to −6.5': the range of log₁₀ of positive values, for a caption."""
    logs = [math.log10(v) for v in values]
    return f"{min(logs):.{digits}f} to {max(logs):.{digits}f}"


def figure(points: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(points)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True, sharey=True)
    bins = torch.linspace(-14, 0.5, 146).numpy()
    for ax, key in zip(axes.flat, keys):
        r = points[key]
        kl = r["t1pp_kl"]
        pos = kl > 0
        curves = [("T2 bound ¼L²‖Δh‖²", kl[pos] / r["t2_bound"][pos], "tab:red"),
                  ("T1 bound ¼‖δ − mean δ‖²", kl[pos] / r["t1_l2"][pos], "tab:orange"),
                  ("T1″ upper side", kl[pos] / r["t1pp_upper"][pos], "tab:blue"),
                  ("T1″ lower side (lower ÷ KL)", r["t1pp_lower"][pos] / kl[pos], "tab:green")]
        for label, ratio, colour in curves:
            ax.hist(torch.log10(ratio).clamp(-14, 0.5).numpy(), bins=bins, histtype="step",
                    lw=1.4, color=colour, label=label, density=True)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{key[0]} — {key[1]}", fontsize=10)
        ax.set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel("log₁₀(KL ÷ bound): 0 = bound attained, −6 = a million times too large")
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of slots (density)")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    fig.suptitle("How tight the SPEC §6 bounds are on the toy LLaDA and Dream models "
                 "at W4A4 (Hadamard rotation), per masked slot", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def environment(runtime_s: float) -> dict:
    """What decides the float order (recorded in the JSON, compared by --check)."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "MKL_CBWR": os.environ.get("MKL_CBWR"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "runtime_s": round(runtime_s, 1),
    }


def compare(new, old, path: str = "") -> list[str]:
    """Differences between two JSON trees: ints and strings exactly, floats to CHECK_REL."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = [f"{path}/{k}: missing" for k in old if k not in new]
        diffs += [f"{path}/{k}: new" for k in new if k not in old]
        for k in old.keys() & new.keys():
            diffs += compare(new[k], old[k], f"{path}/{k}")
        return diffs
    if isinstance(old, float) or isinstance(new, float):
        ok = (math.isnan(old) and math.isnan(new)) or abs(new - old) <= CHECK_REL * max(
            abs(old), abs(new))
        return [] if ok else [f"{path}: {old!r} → {new!r}"]
    return [] if new == old else [f"{path}: {old!r} → {new!r}"]


def run(models_dir: Path) -> tuple[dict, dict, dict]:
    """Calibrate, quantize and check every (model, method); returns summaries, per-slot
    tensors and per-block calibration losses, keyed by (model, method)."""
    results, points, block_losses = {}, {}, {}
    for name in CONFIG["models"]:
        teacher = load(models_dir / name).eval()
        evals = [p for t in TASKS for p in make_problems(
            t, CONFIG["eval_problems_per_task"], CONFIG["eval_seed"], split="heldout")]
        calib = [p for t in TASKS for p in make_problems(
            t, CONFIG["calib_problems_per_task"], CONFIG["calib_seed"], split="train")]
        trace, calib_trace = rollout(teacher, evals), rollout(teacher, calib)
        states = calibration_states(calib_trace)
        for meth, cfg in METHODS.items():
            t0 = time.time()
            student = copy.deepcopy(teacher)
            report = quantize_model(student, states, config=cfg)
            r = bounds_on_trace(teacher, student, trace)
            r["dh2_blocks"] = block_errors_on_trace(teacher, student, trace)  # (n, N)
            results[(name, meth)] = summarize(r)
            block_losses[(name, meth)] = report.block_loss
            points[(name, meth)] = r
            print(f"{name} / {meth}: {results[(name, meth)]['slots']} slots, "
                  f"T1″ inside on {results[(name, meth)]['T1pp_inside']:.1%} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    return results, points, block_losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 problems per task (smoke test)")
    ap.add_argument("--check", action="store_true",
                    help="recompute and compare with the JSON in --out (the committed results "
                         "by default); write nothing")
    ap.add_argument("--out", type=Path, default=OUT, help="output directory")
    ap.add_argument("--models-dir", type=Path, default=ROOT / "toy_models",
                    help="directory holding the toy checkpoints (default: the shipped ones)")
    args = ap.parse_args(argv)
    if args.quick:
        CONFIG["eval_problems_per_task"] = CONFIG["calib_problems_per_task"] = 8
    torch.set_num_threads(CONFIG["threads"])
    torch.manual_seed(0)
    t0 = time.time()
    results, points, block_losses = run(args.models_dir)
    ranking = block_ranking(results)
    env = environment(time.time() - t0)
    payload = {"config": CONFIG, "methods": {k: repr(v) for k, v in METHODS.items()},
               "results": {f"{m} / {q}": s for (m, q), s in results.items()},
               "block_loss": {f"{m} / {q}": v for (m, q), v in block_losses.items()},
               "block_order": ranking,
               "sampler": dataclasses.asdict(sampler())}
    if args.check:
        committed = json.loads((args.out / "theory_bounds.json").read_text())
        old_env = committed.pop("environment", {})
        diffs = compare(json.loads(json.dumps(payload)), committed)
        print(f"environment now: {env}\ncommitted under: {old_env}")
        for d in diffs:
            print("DIFFERS", d)
        print(f"--check: {len(diffs)} differences (counts exact, floats to {CHECK_REL:g})")
        return 1 if diffs else 0
    payload["environment"] = env
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "theory_bounds.md", table(results, ranking, block_losses, env))
    write_text_atomic(args.out / "theory_bounds.json", json.dumps(payload, indent=2))
    write_atomic(args.out / "theory_bounds.png", lambda p: figure(points, p))
    print(f"wrote {args.out / 'theory_bounds.md'}, .json and .png in {env['runtime_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
