"""The main table: FAIR-Calib against the baselines on both toys (SPEC §4.4, §5).

For each sampler regime (the LLaDA toy decoding its 16 positions as one block, the LLaDA
toy semi-AR with block_length 4 — its shipped default —, the Dream toy as shipped), each
bit setting (W4A4, W4A8) and each of K disjoint calibration subsets (distinct *training*
prompts, the same number per task; all methods calibrate on what one ``pipeline.prepare``
call returns, so they see the same prompts and token count), the methods ``fair``,
``fair-gptq``, ``masked-uniform``, ``flatquant``, ``quarot`` (and ``rtn`` outside the full
setting) are calibrated
and evaluated with ``fairref.eval.run.evaluate`` on held-out problems (the held-out split:
never a calibration prompt) against the FP teacher: frontier token and set flip rates
(also by the teacher's margin), post-commit mismatch, accuracy and masked KL. The tables
give mean ± std over subsets, and a paired test of FAIR-Calib against each baseline on
per-problem outcomes averaged over subsets (``fairref.eval.stats.paired_comparison``).

A diagnosis on calibration data only (never the evaluation problems): each task's share of
the pooled prior's H and R, and prior variants (m_min, φ ≡ 1, λ, γ, β, a per-task
balanced H and R) calibrated with ``diag_method`` on subset 0 and judged by the
teacher-forced flip rate and masked KL on a separate slice of training prompts.

Writes paper_repro/results/fair_vs_baselines{_tag}.md and .json, and the figures
fair_vs_baselines{_tag}_margin_<regime>_<bits>.png (flip rate by teacher margin, per
method) and fair_vs_baselines{_tag}_prior_<regime>.png (the subset-0 prior).

The work is split into *pieces*, one per regime × bit setting × calibration subset, kept
in paper_repro/results/fair_vs_baselines{_tag}_pieces/ (NAME.json with every number but
the per-problem outcomes, NAME.npz with those, and the commit that computed it). Each
piece is saved as soon as it is done, in ``--workers`` processes; rerunning the same
command computes only the pieces that are not there (a piece made with other options is
never reused), and the table holds only the (regime, bits) groups whose K subsets are all
done, naming the missing pieces. ``--assemble`` writes the table from the pieces already
done without running anything. Within one process every piece of a regime shares one
teacher rollout on the held-out problems, and no model is run twice on one state
(``fairref.eval.logit_cache``).

Run: python paper_repro/fair_vs_baselines.py [--quick] [--subsets K] [--n-eval N]
     [--n-calib N] [--epochs E] [--bits 4,4 4,8] [--regimes ...] [--workers W]
     [--tag NAME] [--out DIR] [--device cpu|cuda] [--assemble] [--check] [--render]
With no options it runs the issue's full setting (5 subsets of 16 prompts per task, 2000
held-out problems per task, 15 epochs, W4A4 and W4A8, three regimes, the methods fair,
fair-gptq, masked-uniform, flatquant, quarot); on this 2-core CPU a Dream-toy piece took
27–35 CPU-minutes and a LLaDA-toy piece about 47 (42–55 minutes of wall time with two
workers), 30 pieces in all. The committed ``full`` pieces were computed with ``--regimes
dream_default --bits 4,4 4,8 --workers 2 --tag full`` and ``--regimes llada_semi_ar
llada_one_block --bits 4,4 4,8 --workers 2 --tag full`` (run four times at the same commit:
stopped after 6, 12 and 18 of those 20 pieces, the fourth run computing the last 2);
``--tag full --workers 2`` alone continues an interrupted run. ``--methods`` and ``--versus``
choose the methods and the one the paired tests judge: the committed ablation
``--tag gptq_prior_w4a8 --methods fair-gptq masked-uniform-gptq --versus fair-gptq --bits
4,8 --n-diag 0`` (W4A8 only, no diagnosis) asks whether fair-gptq's W4A8 lead is the
prior's or GPTQ's. The committed
medium runs (tags ``medium_llada_semi_ar`` and ``medium_dream_default``: ``--subsets 5
--n-calib 8 --n-eval 100 --epochs 3 --n-diag 16 --bits 4,4 4,8``, with rtn) each took
about an hour. ``--quick`` takes a few CPU-minutes. Set PYTHONPATH to the repository root
so that this checkout's ``fairref`` is the one imported. ``--render`` rewrites the
Markdown of ``--tag`` from its JSON. ``--check`` reruns the configuration stored in the
committed JSON of ``--tag`` (without the piece store) and compares (counts exactly, reals
to a relative 1e-6, wall times left out), writing nothing: the flat solver's training is
reproducible on one machine and thread count, not across CPUs. ``--device cuda``
computes the pieces on a GPU (in spawned workers); each piece records the device it ran on
and the table marks a group whose subsets ran on different devices. ``--out DIR`` writes
everything (table, figures, piece store) under DIR instead of paper_repro/results.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from fairref.diffusion import SamplerSettings, load_generation_config
from fairref.eval.compare import (compare_trees, label_shares, mean_std,
                                  paired_table, per_problem)
from fairref.eval.metrics import MARGIN_EDGES
from fairref.eval.logit_cache import LogitCache
from fairref.eval.pieces import PieceStore
from fairref.eval.run import evaluate, teacher_eval_traces
from fairref.eval.teacher_forced import model_device
from fairref.eval.stats import paired_comparison
from fairref.fair import FlatConfig, Prior, PriorConfig
from fairref.fair.methods import METHODS
from fairref.fair.pipeline import calibrate, prepare
from fairref.fair.prior import estimate_prior
from fairref.files import write_atomic, write_text_atomic
from fairref.models import load
from fairref.toy import checkpoint_dir
from fairref.toy.char_tokenizer import EOS_ID, decode_completion, encode_prompts
from fairref.toy.tasks import TASKS, check, distinct_problems

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "paper_repro" / "results"

#: regime → (toy, sampler settings; None = the checkpoint's generation_config.json).
#: Both LLaDA regimes are pinned here, so a change of the toy's shipped default (semi-AR
#: since the sampler-regime decision, see toy_models/README.md) never changes a regime.
REGIMES = {
    "llada_one_block": ("llada", SamplerSettings(steps=8, gen_length=16, block_length=16)),
    "llada_semi_ar": ("llada", SamplerSettings(steps=8, gen_length=16, block_length=4)),  # = shipped
    "dream_default": ("dream", None),
}
FAIR, BASELINES = "fair", ["fair-gptq", "masked-uniform", "flatquant", "quarot", "rtn"]
#: prior variants of the diagnosis: name → PriorConfig overrides ("task-balanced": each
#: task's H and R divided by that task's mean before pooling)
VARIANTS = {"default": {}, "m_min=0.5": {"m_min": 0.5}, "m_min=2": {"m_min": 2.0},
            "phi=1": {"phi": "one"}, "lam=0": {"lam": 0.0}, "lam=1": {"lam": 1.0},
            "gamma=0": {"gamma": 0.0}, "beta=2": {"beta": 2.0}, "task-balanced": {}}

CONFIG = {  # the full setting (module docstring)
    "regimes": list(REGIMES), "bits": [[4, 4], [4, 8]], "subsets": 5,
    "calib_per_task": 16,  # distinct training prompts per task per subset
    "calib_seed": 0, "states_per_rollout": 4, "epochs": 15,
    "eval_per_task": 2000, "eval_seed": 1,  # held-out split
    "diag_per_task": 32,  # training prompts after the subsets' (calibration data only)
    "diag_method": "fair-gptq",  # solver of the prior-variant diagnosis (fast)
    # the comparison; rtn (the floor) is left out of the full run to save a sixth
    "methods": ["fair", "fair-gptq", "masked-uniform", "flatquant", "quarot"],
}
QUICK = {"regimes": ["llada_semi_ar", "dream_default"], "bits": [[4, 4]], "subsets": 2,
         "calib_per_task": 4, "epochs": 1, "eval_per_task": 25, "diag_per_task": 8,
         "methods": [FAIR] + BASELINES}


def settings_of(regime: str) -> SamplerSettings:
    toy, fixed = REGIMES[regime]
    return fixed or load_generation_config(checkpoint_dir(toy), toy)[0]


def bits_name(bits) -> str:
    return f"w{bits[0]}a{bits[1]}"


def calib_slices(c: dict) -> tuple[list[list[tuple[str, str]]], list[tuple[str, str]]]:
    """K disjoint calibration subsets and the diagnosis slice, as (task, prompt) lists."""
    n, K = c["calib_per_task"], c["subsets"]
    per_task = {t: [p for p, _ in distinct_problems(t, n * K + c["diag_per_task"],
                                                    c["calib_seed"])] for t in TASKS}
    subsets = [[(t, p) for t in TASKS for p in per_task[t][k * n:(k + 1) * n]]
               for k in range(K)]
    diag = [(t, p) for t in TASKS for p in per_task[t][n * K:]]
    return subsets, diag


def eval_problems(c: dict) -> list[tuple[str, str]]:
    return [(t, p) for t in TASKS
            for p, _ in distinct_problems(t, c["eval_per_task"], c["eval_seed"], "heldout")]


def run_eval(teacher, students: dict, problems, settings):
    ids = encode_prompts([p for _, p in problems]).to(model_device(teacher))
    return evaluate(teacher, students, ids, settings, problems=problems,
                    decode=decode_completion, check=lambda pr, text: check(pr[0], pr[1], text),
                    eos_token_id=EOS_ID)


def model_row(res, problems) -> dict:
    """Headline numbers of one model, per-task accuracy and the margin bins."""
    row = dict(res.summary())
    ok = res.accuracy.correct
    row["accuracy_by_task"] = {t: float(np.mean([o for o, (tt, _) in zip(ok, problems)
                                                 if tt == t])) for t in TASKS}
    if res.teacher_forced is not None:
        tf = res.teacher_forced
        row["margin_bins"] = {"flips": tf.bin_flips.tolist(), "counts": tf.bin_counts.tolist()}
    row["seconds"] = round(res.seconds, 2)
    return row


def variant_prior(teacher, settings, data, calib, name: str) -> tuple[Prior, float]:
    """The prior of diagnosis variant ``name`` (``VARIANTS``) on the calibration prompts
    ``calib`` (what ``data`` was prepared from), and the ``pick`` task's share of its H."""
    labels = [calib[int(i)][0] for i in data.probe.prompt_index]
    if name == "task-balanced":
        probe, lab = data.probe, np.asarray(labels)
        H = sum(_unit(probe.h[torch.from_numpy(lab == t)].mean(0)) for t in TASKS) / len(TASKS)
        R = sum(_unit(1 - probe.rho[torch.from_numpy(lab == t)].mean(0))
                for t in TASKS) / len(TASKS)
        prior = Prior.from_stats(H, R, PriorConfig(), settings=settings,
                                 prompt_count=len(calib))
        return prior, 1 / len(TASKS)  # each task's H term has mean 1 by construction
    ids = encode_prompts([p for _, p in calib]).to(model_device(teacher))
    prior, probe = estimate_prior(teacher, ids, settings, PriorConfig(**VARIANTS[name]))
    return prior, label_shares(probe.h, labels)["pick"]


