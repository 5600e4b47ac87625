"""``fairref eval`` (the SPEC §5 metrics on held-out problems) and ``fairref demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fairref.cli.common import (_add_run_options, _check_out, _device, _load_teacher,
                                _prompts, _settings)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate quantized checkpoints against their teacher (SPEC §5)",
        description=(
            "Roll the float teacher out on held-out prompts, then measure each --quantized "
            "checkpoint teacher-forced on its trajectories (frontier token and set flip "
            "rates, masked KL) and on its own rollouts (task accuracy, post-commit "
            "mismatch), optionally the stability lag; each rate with a 95%% bootstrap "
            "interval over problems (SPEC §5). Prompts: a shipped toy model uses its tasks' "
            "HELD-OUT split (never the calibration problems); any other model needs "
            "--prompts, whose optional \"answer\" fields give exact-match accuracy. Writes "
            "all results as JSON (atomically) and prints a compact table."),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="float checkpoint directory (the teacher)")
    p.add_argument("--quantized", type=Path, action="append", default=[], metavar="QDIR",
                   help="quantized checkpoint from `fairref calibrate`; repeat for several")
    p.add_argument("--out", type=Path, required=True, metavar="RESULTS.json",
                   help="where to write the results")
    p.add_argument("--lag-problems", type=int, default=0, metavar="N",
                   help="stability lag on the first N problems, O(G·T) passes each "
                        "(default: %(default)s)")
    _add_run_options(p, "overwrite an existing --out file")


def _run_eval(args: argparse.Namespace) -> int:
    import json

    import torch

    from fairref.eval.run import evaluate
    from fairref.files import write_text_atomic
    from fairref.models import load, load_tokenizer
    from fairref.models.quantized import is_quantized_dir

    torch.manual_seed(args.seed)
    _check_out(args.out, args.force)
    if args.lag_problems < 0:
        raise ValueError(f"--lag-problems must be >= 0, got {args.lag_problems}")
    device = _device(args.device)
    teacher = _load_teacher(args.model, device)
    settings = _settings(args.model, teacher)
    students = {}
    for q in args.quantized:
        if not is_quantized_dir(q):
            raise ValueError(f"--quantized {q} is not a quantized checkpoint (its config.json "
                             "has no quantization_config); make one with `fairref calibrate`")
        student = load(q, device=device)
        if student.config != teacher.config:
            raise ValueError(f"--quantized {q} has another architecture than --model "
                             f"{args.model} (config.json differs); evaluate it against the "
                             "model it was calibrated from")
        name = q.name if q.name not in students else str(q)
        students[name] = student
    ps, ids, attn = _prompts(args, "heldout", device)
    eos = load_tokenizer(args.model).eos_token_id
    result = evaluate(teacher, students, ids, settings, attention_mask=attn,
                      problems=ps.problems, decode=ps.decode, check=ps.check, eos_token_id=eos,
                      lag_problems=args.lag_problems, seed=args.seed)
    out = {"model": str(args.model), "quantized": {n: str(q) for n, q in
                                                   zip(students, args.quantized)},
           "prompts": ps.source, "seed": args.seed,
           **result.to_dict(seed=args.seed)}
    write_text_atomic(args.out, json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(_eval_table(out))
    print(f"results written to {args.out}")
    return 0


def _eval_table(out: dict) -> str:
    """One row per model: each headline rate with its 95% interval (n/a where undefined)."""
    def rate(d) -> str:
        if not isinstance(d, dict) or d.get("value") is None:
            return "n/a"
        lo, hi = d["ci95"]
        return f"{d['value']:.3f} [{lo:.3f}, {hi:.3f}]"

    cols = ("accuracy", "token flip", "set flip", "masked KL", "mismatch")
    rows = []
    for name, m in out["models"].items():
        tf, mm = m.get("teacher_forced", {}), m.get("mismatch", {})
        rows.append((name, rate(m.get("accuracy", {}).get("accuracy")),
                     rate(tf.get("frontier_token_flip")), rate(tf.get("frontier_set_flip")),
                     rate(tf.get("masked_kl")), rate(mm.get("post_commit_mismatch"))))
    head = ("model",) + cols
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    return (f"{out['n_problems']} problems ({out['prompts']}), 95% bootstrap "
            "intervals\n" + "\n".join(lines))


# --- demo -----------------------------------------------------------------------------------

def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the shipped toy models: table, results.json, report.md",
        description=(
            "For each shipped toy model (LLaDA, Dream) at W4A4 with Hadamard rotation: "
            "Stage I on training-split prompts (the position prior), then RTN, QuaRot, "
            "FlatQuant, masked-uniform and FAIR-Calib on the same data, then the SPEC §5 "
            "metrics on held-out problems of all four toy tasks (accuracy, frontier token "
            "and set flips, masked KL, post-commit mismatch, stability lag). Prints the "
            "comparison table and writes OUT/results.json, OUT/report.md and its figures. "
            "The defaults are small (a few minutes on a 2-core CPU; the two models run "
            "in parallel processes); --full runs the thorough sizes. OUT is written only "
            "when complete."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="output folder (default: %(default)s)")
    p.add_argument("--models", nargs="+", choices=["llada", "dream"], default=None,
                   metavar="NAME", help="toy models to run: llada and/or dream (default: both)")
    p.add_argument("--full", action="store_true",
                   help="thorough sizes: 64 calibration prompts per task, S = 4, 15 flat "
                        "epochs, 500 held-out problems per task (hours, not minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of problems, rollouts, solver "
                   "batch order and bootstrap (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT folder")


def _run_demo(args: argparse.Namespace) -> int:
    from fairref.demo import DemoConfig, format_table, run_demo

    if args.out.exists() and not args.force and (not args.out.is_dir() or any(args.out.iterdir())):
        raise FileExistsError(f"--out {args.out} exists; pass --force to replace it, or "
                              "choose another --out")
    changes = {"seed": args.seed}
    if args.models:
        changes["models"] = tuple(dict.fromkeys(args.models))
    config = (DemoConfig.full if args.full else DemoConfig.small)(**changes)
    print(f"fairref demo ({'full' if args.full else 'default'} sizes): {config.describe()}",
          flush=True)
    results = run_demo(config, args.out, lambda msg: print(msg, file=sys.stderr, flush=True),
                       overwrite=args.force)
    print(format_table(results))
    t = results["timing"]
    print(f"\n{t['wall_seconds']:.0f} s wall, {t['cpu_seconds']:.0f} s CPU; wrote "
          f"{args.out / 'results.json'} and {args.out / 'report.md'}")
    return 0
