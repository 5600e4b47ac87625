"""The table and the report of ``fairref demo`` (:mod:`fairref.demo`), from its results.

:func:`format_table` is the aligned text table the CLI prints; :func:`report_markdown` is
``report.md``: what was run, the table, how to read it, the paired tests per toy, the
accuracy per task and the figures. Both read only the ``results`` dict that
:func:`fairref.demo.run_demo` writes as ``results.json``, so a saved run can be
re-rendered.
"""

from __future__ import annotations

import numpy as np

#: the headline metrics: results key → (table header, scale for printing)
_COLUMNS = (("accuracy", "accuracy %", 100.0), ("token_flip", "frontier token flip %", 100.0),
            ("set_flip", "frontier set flip %", 100.0), ("masked_kl", "masked KL (nats)", 1.0),
            ("mismatch", "post-commit mismatch %", 100.0))


def _cell(row: dict, key: str, scale: float, ci: bool = True) -> str:
    v = row[key]
    if v is None:
        return "n/a"
    digits = 4 if key == "masked_kl" else (1 if key == "accuracy" else 2)
    text = f"{v * scale:.{digits}f}"
    if ci and row[key + "_ci95"] is not None:
        lo, hi = row[key + "_ci95"]
        text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return text


def format_table(results: dict, ci: bool = True) -> str:
    """The comparison table (one row per model × method, FP first) as aligned text; each
    value with its 95% bootstrap interval over problems in brackets; n/a where undefined."""
    head = ["model", "method"] + [h for _, h, _ in _COLUMNS] + ["calib s", "eval s"]
    body = [[r["model"], r["method"]] + [_cell(r, k, s, ci) for k, _, s in _COLUMNS]
            + ["—" if r["calib_seconds"] is None else f"{r['calib_seconds']:.1f}",
               f"{r['eval_seconds']:.1f}"] for r in results["table"]]
    widths = [max(len(x[j]) for x in [head] + body) for j in range(len(head))]
    lines = ["  ".join(x[j].ljust(widths[j]) for j in range(len(head))).rstrip()
             for x in [head] + body]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def _markdown_table(results: dict) -> str:
    head = ["model", "method"] + [h for _, h, _ in _COLUMNS] + ["calib s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["table"]:
        cells = [r["model"], r["method"]] + [_cell(r, k, s) for k, _, s in _COLUMNS]
        cells += ["—" if r["calib_seconds"] is None else f"{r['calib_seconds']:.1f}",
                  f"{r['eval_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _task_table(m: dict) -> str:
    """Accuracy per task and method (FP: the teacher), from one toy's per-problem outcomes."""
    from fairref.toy.tasks import TASKS

    tasks = np.array([t for t, _ in m["heldout"]["problems"]])  # (N,)
    lines = ["| method | " + " | ".join(TASKS) + " |", "|" + "---|" * (len(TASKS) + 1)]
    for model, pp in m["per_problem"].items():
        ok = np.asarray(pp["correct"], dtype=np.float64)  # (N,)
        lines.append(f"| {model} | " + " | ".join(
            f"{100 * ok[tasks == t].mean():.1f}" if (tasks == t).any() else "n/a"
            for t in TASKS) + " |")
    return "\n".join(lines)


def report_markdown(results: dict) -> str:
    """``report.md``: what was run, the table, how to read it, the paired tests, figures."""
    c, t = results["config"], results["timing"]
    samplers = "; ".join(f"{name}: {m['sampler_text']}" for name, m in results["models"].items())
    lines = [
        "# fairref demo — FAIR-Calib and baselines on the toy dLLMs", "",
        "## What was run", "",
        f"- Models: {', '.join(c['models'])} (the shipped toy checkpoints), at "
        f"W{c['w_bits']}A{c['a_bits']}: weights per output channel, activations per token, "
        "symmetric, Hadamard rotation per linear (SPEC §1).",
        f"- Methods (SPEC §4.4): {', '.join(c['methods'])}; all on the same calibration "
        f"data with seed {c['seed']}; flat solver: {c['flat_epochs']} epoch(s), batch "
        f"{c['flat_batch']}.",
        f"- Calibration: {c['calib_per_task']} TRAIN-split prompts per task × 4 tasks, "
        f"S = {c['states_per_rollout']} teacher states per rollout (SPEC §4.1).",
        f"- Evaluation: {c['eval_per_task']} HELD-OUT problems per task × 4 tasks; stability "
        f"lag on the first {c['lag_problems']}; 95% intervals: percentile bootstrap over "
        f"problems, {c['n_resamples']} resamples, seed {c['seed']} (SPEC §5).",
        f"- Sampler (each checkpoint's generation_config.json, for Stage I and the "
        f"evaluation alike): {samplers}.",
        f"- Time: {t['wall_seconds']:.0f} s wall, {t['cpu_seconds']:.0f} s CPU, "
        f"{t['workers']} process(es) (one per model) × {c['threads']} torch thread(s) "
        f"(more threads only contend for matmuls this small; `fairref/demo.py`), torch "
        f"{results['environment']['torch']}. Wall time depends on what else the machine "
        "runs; CPU time much less.",
        "", "## Results", "", _markdown_table(results), "",
        "## How to read this", "",
        "- **accuracy**: exact-match answers on held-out problems; FP is the teacher.",
        "- **frontier token flip**: at the positions the teacher commits at each step, how "
        "often the quantized model's argmax differs (teacher-forced on the teacher's states).",
        "- **frontier set flip**: how often the quantized model would commit a different set "
        "of positions at a step (same sampler rule). Expect it well above 0 for every "
        "method: many steps choose among near-certain candidates (digits the teacher is "
        "sure of; on the Dream toy, which decodes its whole region at once, also its EOS "
        "padding) whose confidences differ by less than the quantization noise, so the "
        "chosen set changes while the tokens do not (`fairref/toy/evaluate.py` measures "
        "these gaps). The LLaDA toy's blocks of 4 keep its EOS tail out of the early steps "
        "(toy_models/README.md, \"Sampler\"). Compare methods with each other, not with 0.",
        "- **masked KL**: KL(teacher ‖ quantized) in nats over masked positions of the "
        "active block. **post-commit mismatch**: each model runs its own rollout; the "
        "fraction of answer positions (before the teacher's EOS) that end up different.",
        "- Lower is better for every column except accuracy. Brackets are 95% intervals; "
        "two methods whose intervals overlap are not shown apart by this run.",
        "- **Caveat**: the demo's sizes are small and one run proves nothing. The toys are "
        "tiny, calibration uses few prompts and few flat epochs, and the intervals are "
        "wide. The evidence for or against FAIR-Calib is the paired, multi-subset "
        "experiment in `paper_repro/`; `fairref demo --full` runs larger sizes.",
        "",
    ]
    for name, m in results["models"].items():
        pv = m["paired_vs"]
        lines += [f"## {name}", "",
                  f"Calibration: {len(m['calibration']['problems'])} prompts, "
                  f"{m['calibration']['states']} teacher states, Stage I "
                  f"{m['calibration']['stage1_seconds']:.1f} s; prior in "
                  f"`{m['calibration']['prior_file']}`.", "",
                  f"Paired accuracy differences on the same {len(m['heldout']['problems'])} "
                  f"problems ({pv['method']} − other; sign test over problems where they "
                  "differ):", "",
                  "| other | mean difference [95%] | better / worse / tied | sign test p |",
                  "|---|---|---|---|"]
        for other, d in pv["against"].items():
            a = d["accuracy"]
            md = a["mean_diff"]
            lines.append(f"| {other} | {100 * md['estimate']:+.1f} pp "
                         f"[{100 * md['lo']:+.1f}, {100 * md['hi']:+.1f}] | "
                         f"{a['n_pos']} / {a['n_neg']} / {a['n_ties']} | "
                         f"{a['sign_test_p']:.3g} |")
        lines += ["", "Held-out accuracy per task (%):", "", _task_table(m), ""]
        f = m["figures"]
        lines += [f"![{name}: prior over positions]({f['prior']})", "",
                  f"![{name}: frontier token flip rate by teacher margin]"
                  f"({f['flip_by_margin']})", ""]
        if "lag_ccdf" in f:
            lines += [f"![{name}: stability-lag CCDF]({f['lag_ccdf']})", ""]
    lines += ["Everything above, with per-problem outcomes, is in `results.json`.", ""]
    return "\n".join(lines)