def diagnosis(teacher, settings, data, calib, diag, bits, c) -> dict:
    """Task shares of the pooled prior and prior variants judged on the diagnosis slice."""
    labels = [calib[int(i)][0] for i in data.probe.prompt_index]
    out = {"shares": {"H": label_shares(data.probe.h, labels),
                      "R": label_shares(1 - data.probe.rho, labels)}, "variants": {}}
    students = {}
    for name in VARIANTS:
        prior, pick_share = variant_prior(teacher, settings, data, calib, name)
        out["variants"][name] = {"pick_H_share": pick_share,
                                 "pi": prior.pi.tolist()}
        students[name] = calibrate(teacher, c["diag_method"], data, prior=prior,
                                   w_bits=bits[0], a_bits=bits[1]).model
    students["uniform"] = calibrate(teacher, c["diag_method"].replace("fair", "masked-uniform"),
                                    data, w_bits=bits[0], a_bits=bits[1]).model
    res = run_eval(teacher, students, diag, settings)
    for name in students:
        s = res.models[name].summary()
        out["variants"].setdefault(name, {}).update(
            token_flip=s["token_flip"], masked_kl=s["masked_kl"], accuracy=s["accuracy"])
    return out


def device_of(c: dict) -> str:
    """Where the pieces of ``c`` compute (configs written before ``--device``: the CPU)."""
    return c.get("device", "cpu")


