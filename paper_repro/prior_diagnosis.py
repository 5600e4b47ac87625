"""Why FAIR-Calib does not beat masked-uniform on the LLaDA toy: the prior, on calibration data only.

The medium fair_vs_baselines run found ``fair`` significantly below ``masked-uniform`` in
accuracy on the LLaDA toy (semi-AR, W4A4 and W4A8), and its one-subset diagnosis found the
pooled prior dominated by one task: with φ = 1/max(m, m_min)², the ``pick`` task's few
near-tie frontier slots carry 98–99% of H. This script tests that explanation across
calibration subsets, never touching the held-out evaluation problems:

for each of K disjoint calibration subsets (the same subsets as fair_vs_baselines), Stage
I is run once (``pipeline.prepare``) and ``fair`` and ``fair-gptq`` are calibrated with the
prior variants ``default`` (SPEC §3 as written), ``phi=1`` (plain hit counts) and
``task-balanced`` (each task's H and R scaled to mean 1 before pooling), beside their
uniform counterparts ``masked-uniform`` and ``masked-uniform-gptq`` (w ≡ 1). All are judged
on a slice of further *training* prompts (disjoint from every subset): accuracy, frontier
token flips, masked KL, post-commit mismatch, mean ± std over subsets, and paired tests
(per-problem outcomes averaged over subsets; ``fairref.eval.stats.paired_comparison``) of
each variant against ``default`` and against the uniform weights with the same solver.

Writes paper_repro/results/prior_diagnosis{_tag}.md and .json.
Run: python paper_repro/prior_diagnosis.py [--regime llada_semi_ar] [--subsets 5]
     [--n-calib 8] [--n-judge 200] [--epochs 3] [--bits 4,4] [--workers 2] [--tag NAME]
Set PYTHONPATH to the repository root. The defaults took about 40 CPU-minutes on the
2-core machine (LLaDA toy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fairref.eval.compare import mean_std, paired_table, per_problem
from fairref.eval.stats import paired_comparison
from fairref.fair import FlatConfig
from fairref.fair.pipeline import calibrate, prepare
from fairref.files import write_text_atomic
from fairref.models import load
from fairref.toy import checkpoint_dir
from fairref.toy.char_tokenizer import encode_prompts

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_repro" / "results"
_spec = importlib.util.spec_from_file_location("fair_vs_baselines",
                                               ROOT / "paper_repro" / "fair_vs_baselines.py")
fvb = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fvb
_spec.loader.exec_module(fvb)

VARIANTS = ["default", "phi=1", "task-balanced"]
SOLVERS = {"fair": "masked-uniform", "fair-gptq": "masked-uniform-gptq"}  # → uniform twin
CONFIG = {"regime": "llada_semi_ar", "subsets": 5, "calib_per_task": 8, "calib_seed": 0,
          "states_per_rollout": 4, "epochs": 3, "judge_per_task": 200, "bits": [4, 4]}
OUTCOMES = ("correct", "token_flips", "mismatched")
METRICS = ("accuracy", "token_flip", "masked_kl", "mismatch")


def slices(c: dict):
    """The calibration subsets of fair_vs_baselines and the judging slice after them."""
    return fvb.calib_slices({"calib_per_task": c["calib_per_task"], "subsets": c["subsets"],
                             "diag_per_task": c["judge_per_task"],
                             "calib_seed": c["calib_seed"]})


def run_subset(k: int, c: dict) -> dict:
    torch.set_num_threads(1)
    regime = c["regime"]
    teacher = load(checkpoint_dir(fvb.REGIMES[regime][0]))
    settings = fvb.settings_of(regime)
    subsets, judge = slices(c)
    calib = subsets[k]
    data = prepare(teacher, encode_prompts([p for _, p in calib]), settings,
                   states_per_rollout=c["states_per_rollout"])
    flat, (wb, ab) = FlatConfig(epochs=c["epochs"]), c["bits"]
    students, shares = {}, {}
    for v in VARIANTS:
        prior, shares[v] = fvb.variant_prior(teacher, settings, data, calib, v)
        for m in SOLVERS:
            students[f"{m} {v}"] = calibrate(teacher, m, data, prior=prior, w_bits=wb,
                                             a_bits=ab, flat=flat, seed=k).model
    for u in SOLVERS.values():
        students[u] = calibrate(teacher, u, data, w_bits=wb, a_bits=ab, flat=flat,
                                seed=k).model
    res = fvb.run_eval(teacher, students, judge, settings)
    return {"pick_H_share": shares,
            "models": {n: res.models[n].summary() for n in students},
            "outcomes": {n: {key: v.tolist() for key, v in per_problem(res.models[n]).items()}
                         for n in students}}


def run(c: dict, workers: int) -> dict:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        subs = list(pool.map(run_subset, range(c["subsets"]), [c] * c["subsets"]))
    names = list(subs[0]["models"])
    agg = {n: {k: mean_std([s["models"][n][k] for s in subs]) for k in METRICS}
           for n in names}

    def avg(n, key):
        return np.mean([s["outcomes"][n][key] for s in subs], 0)
    paired = {}
    for m, u in SOLVERS.items():
        for v in VARIANTS:
            name = f"{m} {v}"
            refs = ([f"{m} default"] if v != "default" else []) + [u]
            for ref in refs:
                paired[f"{name} − {ref}"] = {key: paired_comparison(avg(name, key),
                                                                    avg(ref, key)).to_dict()
                                             for key in OUTCOMES}
    shares = {v: mean_std([s["pick_H_share"][v] for s in subs]) for v in VARIANTS}
    for s in subs:
        s.pop("outcomes")
    return json.loads(json.dumps({"config": c, "subsets": subs, "aggregate": agg,
                                  "paired": paired, "pick_H_share": shares}))


def markdown(r: dict) -> str:
    c = r["config"]
    fmt = fvb.fmt
    lines = ["# The prior on the LLaDA toy: which weighting helps, on calibration data only", "",
             f"Regime {c['regime']}, W{c['bits'][0]}A{c['bits'][1]}; {c['subsets']} disjoint "
             f"calibration subsets of {c['calib_per_task']} training prompts per task (seed "
             f"{c['calib_seed']}, {c['states_per_rollout']} states per rollout; the subsets of "
             f"fair_vs_baselines); flat solver {c['epochs']} epochs; judged on "
             f"{c['judge_per_task']} further training prompts per task (disjoint from every "
             "subset; no held-out problem is used). Generated by "
             "`python paper_repro/prior_diagnosis.py`.", "",
             "Share of the pooled H carried by the `pick` task (mean ± std over subsets): "
             + "; ".join(f"{v} {fmt(r['pick_H_share'][v], 3)}" for v in VARIANTS) + ".", "",
             "| model | accuracy | token flip | masked KL | mismatch |", "|---|---|---|---|---|"]
    for n, a in r["aggregate"].items():
        lines.append(f"| {n} | {fmt(a['accuracy'], 3)} | {fmt(a['token_flip'])} | "
                     f"{fmt(a['masked_kl'])} | {fmt(a['mismatch'])} |")
    lines += ["", "Paired tests on per-problem outcomes averaged over subsets (first model − "
              "second; for accuracy positive favours the first, for flips and mismatches "
              "negative does):", ""]
    lines += paired_table(r["paired"], "comparison")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regime", choices=list(fvb.REGIMES))
    ap.add_argument("--subsets", type=int)
    ap.add_argument("--n-calib", type=int, dest="calib_per_task")
    ap.add_argument("--n-judge", type=int, dest="judge_per_task")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--bits", help="W,A, e.g. 4,4")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    c = dict(CONFIG)
    for key in ("regime", "subsets", "calib_per_task", "judge_per_task", "epochs"):
        if getattr(args, key) is not None:
            c[key] = getattr(args, key)
    if args.bits:
        c["bits"] = fvb.parse_bits(args.bits)
    fvb.check_counts({"--subsets": c["subsets"], "--n-calib": c["calib_per_task"],
                      "--n-judge": c["judge_per_task"], "--epochs": c["epochs"],
                      "--workers": args.workers})
    r = run(c, args.workers)
    text = markdown(r)
    name = f"prior_diagnosis{'_' + args.tag if args.tag else ''}"
    for suffix, body in (("json", json.dumps(r, indent=1)), ("md", text)):
        write_text_atomic(OUT / f"{name}.{suffix}", body + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
