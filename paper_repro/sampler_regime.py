"""Which sampler regime should the LLaDA toy ship? Stage I priors under each (SPEC §3).

The experiment that decided the LLaDA toy's sampler (issue #11). It compares decoding the
16 answer positions as one block (8 steps, 2 commits a step: what the toy shipped before)
with semi-autoregressive decoding (block_length 4, two steps per block: what it ships now,
toy_models/README.md "Sampler"). Both LLaDA regimes are pinned here, not read from the
checkpoint, so the comparison does not change when the shipped default does. For each regime, and for the Dream toy's default, this script
probes the teacher on *training* prompts (64 per task), builds the SPEC §3.3 prior per task
and pooled, and measures where the prior puts its weight: on the answer (positions that
hold an answer character in the teacher's rollouts) or on the EOS tail. It also counts how
many of the positions written at steps 0 and 1 are EOS, and measures each regime's
held-out accuracy (200 problems per task, ``fairref.toy.evaluate.run_task``).

Writes, into paper_repro/results/:

- sampler_regime.md                  the tables
- sampler_regime.json                the numbers, with the config
- sampler_regime_<regime>.png        the pooled prior of each regime (π, H/mean H, R/mean R)

Run: python paper_repro/sampler_regime.py [--check]
(about 100 s of CPU time, 1 thread; 5 minutes wall on the shared 2-core machine it was
made on. --check recomputes and compares with the committed JSON, writing nothing: counts
exactly, real numbers to a relative 1e-6.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fairref.diffusion import SamplerSettings, load_generation_config
from fairref.eval.compare import compare_trees
from fairref.files import write_text_atomic
from fairref.fair.prior import PriorConfig, estimate_prior
from fairref.models import load
from fairref.toy import checkpoint_dir
from fairref.toy.char_tokenizer import EOS_ID, encode_prompts
from fairref.toy.evaluate import run_task
from fairref.toy.tasks import TASKS, make_problems

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_repro" / "results"

CONFIG = {
    "calib_problems_per_task": 64,  # training split only: never the evaluation prompts
    "calib_seed": 0,
    "eval_problems_per_task": 200,  # held-out split
    "eval_seed": 1,
    "prior": {},  # PriorConfig overrides; {} = the SPEC defaults
}
#: regime name → (toy, sampler settings; None = the checkpoint's generation_config.json)
REGIMES = {
    "llada_one_block": ("llada", SamplerSettings(steps=8, gen_length=16, block_length=16)),
    "llada_semi_ar": ("llada", SamplerSettings(steps=8, gen_length=16, block_length=4)),
    "dream_default": ("dream", None),
}


def regime_settings(toy: str, settings: SamplerSettings | None) -> SamplerSettings:
    return settings or load_generation_config(checkpoint_dir(toy), toy)[0]


def describe(prior, result) -> dict:
    """Where the prior's weight sits: per position, and its answer / EOS-tail split."""
    y = torch.cat([tr.y[:, tr.prompt_len:] for tr in result.traces])  # (N, G) final tokens
    answer = (y != EOS_ID).to(torch.float64).mean(0)  # (G,) P(position holds an answer char)
    F = [tr.committed[:2, :, tr.prompt_len:] for tr in result.traces]  # (2, B, G) steps 0, 1
    y_tr = [tr.y[:, tr.prompt_len:] for tr in result.traces]
    early = sum(int(f.sum()) for f in F)
    early_eos = sum(int((f & (yy == EOS_ID)).sum()) for f, yy in zip(F, y_tr))

    def share(v):  # fraction of v's mass on answer positions (expected over rollouts)
        return float((v * answer).sum() / v.sum())
    top = torch.argsort(prior.pi, descending=True, stable=True)[:3].tolist()
    return {"pi": prior.pi.tolist(), "H": prior.H.tolist(), "R": prior.R.tolist(),
            "answer_frac": answer.tolist(), "pi_answer_share": share(prior.pi),
            "H_answer_share": share(prior.H), "R_answer_share": share(prior.R),
            "answer_position_share": float(answer.mean()), "top3_pi_positions": top,
            "early_commits": early, "early_commits_eos": early_eos}


def run() -> tuple[dict, dict]:
    torch.set_num_threads(1)
    config = PriorConfig(**CONFIG["prior"])
    results, priors = {"config": CONFIG, "regimes": {}}, {}
    for name, (toy, fixed) in REGIMES.items():
        model = load(checkpoint_dir(toy))
        settings = regime_settings(toy, fixed)
        entry = {"toy": toy, "settings": {k: v for k, v in vars(settings).items()},
                 "tasks": {}}
        all_prompts = []
        for task in TASKS:
            probs = make_problems(task, CONFIG["calib_problems_per_task"],
                                  CONFIG["calib_seed"], split="train")
            prompts = [p for p, _ in probs]
            all_prompts += prompts
            prior, res = estimate_prior(model, encode_prompts(prompts), settings, config)
            held = make_problems(task, CONFIG["eval_problems_per_task"], CONFIG["eval_seed"],
                                 split="heldout")
            ok = run_task(model, task, held, settings)
            entry["tasks"][task] = dict(describe(prior, res), correct=sum(ok), n=len(ok))
        prior, res = estimate_prior(model, encode_prompts(all_prompts), settings, config)
        entry["pooled"] = describe(prior, res)
        priors[name] = prior
        results["regimes"][name] = entry
        print(f"{name}: done", file=sys.stderr)
    return results, priors