def _unit(v):
    return v / v.mean() if v.mean() > 0 else torch.ones_like(v)


#: per process: regime → (teacher, its LogitCache, settings, problems, prompt ids, teacher
#: traces) — every piece of a regime that a worker runs shares one teacher rollout
_REGIME_STATE: dict = {}


def regime_state(regime: str, c: dict):
    device = device_of(c)
    key = (regime, c["eval_per_task"], c["eval_seed"], device)
    if key not in _REGIME_STATE:
        teacher = load(checkpoint_dir(REGIMES[regime][0]), device=device)
        settings = settings_of(regime)
        problems = eval_problems(c)
        ids = encode_prompts([p for _, p in problems]).to(device)
        cache = LogitCache(teacher, CACHE_BYTES)
        traces = teacher_eval_traces(cache, ids, settings)
        _REGIME_STATE.clear()  # one regime's teacher at a time (memory)
        _REGIME_STATE[key] = (teacher, cache, settings, problems, ids, traces)
    return _REGIME_STATE[key]


#: logits each worker may keep per cache (teacher, current student): the full setting's
#: 8000 LLaDA-toy problems need about 0.4 GB each
CACHE_BYTES = 3 << 29


def run_piece(regime: str, k: int, bits: list[int], c: dict) -> dict:
    """One calibration subset ``k`` of one regime at one bit setting: every method
    calibrated on the same ``pipeline.prepare`` data and evaluated on the held-out problems."""
    torch.set_num_threads(1)
    teacher, cache, settings, problems, ids, traces = regime_state(regime, c)
    subsets, diag = calib_slices(c)
    calib = subsets[k]
    data = prepare(teacher, encode_prompts([p for _, p in calib]).to(device_of(c)), settings,
                   states_per_rollout=c["states_per_rollout"])
    name = piece_name(regime, bits, k)
    say(f"piece {name}: Stage I on {len(calib)} prompts ({data.seconds:.0f} s)")
    flat = FlatConfig(epochs=c["epochs"])
    students, seconds = {}, {}
    for m in [primary(c)] + baselines(c):
        cal = calibrate(teacher, m, data, w_bits=bits[0], a_bits=bits[1], flat=flat, seed=k)
        students[m], seconds[m] = cal.model, round(cal.seconds, 2)
        say(f"piece {name}: {m} calibrated ({cal.seconds:.0f} s)")
    res = evaluate(teacher, students, ids, settings, problems=problems,
                   decode=decode_completion,
                   check=lambda pr, text: check(pr[0], pr[1], text), eos_token_id=EOS_ID,
                   teacher_traces=traces, teacher_cache=cache, cache_bytes=CACHE_BYTES)
    say(f"piece {name}: {len(students)} students evaluated on {len(problems)} problems "
        f"({sum(r.seconds for r in res.models.values()):.0f} s)")
    rows = {m: model_row(r, problems) for m, r in res.models.items()}
    for m in seconds:
        rows[m]["calib_seconds"] = seconds[m]
    piece = {"regime": regime, "subset": k, "bits": bits, "device": device_of(c),
             "stage1_seconds": round(data.seconds, 2),
             "calib_tokens": int(data.masked.attention_mask.sum())
             if data.masked.attention_mask is not None else int(data.masked.ids.numel()),
             "models": rows,
             "outcomes": {m: per_problem(res.models[m]) for m in students}}
    if k == 0:
        piece["prior"] = data.prior.to_dict()
        if bits == c["bits"][0] and c["diag_per_task"] > 0:
            piece["diagnosis"] = diagnosis(teacher, settings, data, calib, diag, bits, c)
    return piece


