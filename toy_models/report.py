"""The toy-model report: accuracy, frontier margins, and accuracy under RTN quantization.

For each shipped toy checkpoint (loaded with ``fairref.models.load`` from its stored bf16
weights, upcast to float32 — the full-precision reference) and each task, on ``n`` held-out
problems with the toy's shipped sampler (``fairref.toy.evaluate.toy_sampler``: the settings
of the checkpoint's own generation_config.json, recorded in each model's results):

1. full-precision exact-match accuracy (SPEC §5 task accuracy) with a 95% bootstrap
   interval (1000 resamples over problems);
2. the teacher's frontier statistics (SPEC §3.1, §6 T4/T4s): the fraction of commits whose
   probability margin p(1) − p(2) is below 0.5, the fraction of steps whose gap between
   the last committed and the first uncommitted confidence is below ``GAP_SMALL``, and the
   fraction of steps with such a small gap *contested*: the last committed candidate's
   confidence below ``CONF_SURE`` (a small gap between near-certain candidates, such as EOS
   padding, is a tie that cannot change the answer);
3. accuracy after round-to-nearest quantization at W8A8, W4A8 and W4A4 (SPEC §1): every
   linear inside the blocks replaced by the library's ``QuantLinear`` (fake path, RTN,
   ``quantize_linears``) with a normalized Sylvester (block-)Hadamard rotation R (x R,
   W R), weights per output channel symmetric ("restricted" scale), activations per token
   dynamic symmetric; embeddings, norms and the head stay in float32.

The regime wanted: W8A8 within ~2 points of full precision, W4A4 at least ~10 points below.

Usage: ``python toy_models/report.py [--n 2000] [--models llada dream] [--out DIR]``.
Writes ``report_<arch>.json`` after every (task, scheme), then ``report.json`` and
``report.md`` into ``--out`` (default toy_models/results/). To use both cores, run
``--models llada --part`` and ``--models dream --part`` in parallel, then ``--merge``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fairref.files import read_json, write_text_atomic
from fairref.models import load
from fairref.quant.grid import QuantSpec
from fairref.quant.linear import quantize_linears
from fairref.toy import TOY_MODELS, checkpoint_dir
from fairref.diffusion import SamplerSettings
from fairref.toy.evaluate import FrontierStats, describe_sampler, run_task, toy_sampler
from fairref.toy.tasks import PICK_KINDS, TASKS, make_problems, pick_kind

ROOT = Path(__file__).resolve().parent
#: shipped checkpoints
CHECKPOINTS = {arch: checkpoint_dir(arch) for arch in TOY_MODELS}
#: the quantization schemes of the report: name → (weight bits, activation bits)
SCHEMES: dict[str, tuple[int, int]] = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}
#: a commit is "unsure" when the teacher's top-1/top-2 probability margin is below this
MARGIN_SMALL = 0.5
#: a step's gap between the last committed and first uncommitted confidence is "small" below this
GAP_SMALL = 0.1
#: a small gap is "contested" when the last committed candidate's confidence is below this
CONF_SURE = 0.9
#: seed of the held-out problems (the split itself is fixed by the prompt hash)
HELDOUT_SEED = 2026


def quantized_copy(model, w_bits: int, a_bits: int):
    """A deep copy of ``model`` with every block linear replaced by an RTN fake-quant
    ``QuantLinear`` (Hadamard-rotated, per-channel symmetric weights, per-token activations;
    SPEC §1), built by the library's ``quantize_linears``."""
    q_model = copy.deepcopy(model)
    w_spec = QuantSpec(bits=w_bits, granularity="channel")
    a_spec = QuantSpec(bits=a_bits, granularity="token")
    names = [f"{l}.{name}" for l in range(len(q_model.blocks))
             for group in q_model.linear_groups() for name in group]
    quantize_linears(q_model.blocks, names, w_spec, a_spec, rotation_kind="hadamard")
    return q_model.eval()