def markdown(r: dict) -> str:
    c = r["config"]
    lines = [
        "# Sampler regime of the LLaDA toy: where the Stage I prior puts its weight",
        "",
        f"Calibration: {c['calib_problems_per_task']} training problems per task (seed "
        f"{c['calib_seed']}), SPEC §3 defaults (β = 1, φ = 1/max(m, 0.05)², W = 4, λ = ½, "
        f"π ∈ [¼, 4]). Accuracy: {c['eval_problems_per_task']} held-out problems per task "
        f"(seed {c['eval_seed']}). Generated by `python paper_repro/sampler_regime.py`.",
        "",
        "*answer share*: the fraction of a quantity's mass on positions that hold an answer "
        "character in the teacher's rollouts (expected over rollouts); *answer positions*: "
        "that fraction for a uniform weight. *EOS of early commits*: of the positions "
        "written at steps 0 and 1, the fraction whose token is EOS.",
        "",
        "| regime | task | held-out acc | EOS of early commits | answer positions | "
        "π answer share | H answer share | R answer share | top-3 π positions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in r["regimes"].items():
        rows = [(t, e["tasks"][t]) for t in TASKS] + [("all", e["pooled"])]
        for task, d in rows:
            right, n = ((d["correct"], d["n"]) if "correct" in d else
                        (sum(e["tasks"][t]["correct"] for t in TASKS),
                         sum(e["tasks"][t]["n"] for t in TASKS)))
            acc = f"{right / n:.3f} ({right}/{n})"
            lines.append(
                f"| {name} | {task} | {acc} | "
                f"{d['early_commits_eos'] / max(d['early_commits'], 1):.3f} "
                f"({d['early_commits_eos']}/{d['early_commits']}) | "
                f"{d['answer_position_share']:.3f} | {d['pi_answer_share']:.3f} | "
                f"{d['H_answer_share']:.3f} | {d['R_answer_share']:.3f} | "
                f"{', '.join(map(str, d['top3_pi_positions']))} |")
    lines += ["", "## Which task drives the pooled prior", "",
              "Share of the pooled H and R (sums over positions; the pooled terms are the "
              "task terms' mean, each task with the same number of prompts) that each task "
              "contributes: the task whose decisions have the smallest margins dominates "
              "φ = 1/max(m, m_min)².", "",
              "| regime | " + " | ".join(f"{t} H | {t} R" for t in TASKS) + " |",
              "|---|" + "---|---|" * len(TASKS)]
    for name, e in r["regimes"].items():
        tot = {k: sum(sum(e["tasks"][t][k]) for t in TASKS) for k in ("H", "R")}
        lines.append(f"| {name} | " + " | ".join(
            f"{sum(e['tasks'][t]['H']) / tot['H']:.3f} | {sum(e['tasks'][t]['R']) / tot['R']:.3f}"
            for t in TASKS) + " |")
    lines += ["", "## π per generation position j (pooled and per task)", "",
              "| regime | task | " + " | ".join(str(j) for j in range(16)) + " |",
              "|---|---|" + "---|" * 16]
    for name, e in r["regimes"].items():
        for task, d in [(t, e["tasks"][t]) for t in TASKS] + [("all", e["pooled"])]:
            lines.append(f"| {name} | {task} | " + " | ".join(f"{v:.2f}" for v in d["pi"]) + " |")
    lines += ["", "Figures: " + ", ".join(f"`sampler_regime_{n}.png`" for n in r["regimes"]), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="recompute and compare with the committed results; write nothing")
    args = ap.parse_args(argv)
    results, priors = run()
    results = json.loads(json.dumps(results))  # the form the file holds (tuples → lists)
    if args.check:
        committed = json.loads((OUT / "sampler_regime.json").read_text())
        diffs = compare_trees(results, committed)
        for d in diffs[:20]:
            print(d)
        print("check:", "OK" if not diffs else f"{len(diffs)} differences")
        return 1 if diffs else 0
    for name, prior in priors.items():
        prior.plot(OUT / f"sampler_regime_{name}.png",
                   title=f"Stage I prior, {name} ({prior.prompt_count} training prompts)")
    for suffix, text in (("json", json.dumps(results, indent=1)), ("md", markdown(results))):
        write_text_atomic(OUT / f"sampler_regime.{suffix}", text + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