def say(msg: str) -> None:
    """A progress line on stderr (workers included: a piece takes tens of CPU-minutes)."""
    print(msg, file=sys.stderr, flush=True)


def primary(c: dict) -> str:
    """The method the paired tests judge (``fair`` unless ``--versus`` names another; the
    key is absent from ``c`` then, so the committed configurations stay as they were)."""
    return c.get("primary", FAIR)


def baselines(c: dict) -> list[str]:
    return [m for m in c.get("methods", [FAIR] + BASELINES) if m != primary(c)]


METRICS = ("token_flip", "set_flip", "mismatch", "accuracy", "masked_kl")


def aggregate(subsets: list[dict], first: str = FAIR) -> dict:
    """Mean ± std over subsets, and the paired tests of ``first`` against each baseline."""
    names = list(subsets[0]["models"])
    agg = {"models": {m: {k: mean_std([s["models"][m][k] for s in subsets]) for k in METRICS}
                      for m in names}, "paired": {}}
    for m in names:
        if m == "FP":
            continue
        f = np.sum([s["models"][m]["margin_bins"]["flips"] for s in subsets], 0)
        n = np.sum([s["models"][m]["margin_bins"]["counts"] for s in subsets], 0)
        agg["models"][m]["flip_by_margin"] = [float(a / b) if b else None for a, b in zip(f, n)]
        agg["models"][m]["margin_counts"] = n.tolist()

    def avg(m, key):  # per-problem outcome averaged over subsets
        return np.mean([s["outcomes"][m][key] for s in subsets], 0)
    for b in [m for m in names if m not in ("FP", first)]:
        agg["paired"][b] = {key: paired_comparison(avg(first, key), avg(b, key)).to_dict()
                            for key in ("correct", "token_flips", "mismatched")}
    return agg


# ------------------------------------------------------------------- the piece store
#: config keys that do not change a piece (which pieces are run, not what one is)
NOT_PIECE_KEYS = ("regimes", "bits", "device")


def piece_name(regime: str, bits, k: int) -> str:
    return f"{regime}_{bits_name(bits)}_s{k}"


def piece_store(tag: str, c: dict) -> PieceStore:
    """The pieces of ``--tag`` valid for ``c`` (``fairref.eval.pieces``)."""
    return PieceStore(OUT / f"fair_vs_baselines{'_' + tag if tag else ''}_pieces",
                      {k: v for k, v in c.items() if k not in NOT_PIECE_KEYS}, repo=ROOT,
                      source_paths=["fairref", "paper_repro/fair_vs_baselines.py"])


def all_pieces(c: dict) -> list[tuple[str, list[int], int]]:
    return [(r, b, k) for r in c["regimes"] for b in c["bits"] for k in range(c["subsets"])]


def run(c: dict, workers: int, store: PieceStore | None) -> tuple[dict, dict]:
    """Every piece of ``c`` (regime × bits × subset), reusing those already in ``store``
    (None: none reused, none kept); returns the assembled results and the subset-0 priors.
    Pieces run in ``workers`` processes; each finished piece is saved at once, so an
    interrupted run continues where it stopped."""
    want = all_pieces(c)
    have = {} if store is None else store.load_all([piece_name(*p) for p in want])
    todo = [p for p in want if piece_name(*p) not in have]
    print(f"{len(want) - len(todo)} of {len(want)} pieces already done"
          + (f" in {store.folder}" if store is not None else "") + f"; running {len(todo)}",
          file=sys.stderr, flush=True)
    if todo:
        # a forked child cannot initialise CUDA: spawn the workers there
        ctx = multiprocessing.get_context("spawn" if device_of(c) != "cpu" else None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(run_piece, r, k, b, c): (r, b, k) for r, b, k in todo}
            for fut in as_completed(futures):
                piece = fut.result()
                name = piece_name(*futures[fut])
                if store is not None:
                    store.save(name, piece)
                    piece = store.load(name)  # as stored: one code path
                have[name] = piece
                print(f"piece {name}: done ({len(have)} of {len(want)})", file=sys.stderr,
                      flush=True)
    return assemble(c, have)