def bootstrap_ci(ok: list[bool], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``ok`` (SPEC §5: resampling problems)."""
    x = np.asarray(ok, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)  # (n_boot,)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def evaluate_model(arch: str, path: Path, n: int, cfg: SamplerSettings, log=print,
                   checkpoint=None) -> dict:
    """All numbers of the report for one checkpoint (see the module docstring).
    ``checkpoint(partial_result)`` (optional) is called after every (task, scheme)."""
    fp = load(path)  # stored bf16 weights → float32: the full-precision reference
    models = {"FP": fp}
    models.update({s: quantized_copy(fp, *bits) for s, bits in SCHEMES.items()})
    out: dict = {"arch": arch, "checkpoint": path.name, "sampler": dataclasses.asdict(cfg),
                 "tasks": {}}
    for task in TASKS:
        problems = make_problems(task, n, HELDOUT_SEED, split="heldout")
        row: dict = {"n": n}
        out["tasks"][task] = row
        for name, model in models.items():
            t0 = time.time()
            stats = FrontierStats() if name == "FP" else None
            texts: list[str] = []
            ok = run_task(model, task, problems, cfg, stats=stats, completions=texts)
            acc = sum(ok) / len(ok)
            row[name] = {"acc": acc, "ci95": bootstrap_ci(ok), "seconds": round(time.time() - t0)}
            if task == "pick":
                kinds = Counter(pick_kind(p, c) for (p, _), c in zip(problems, texts))
                row[name]["kinds"] = {k: kinds[k] for k in PICK_KINDS}
            if stats is not None:
                row["frontier"] = frontier_summary(stats)
            log(f"{arch} {task} {name}: acc {acc:.4f} ({time.time() - t0:.0f}s)")
            if checkpoint is not None:
                checkpoint(out)
    return out


def frontier_summary(stats: FrontierStats) -> dict:
    """Fractions and quantiles of the commit margins and step gaps (module docstring)."""
    m, g = np.asarray(stats.margins), np.asarray(stats.gaps)
    c = np.asarray(stats.last_conf)
    return {
        "commits": int(m.size),
        "frac_margin_below_0.5": float((m < MARGIN_SMALL).mean()),
        "margin_quantiles_10_25_50": [float(v) for v in np.quantile(m, [0.1, 0.25, 0.5])],
        "steps_with_gap": int(g.size),
        f"frac_gap_below_{GAP_SMALL}": float((g < GAP_SMALL).mean()),
        "gap_quantiles_10_25_50": [float(v) for v in np.quantile(g, [0.1, 0.25, 0.5])],
        f"frac_contested_gap_below_{GAP_SMALL}": float(((g < GAP_SMALL) & (c < CONF_SURE)).mean()),
    }


def check_sampler(result: dict, shipped: SamplerSettings, path: Path) -> None:
    """A part is merged only if it was run with the sampler its checkpoint ships now
    (otherwise the report would print numbers of one sampler under the name of another)."""
    ran = result.get("sampler")
    if ran != dataclasses.asdict(shipped):
        raise ValueError(
            f"{path}: run with sampler {ran} (None: not recorded), but the checkpoint's "
            f"generation_config.json now says {dataclasses.asdict(shipped)}; re-run "
            f"`python toy_models/report.py --models {result['arch']} --part`")


def legacy_sampler(merged: Path, arch: str) -> dict | None:
    """For a part written before parts recorded their sampler (until the LLaDA toy's switch
    to semi-AR decoding): the record the merged ``report.json`` holds for ``arch`` — its
    entry's own, or the one sampler an older merge kept in ``meta`` — else None. The part is
    taken to have run with it: the same run wrote both."""
    if not merged.is_file():
        return None
    report = read_json(merged, "merged report")
    for entry in report.get("models", []):
        if entry.get("arch") == arch and "sampler" in entry:
            return entry["sampler"]
    return report.get("meta", {}).get("sampler")


def markdown(results: list[dict]) -> str:
    """The Markdown tables of ``report.md``; the sampler line comes from each result's own
    record of the settings it was run with."""
    samplers = "; ".join(
        f"{r['arch']}: {describe_sampler(SamplerSettings(**r['sampler']), r['arch'])}"
        for r in results)
    lines = [
        "# Toy models: accuracy, frontier margins, RTN quantization",
        "",
        "Held-out problems per task: "
        + ", ".join(f"{r['arch']} {r['tasks'][TASKS[0]]['n']}" for r in results)
        + f" (seed {HELDOUT_SEED}). "
        f"Sampler: each checkpoint's generation_config.json ({samplers}). "
        "Quantization: RTN, Hadamard rotation, "
        "weights per-channel symmetric, activations per-token dynamic, every linear in the "
        "blocks (the fake path of fairref.quant QuantLinear). Brackets: 95% "
        "bootstrap interval over problems.",
        "",
        "| model | task | FP | W8A8 | W4A8 | W4A4 | commits with margin < 0.5 | "
        f"steps with gap < {GAP_SMALL} | steps with a contested gap (conf < {CONF_SURE}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for task, row in r["tasks"].items():
            cells = []
            for s in ("FP", *SCHEMES):
                if s not in row:  # a partial run
                    cells.append("–")
                    continue
                lo, hi = row[s]["ci95"]
                cells.append(f"{100 * row[s]['acc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
            f = row.get("frontier")
            tail = "– | – | –" if f is None else (
                f"{100 * f['frac_margin_below_0.5']:.1f}% | "
                f"{100 * f[f'frac_gap_below_{GAP_SMALL}']:.1f}% | "
                f"{100 * f[f'frac_contested_gap_below_{GAP_SMALL}']:.1f}%"
            )
            lines.append(f"| {r['arch']} | {task} | " + " | ".join(cells) + f" | {tail} |")
        lines.append(f"| {r['arch']} | *all tasks* | " + all_tasks_cells(r) + " |")
    lines += ["", "*all tasks*: accuracies averaged over the tasks (each has the same number "
              "of problems); frontier fractions pooled over every commit and step of them."]
    lines += pick_table(results)
    return "\n".join(lines) + "\n"


def pick_table(results: list[dict]) -> list[str]:
    """Markdown lines counting the kinds of pick completions (``tasks.pick_kind``) per
    model and scheme; none when no result has them."""
    rows = [(r["arch"], s, r["tasks"]["pick"][s]["kinds"]) for r in results
            for s in ("FP", *SCHEMES) if "kinds" in r["tasks"].get("pick", {}).get(s, {})]
    if not rows:
        return []
    return [
        "", "## `pick` answers by kind", "",
        "Correct: the more *probable* mode or the *other mode*; wrong: *mixed* (every token "
        "from one of the two answers, not all from the same: two modes written in parallel), "
        "*wrong* (a token in neither) or *malformed*.", "",
        "| model | scheme | " + " | ".join(PICK_KINDS) + " |",
        "|---|---|" + "---|" * len(PICK_KINDS),
        *(f"| {arch} | {s} | " + " | ".join(str(k[c]) for c in PICK_KINDS) + " |"
          for arch, s, k in rows),
    ]


def all_tasks_cells(r: dict) -> str:
    """The *all tasks* row of one model: mean accuracy per scheme, and the frontier
    fractions pooled over the tasks (weighted by their commits and steps)."""
    rows = list(r["tasks"].values())
    cells = []
    for s in ("FP", *SCHEMES):
        accs = [row[s]["acc"] for row in rows if s in row]
        cells.append(f"{100 * sum(accs) / len(accs):.1f}" if len(accs) == len(rows) else "–")
    fr = [row["frontier"] for row in rows if "frontier" in row]
    if len(fr) < len(rows):
        return " | ".join(cells) + " | – | – | –"

    def pooled(key: str, weight: str) -> float:
        return sum(f[key] * f[weight] for f in fr) / sum(f[weight] for f in fr)

    return " | ".join(cells) + (
        f" | {100 * pooled('frac_margin_below_0.5', 'commits'):.1f}%"
        f" | {100 * pooled(f'frac_gap_below_{GAP_SMALL}', 'steps_with_gap'):.1f}%"
        f" | {100 * pooled(f'frac_contested_gap_below_{GAP_SMALL}', 'steps_with_gap'):.1f}%"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="toy-model report (toy_models/README.md)")
    ap.add_argument("--models", nargs="+", choices=sorted(CHECKPOINTS), default=sorted(CHECKPOINTS))
    ap.add_argument("--n", type=int, default=2000, help="held-out problems per task")
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--part", action="store_true", help="stop after the report_<arch>.json parts")
    ap.add_argument("--merge", action="store_true", help="join report_<arch>.json parts")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results = [read_json(args.out / f"report_{a}.json", "report part") for a in args.models]
        for r in results:
            if "sampler" not in r:
                r["sampler"] = legacy_sampler(args.out / "report.json", r["arch"])
            check_sampler(r, toy_sampler(r["arch"]), args.out / f"report_{r['arch']}.json")
    else:
        results = []
        for arch in args.models:
            part = args.out / f"report_{arch}.json"
            r = evaluate_model(
                arch, CHECKPOINTS[arch], args.n, toy_sampler(arch), log=lambda s: print(s, flush=True),
                checkpoint=lambda r, part=part: write_text_atomic(part, json.dumps(r, indent=2) + "\n"),
            )
            results.append(r)
        if args.part:
            return 0
    meta = {"schemes": SCHEMES, "margin_small": MARGIN_SMALL,
            "gap_small": GAP_SMALL, "heldout_seed": HELDOUT_SEED}
    text = markdown(results)
    write_text_atomic(args.out / "report.json",
                      json.dumps({"meta": meta, "models": results}, indent=2) + "\n")
    write_text_atomic(args.out / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