def assemble(c: dict, have: dict) -> tuple[dict, dict]:
    """The results tree from the pieces: a (regime, bits) group is tabulated only when all
    its subsets are there; the others are listed under ``missing``."""
    results = {"config": c, "regimes": {}, "missing": [], "sources": []}
    priors = {}
    for r in c["regimes"]:
        e = {"toy": REGIMES[r][0], "settings": vars(settings_of(r)), "bits": {}}
        for b in c["bits"]:
            names = [piece_name(r, b, k) for k in range(c["subsets"])]
            absent = [n for n in names if n not in have]
            if absent:
                results["missing"] += absent
                continue
            subsets = []
            for n in names:
                p = have[n]
                src = p.get("source")
                if src is not None:  # which commit computed which groups
                    entry = next((x for x in results["sources"]
                                  if (x["commit"], x["dirty"]) == (src["commit"], src["dirty"])),
                                 None)
                    if entry is None:
                        entry = {**src, "groups": []}
                        results["sources"].append(entry)
                    group = f"{r} {bits_name(b).upper()}"
                    if group not in entry["groups"]:
                        entry["groups"].append(group)
                dev = p.get("device", "cpu")  # pieces before --device: all on the CPU
                if dev not in e.setdefault("devices", {}).setdefault(bits_name(b), []):
                    e["devices"][bits_name(b)].append(dev)
                subsets.append({k: v for k, v in p.items()
                                if k not in ("regime", "subset", "bits", "prior", "diagnosis",
                                             "config", "source", "device")})
                if "prior" in p:
                    priors[r] = Prior._from_dict(p["prior"], n)
                if "diagnosis" in p:
                    e["diagnosis"] = p["diagnosis"]
            e["bits"][bits_name(b)] = {"subsets": subsets,
                                       "aggregate": aggregate(subsets, primary(c))}
        results["regimes"][r] = e
    for e in results["regimes"].values():  # outcomes live in the pieces, not the table
        for entry in e["bits"].values():
            for s in entry["subsets"]:
                s.pop("outcomes", None)
    return json.loads(json.dumps(results)), priors


def is_reduced(c: dict) -> bool:
    """Whether ``c`` is below the issue's full setting anywhere (an ablation, judging
    another method than fair, chooses its bit settings: those are not a reduction)."""
    return (c["subsets"] < CONFIG["subsets"] or c["eval_per_task"] < CONFIG["eval_per_task"]
            or c["epochs"] < CONFIG["epochs"] or c["calib_per_task"] < CONFIG["calib_per_task"]
            or (primary(c) == FAIR and any(b not in c["bits"] for b in CONFIG["bits"])))


def fmt(d: dict, digits: int = 4) -> str:
    if d["mean"] is None:
        return "n/a"
    return f"{d['mean']:.{digits}f}" + ("" if d["std"] is None else f" ± {d['std']:.{digits}f}")


def markdown(r: dict, tag: str) -> str:
    c = r["config"]
    first = primary(c)
    who = "FAIR-Calib" if first == FAIR else f"`{first}`"
    against = ("the baselines" if first == FAIR
               else ", ".join(f"`{m}`" for m in baselines(c)))
    lines = [f"# {who} against {against}{f' ({tag} setting)' if tag else ''}", "",
             f"Setting: regimes {', '.join(c['regimes'])}; bits "
             f"{', '.join(bits_name(b).upper() for b in c['bits'])}; {c['subsets']} disjoint "
             f"calibration subsets of {c['calib_per_task']} distinct training prompts per task "
             f"(seed {c['calib_seed']}, {c['states_per_rollout']} teacher states per rollout); "
             f"flat solver {c['epochs']} epochs; evaluation on {c['eval_per_task']} held-out "
             f"problems per task (seed {c['eval_seed']}; never a calibration prompt). "
             f"Generated by `python paper_repro/fair_vs_baselines.py`.", ""]
    missing = [g for g in REGIMES if g not in c["regimes"]]
    if missing:
        lines += [f"Not run in this setting (no time on the shared CPU): {', '.join(missing)}.",
                  ""]
    if r.get("missing"):
        lines += [f"**Incomplete**: {len(r['missing'])} pieces (regime × bits × subset) are not "
                  f"computed yet, so their groups are left out: {', '.join(r['missing'])}. "
                  "Rerunning the same command computes only those.", ""]
    for src in r.get("sources", []):
        lines += [f"Pieces computed at commit `{src['commit']}`"
                  + (" (with uncommitted changes)" if src.get("dirty") else "")
                  + (f": {', '.join(src['groups'])}" if src.get("groups") else "") + ".", ""]
    if is_reduced(c):
        lines += ["**Reduced setting**: the issue's full setting (≥ 5 subsets, ≥ 2000 held-out "
                  "problems per task, 15 epochs, W4A4 and W4A8) did not fit on the shared "
                  "2-core machine; these numbers are the setting above. Differences below "
                  "the paired tests' resolution are not claims.", ""]
    lines += ["Cells: mean ± std over subsets. token/set flip: frontier flip rates "
              "(teacher-forced); mismatch: post-commit mismatch (own rollouts, positions after "
              "the teacher's EOS excluded); KL: masked KL (nats). FlatQuant here is SPEC "
              "§4.3(d) on plain inputs with w ≡ 1 (quantized-path inputs, unnormalized loss, "
              "α = ½, no weight decay, Hadamard init, one clip per site, float32), not "
              "FlatQuant's code.", ""]
    for regime, e in r["regimes"].items():
        for bname, entry in e["bits"].items():
            agg = entry["aggregate"]
            lines += [f"## {regime}, {bname.upper()}", ""]
            devices = e.get("devices", {}).get(bname, ["cpu"])
            if devices != ["cpu"]:
                lines += [f"Computed on {' and '.join(devices)}"
                          + (" (subsets on different devices, whose float rounding differs)"
                             if len(devices) > 1 else "") + ".", ""]
            lines += ["| method | accuracy | token flip | set flip | mismatch | masked KL | "
                      "calib s |", "|---|---|---|---|---|---|---|"]
            for m, a in agg["models"].items():
                sec = np.mean([s["models"][m].get("calib_seconds", 0) for s in entry["subsets"]])
                lines.append(f"| {m} | {fmt(a['accuracy'], 3)} | {fmt(a['token_flip'])} | "
                             f"{fmt(a['set_flip'])} | {fmt(a['mismatch'])} | "
                             f"{fmt(a['masked_kl'])} | {sec:.0f} |")
            edges = [f"[{lo}, {hi})" for lo, hi in zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:])]
            lines += ["", "Frontier token flip rate by teacher margin g (pooled over subsets; "
                      "slots per bin in the header):", "",
                      "| method | " + " | ".join(
                          f"{ed} (n={n})" for ed, n in
                          zip(edges, agg["models"][first]["margin_counts"])) + " |",
                      "|---|" + "---|" * len(edges)]
            for m, a in agg["models"].items():
                if "flip_by_margin" in a:
                    lines.append(f"| {m} | " + " | ".join(
                        "n/a" if v is None else f"{v:.4f}" for v in a["flip_by_margin"]) + " |")
            lines += ["", f"Paired tests, {first} − baseline on per-problem outcomes averaged "
                      "over subsets (mean difference [95% bootstrap CI], sign-test p; for "
                      f"accuracy positive favours {first}, for flips and mismatches negative "
                      "does):", ""]
            lines += paired_table(agg["paired"], "baseline")
            lines += [""] + verdict(agg["paired"], who) + [""]
        if "diagnosis" in e:
            lines += diagnosis_markdown(regime, e["diagnosis"], c)
    return "\n".join(lines)


#: paired outcome → the sign of a difference fair − baseline that favours fair
FAVOURS = {"correct": +1, "token_flips": -1, "mismatched": -1}
ALPHA = 0.05  # level of the sign test behind "better" / "worse"


def verdict(paired: dict, who: str = "FAIR-Calib") -> list[str]:
    """One line per baseline (better / worse / n.s. on each outcome) and the summary:
    ``who`` (FAIR-Calib, or the ``--versus`` method) wins when it is significantly better
    than every baseline on at least one outcome and significantly worse on none.

    "Significantly" is the sign test's: p < ALPHA, in the direction of its own statistic
    (more problems where ``who`` is ahead than behind, or fewer), not the mean's. Where the
    bootstrap CI of the mean difference says otherwise (it excludes 0 while the sign test
    is n.s., or it includes 0 while the sign test is significant), the line says so: the
    two ask different questions (which method is ahead on more problems; by how much on
    average) and part of a reader's judgement is when they disagree."""
    lines, wins = [], []
    for b, pc in paired.items():
        parts, better, worse = [], False, False
        for key, sign in FAVOURS.items():
            d = pc[key]
            p, ahead = d["sign_test_p"], (d["n_pos"] - d["n_neg"]) * sign
            ci = d["mean_diff"]
            if p < ALPHA and ahead > 0:
                word, better = "better", True
            elif p < ALPHA and ahead < 0:
                word, worse = "worse", True
            else:
                word = "n.s."
            if ci["lo"] > 0 or ci["hi"] < 0:  # the mean's CI excludes 0
                mean_word = "better" if ci["estimate"] * sign > 0 else "worse"
            else:
                mean_word = "n.s."
            if mean_word != word:
                word += f" (the mean's CI: {'includes 0' if mean_word == 'n.s.' else mean_word})"
            parts.append(f"{key} {word}")
        wins.append(better and not worse)
        lines.append(f"- vs {b}: " + ", ".join(parts))
    win = all(wins)
    lines.append(f"- **Does {who} win here?** {'yes' if win else 'no'}: significantly "
                 f"better (sign test p < {ALPHA}) than "
                 f"{sum(wins)} of {len(wins)} baselines on at least one outcome without "
                 "being significantly worse on any.")
    return lines


def diagnosis_markdown(regime: str, d: dict, c: dict) -> list[str]:
    lines = [f"### {regime}: why — calibration data only", "",
             "Share of the pooled prior's H and R (summed over positions) by task, on "
             "calibration subset 0:", "",
             "| term | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
    for term in ("H", "R"):
        lines.append(f"| {term} | " + " | ".join(f"{d['shares'][term][t]:.3f}" for t in TASKS)
                     + " |")
    lines += ["", f"Prior variants, each calibrated by `{c['diag_method']}` on subset 0 "
              f"(`uniform`: w ≡ 1) at {bits_name(c['bits'][0]).upper()}, judged on "
              f"{c['diag_per_task']} further *training* prompts per task (not the evaluation "
              "set):", "",
              "| variant | pick share of H | token flip | masked KL | accuracy |",
              "|---|---|---|---|---|"]
    for name, v in d["variants"].items():
        share = f"{v['pick_H_share']:.3f}" if "pick_H_share" in v else "—"
        lines.append(f"| {name} | {share} | {v['token_flip']:.4f} | {v['masked_kl']:.4f} | "
                     f"{v['accuracy']:.3f} |")
    v = d["variants"]
    low = min(x["masked_kl"] for x in v.values())
    best = [n for n in v if v[n]["masked_kl"] == low]  # in table order; a tie names all
    lines += ["", f"Lowest masked KL on the diagnosis slice: "
              f"{', '.join(f'`{n}`' for n in best)}{' (tied)' if len(best) > 1 else ''} "
              f"({low:.4f} vs default {v['default']['masked_kl']:.4f}, "
              f"uniform {v['uniform']['masked_kl']:.4f}); pick's share of the pooled H "
              f"under the default prior: {v['default']['pick_H_share']:.3f}."]
    return lines + [""]


def figures(r: dict, priors: dict, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = f"fair_vs_baselines{'_' + tag if tag else ''}"
    for regime, e in r["regimes"].items():
        for bname, entry in e["bits"].items():
            fig, ax = plt.subplots(figsize=(6, 3.5))
            x = np.arange(len(MARGIN_EDGES) - 1)
            for m, a in entry["aggregate"]["models"].items():
                if "flip_by_margin" in a:
                    y = [np.nan if v is None else v for v in a["flip_by_margin"]]
                    ax.plot(x, y, "-o", label=m, markersize=4)
            ax.set_xticks(x, [f"[{lo},{hi})" for lo, hi in
                              zip(MARGIN_EDGES[:-1], MARGIN_EDGES[1:])])
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_ylim(bottom=0)  # rates: no negative half of the symlog axis
            ax.set_xlabel("teacher probability margin g")
            ax.set_ylabel("frontier token flip rate")
            ax.set_title(f"{regime}, {bname.upper()} (held-out)", fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            write_atomic(OUT / f"{base}_margin_{regime}_{bname}.png",
                         lambda tmp: fig.savefig(tmp, format="png"))
            plt.close(fig)
    for regime, prior in priors.items():
        prior.plot(OUT / f"{base}_prior_{regime}.png",
                   title=f"Stage I prior, {regime}, subset 0 ({prior.prompt_count} prompts)")


def main(argv=None) -> int:
    global OUT  # --out: every writer below reads it
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="rerun the committed JSON's config of --tag and compare; write nothing")
    ap.add_argument("--render", action="store_true",
                    help="rewrite the Markdown of --tag from its JSON (no computation)")
    ap.add_argument("--quick", action="store_true", help="a small preset (about 5 minutes)")
    ap.add_argument("--subsets", type=int, help="disjoint calibration subsets K")
    ap.add_argument("--n-eval", type=int, dest="eval_per_task", help="held-out problems per task")
    ap.add_argument("--n-calib", type=int, dest="calib_per_task",
                    help="calibration prompts per task per subset")
    ap.add_argument("--n-diag", type=int, dest="diag_per_task",
                    help="training prompts per task of the diagnosis slice (0: no diagnosis)")
    ap.add_argument("--epochs", type=int, help="flat solver epochs")
    ap.add_argument("--bits", nargs="+", help="W,A pairs, e.g. 4,4 4,8")
    ap.add_argument("--regimes", nargs="+", choices=list(REGIMES))
    ap.add_argument("--methods", nargs="+", metavar="METHOD",
                    help="the methods to calibrate and compare (SPEC §4.4 names; default: "
                         "fair fair-gptq masked-uniform flatquant quarot); use a new --tag")
    ap.add_argument("--versus", metavar="METHOD",
                    help="the method the paired tests judge against the others (default: "
                         "fair); must be one of --methods")
    ap.add_argument("--workers", type=int, default=1,
                    help="pieces (regime × bits × subset) run in parallel processes")
    ap.add_argument("--assemble", action="store_true",
                    help="write the table from the pieces already computed for --tag and "
                         "these options (complete groups only); run nothing")
    ap.add_argument("--tag", default="", help="results name suffix, e.g. reduced")
    ap.add_argument("--out", type=Path, default=OUT,
                    help="folder of the table, figures and piece store (default: "
                         "paper_repro/results, where the committed results live)")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default) or cuda[:i]: where every piece computes; which device "
                         "computed a piece is stored with it, and a group computed on "
                         "several is marked in the table")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder (it is created if "
                         "missing)")
    OUT = args.out
    tag = args.tag
    name = f"fair_vs_baselines{'_' + tag if tag else ''}"
    if args.check:
        path = OUT / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no committed results to check; run without "
                                    "--check first, or pass the --tag of a committed run")
        committed = json.loads(path.read_text())
        results, _ = run(committed["config"], args.workers, None)
        diffs = compare_trees(strip_seconds(results["regimes"]),
                              strip_seconds(committed["regimes"]))
        for d in diffs[:20]:
            print(d)
        print("check:", "OK" if not diffs else f"{len(diffs)} differences")
        return 1 if diffs else 0
    if args.render:
        path = OUT / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no results to render; run without --render")
        text = markdown(json.loads(path.read_text()), tag)
        write_text_atomic(OUT / f"{name}.md", text + "\n")
        print(text)
        return 0
    c = dict(CONFIG, **(QUICK if args.quick else {}))
    from fairref.cli.common import _device  # one clear error for cuda without CUDA

    c["device"] = str(_device(args.device))
    for key in ("subsets", "eval_per_task", "calib_per_task", "diag_per_task", "epochs",
                "regimes"):
        if getattr(args, key) is not None:
            c[key] = getattr(args, key)
    if args.bits:
        c["bits"] = [parse_bits(b) for b in args.bits]
    if args.methods:
        c["methods"] = list(dict.fromkeys(args.methods))
    if args.versus and args.versus != FAIR:
        c["primary"] = args.versus
    check_methods(c)
    check_counts({"--subsets": c["subsets"], "--n-eval": c["eval_per_task"],
                  "--n-calib": c["calib_per_task"], "--epochs": c["epochs"],
                  "--workers": args.workers})
    store = piece_store(tag, c)
    if args.assemble:
        have = store.load_all([piece_name(*p) for p in all_pieces(c)])
        if not have:
            raise ValueError(f"{store.folder}: no pieces computed with this configuration; "
                             "run without --assemble first")
        results, priors = assemble(c, have)
    else:
        results, priors = run(c, args.workers, store)
    figures(results, priors, tag)
    text = markdown(results, tag)
    for suffix, body in (("json", json.dumps(results, indent=1)), ("md", text)):
        write_text_atomic(OUT / f"{name}.{suffix}", body + "\n")
    print(text)
    return 0


def parse_bits(text: str) -> list[int]:
    """[W, A] from an option value like "4,4"."""
    try:
        w, a = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--bits: expected W,A pairs like 4,4; got {text!r}") from None
    return [w, a]


def check_methods(c: dict) -> None:
    """Every method a SPEC §4.4 name, at least two, the judged one among them; else a
    ValueError naming the option."""
    unknown = [m for m in c["methods"] if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method {', '.join(unknown)}; choose from "
                         f"{', '.join(METHODS)}")
    if primary(c) not in c["methods"]:
        raise ValueError(f"--versus {primary(c)} is not among the methods "
                         f"({' '.join(c['methods'])}); add it to --methods")
    if len(c["methods"]) < 2:
        raise ValueError("--methods: give at least two methods to compare")


def check_counts(counts: dict) -> None:
    """Every count in ``counts`` ({option: value}) at least 1, else a ValueError naming
    the option."""
    for flag, v in counts.items():
        if v < 1:
            raise ValueError(f"{flag} must be >= 1, got {v}")


def strip_seconds(tree):
    """The result tree without wall times (they differ on every run) and without the
    per-problem outcomes (older tables kept them in the JSON, newer ones in the pieces)."""
    if isinstance(tree, dict):
        return {k: strip_seconds(v) for k, v in tree.items()
                if "seconds" not in k and k != "outcomes"}
    if isinstance(tree, list):
        return [strip_seconds(v) for v in tree]
    return tree


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # one line, as the CLI does
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
