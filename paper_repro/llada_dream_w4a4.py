"""The paper's setting on a real model: W4A4 on LLaDA-8B-Instruct or Dream-v0-Instruct-7B
with math word problems (SPEC §3–5, §8).

What the user provides (nothing is downloaded):

- ``--model DIR``: a local LLaDA-8B-Instruct or Dream-v0-Instruct-7B directory as
  published (config.json, the safetensors shards and their index, tokenizer.json,
  tokenizer_config.json with its chat_template). The family is read from config.json;
  prompts are laid out as one user turn of the model's chat format (the CLI's ``--chat``),
  so a directory without a recognised chat_template is an error.
- ``--data FILE.jsonl``: GSM8K-style problems, one ``{"question": ..., "answer": "...
  #### 42"}`` per line (``"prompt"`` is accepted for ``"question"``; other keys are
  ignored); e.g. GSM8K's test.jsonl. Calibration and evaluation problems are drawn from it
  by the disjoint seeded rule of :func:`fairref.eval.math_answers.split_problems`, or,
  with ``--calib FILE.jsonl`` (e.g. GSM8K's train.jsonl), calibration problems come from
  that file and evaluation problems from ``--data`` (a question in both is an error).
  Accuracy: :mod:`fairref.eval.math_answers` (the number after the last ``####``, else in
  the last ``\\boxed{}``, else the last number; exact comparison as fractions).

Sampler defaults, the published ones for such tasks (each field overridable by a flag):

- LLaDA: ``steps=128, gen_length=128, block_length=32, temperature=0, cfg_scale=0,
  remasking=low_confidence`` — ``main()`` of ``generate.py`` in ML-GSAI/LLaDA, which runs
  LLaDA-8B-Instruct on a GSM8K-style word problem with the chat template.
- Dream: ``steps=256, gen_length=256 (max_new_tokens), temperature=0.1, top_p=0.9,
  alg=entropy`` (alg_temp unset, eps 1e-3) — the ``gsm8k_cot`` entry (0-shot, chat
  template) of ``eval_instruct/eval.sh`` in HKUNLP/Dream. At temperature 0.1 the rollouts
  are random: every rollout draws from a generator seeded ``--seed``.

Methods (default ``rtn quarot flatquant masked-uniform fair``, SPEC §4.4) are calibrated at
W4A4 on the same Stage I data (what :func:`fairref.fair.pipeline.prepare` computes on the
calibration prompts, batched: :func:`stage1`) and evaluated one at a time with
:func:`fairref.eval.run.evaluate` against the FP teacher on the evaluation prompts:
accuracy with its 95% bootstrap interval, frontier token and set flips, masked KL,
post-commit mismatch; and a paired test of ``fair`` against each other method on
per-problem outcomes (:func:`fairref.eval.stats.paired_comparison`).

Resumable: under ``--out`` the run's settings (``run.json``), the teacher's evaluation
rollouts and the Stage I data (``cache/``, :mod:`fairref.run_cache`) and each finished
method (``methods/<name>.json``) are written atomically. A rerun with the same settings
skips finished methods and reuses the caches; other settings are refused unless
``--force`` (which discards the old results). ``results.json`` and ``results.md`` are
rebuilt from the method files after every run (the same bytes when nothing was left).

Memory: the teacher and one quantized copy in ``--dtype`` at a time plus the calibration
activations of one block: in float32 (the default, which the flat solver of flatquant,
masked-uniform and fair needs today) about 2 × 32 GB for LLaDA-8B and 2 × 30 GB for
Dream-7B; ``--dtype bfloat16`` halves that for rtn / quarot only. Cost in GPU-hours: the
README section "Reproducing the paper on LLaDA-8B / Dream-7B".

Legend: N evaluation problems, C calibration problems, P (P') their padded prompt lengths.

Run: PYTHONPATH=. python paper_repro/llada_dream_w4a4.py --model DIR --data test.jsonl
     --out runs/llada_w4a4 --device cuda [--calib train.jsonl] [--n-calib N] [--n-eval N]
     [--methods ...] [--dtype bfloat16] [--seed S] [--epochs E] [sampler flags] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fairref.diffusion import SamplerSettings
from fairref.eval.compare import paired_table, per_problem
from fairref.eval.math_answers import (draw_problems, is_correct, read_math_jsonl,
                                       split_problems)
from fairref.eval.run import evaluate, teacher_eval_traces
from fairref.eval.stats import paired_comparison
from fairref.fair import FlatConfig, get_method
from fairref.fair.pipeline import CalibData, calibrate, prepare
from fairref.files import read_json, write_text_atomic
from fairref.models import load, load_tokenizer
from fairref.models.checkpoint import read_config
from fairref.models.config import DreamConfig
from fairref.models.tokenizer import PromptFormat, encode_prompts
from fairref.progress import progress_bar
from fairref.prompts import text_decoder
from fairref.run_cache import load_calib_data, load_traces, save_calib_data, save_traces

#: the published sampler settings for math word problems (module docstring)
SAMPLERS = {
    "llada": SamplerSettings(steps=128, gen_length=128, block_length=32, temperature=0.0,
                             remasking="low_confidence", cfg_scale=0.0),
    "dream": SamplerSettings(steps=256, gen_length=256, temperature=0.1, top_p=0.9,
                             alg="entropy"),
}
METHODS = ("rtn", "quarot", "flatquant", "masked-uniform", "fair")
FAIR = "fair"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: sampler flags: SamplerSettings field → flag
SAMPLER_FLAGS = {"steps": "--steps", "gen_length": "--gen-length",
                 "block_length": "--block-length", "temperature": "--temperature",
                 "remasking": "--remasking", "alg": "--alg", "top_p": "--top-p"}


@dataclass(frozen=True)
class ReproConfig:
    """One run (module docstring); every field but ``out``, ``methods``, ``device`` and
    ``force`` determines the results and is recorded in ``run.json`` (adding a method to
    a finished run resumes it)."""

    model: Path
    data: Path
    out: Path
    calib: Path | None = None  # calibration problems from this file instead of --data
    n_calib: int = 128  # calibration prompts (Stage I rollouts; S states each)
    n_eval: int = 500  # held-out evaluation problems
    methods: tuple[str, ...] = METHODS
    seed: int = 0  # split, rollouts, flat solver's batch order, bootstrap
    dtype: str = "float32"  # the reference's arithmetic (the flat solver needs it today)
    device: str = "cpu"
    epochs: int = 15  # flat solver epochs per block (SPEC §4.3d)
    states_per_rollout: int = 4  # S of SPEC §4.1
    batch: int = 8  # prompts per sampler call and states per teacher-forced pass (memory)
    w_bits: int = 4
    a_bits: int = 4
    sampler: dict = dataclasses.field(default_factory=dict)  # overrides of SAMPLERS
    force: bool = False


def stage1(teacher, ids: Tensor, attn: Tensor | None, settings: SamplerSettings,
           cfg: ReproConfig) -> CalibData:
    """Stage I on the calibration prompts ``ids`` (C, P'), rolled out ``cfg.batch`` prompts
    at a time (one batch of 128 prompts would need ~45 GB for the float64 softmax of
    LLaDA's 126k-token vocabulary alone)."""
    with torch.no_grad():
        return prepare(teacher, ids, settings, states_per_rollout=cfg.states_per_rollout,
                       seed=cfg.seed, attention_mask=attn, batch_size=cfg.batch)


def quantize(teacher, method: str, data, cfg: ReproConfig):
    """Stage II of one method: the one place the calibration entry point is called."""
    n = len(teacher.blocks)
    with progress_bar(range(n), desc=f"calibrate {method}", unit="block") as bar:
        return calibrate(teacher, method, data, w_bits=cfg.w_bits, a_bits=cfg.a_bits,
                         flat=FlatConfig(epochs=cfg.epochs), seed=cfg.seed,
                         on_block=lambda l, m: bar.update(1))


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 of config.json and the weight files' names and sizes (cheap; a changed
    checkpoint changes its sizes or its config in practice)."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.iterdir()):
        if f.suffix == ".safetensors" or f.name == "model.safetensors.index.json":
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def _questions_hash(problems) -> str:
    return hashlib.sha256(json.dumps([p.question for p in problems]).encode()).hexdigest()


def load_problems(cfg: ReproConfig):
    """(calibration, evaluation) problems by the rule of the module docstring."""
    problems = read_math_jsonl(cfg.data)
    if cfg.calib is None:
        try:
            return split_problems(problems, cfg.n_calib, cfg.n_eval, cfg.seed)
        except ValueError as e:
            raise ValueError(f"--data {cfg.data}: {e}") from None
    draws = []
    for flag, n_flag, file, n in (("--calib", "--n-calib", cfg.calib, cfg.n_calib),
                                  ("--data", "--n-eval", cfg.data, cfg.n_eval)):
        pool = problems if flag == "--data" else read_math_jsonl(file)
        try:
            draws.append(draw_problems(pool, n, cfg.seed))
        except ValueError as e:
            raise ValueError(f"{flag} {file}: {e} ({n_flag} {n}); lower {n_flag} or give a "
                             "larger file") from None
    seen = {p.question for p in draws[0]}
    both = [p for p in draws[1] if p.question in seen]
    if both:
        raise ValueError(f"--data {cfg.data}, line {both[0].line}: this question is also a "
                         f"calibration question drawn from --calib {cfg.calib}; evaluation "
                         "must use held-out problems (SPEC §5): remove it from one file")
    return draws[0], draws[1]


def sampler_settings(family: str, overrides: dict) -> SamplerSettings:
    """The published settings of ``family`` with the user's overrides; a flag the family's
    sampler does not read is an error naming it."""
    settings = dataclasses.replace(SAMPLERS[family], **overrides)
    unused = settings.unused_by(family)
    if unused:
        raise ValueError(f"{', '.join(SAMPLER_FLAGS[k] for k in unused)}: not an option of "
                         f"the {family} sampler; drop it")
    if family == "llada":  # checked here, before any work, with the flags' names
        G, B, T = settings.gen_length, settings.block_length or settings.gen_length, settings.steps
        if G % B or T % (G // B):
            raise ValueError(f"LLaDA needs --gen-length ({G}) to be a multiple of "
                             f"--block-length ({B}) and --steps ({T}) a multiple of the number "
                             f"of blocks ({G / B:g}); adjust the three together")
    return settings


def run_record(cfg: ReproConfig, family: str, settings: SamplerSettings, calib, evals
               ) -> dict:
    """Everything that determines the results (compared on a rerun)."""
    return {"model": model_fingerprint(cfg.model), "family": family,
            "calib_questions": _questions_hash(calib), "eval_questions": _questions_hash(evals),
            "n_calib": len(calib), "n_eval": len(evals), "seed": cfg.seed, "dtype": cfg.dtype,
            "w_bits": cfg.w_bits, "a_bits": cfg.a_bits, "epochs": cfg.epochs,
            "states_per_rollout": cfg.states_per_rollout, "batch": cfg.batch,
            "sampler": dataclasses.asdict(settings), "chat": True,
            "answer_rule": "fairref.eval.math_answers v1"}


def claim_out(cfg: ReproConfig, record: dict) -> None:
    """Write ``out/run.json``, or check that an earlier run there had the same record."""
    run_file = cfg.out / "run.json"
    if cfg.out.exists() and not cfg.out.is_dir():
        raise FileExistsError(f"--out {cfg.out} is a file; give a folder")
    if cfg.out.is_dir() and any(cfg.out.iterdir()) and not run_file.is_file():
        raise FileExistsError(f"--out {cfg.out} is a non-empty folder that holds no run of "
                              "this script (no run.json); choose an empty or new folder")
    if run_file.exists():
        old = read_json(run_file, "run record")
        if old.get("record") != record:
            if not cfg.force:
                keys = sorted(k for k in record if old.get("record", {}).get(k) != record[k])
                raise ValueError(f"--out {cfg.out} holds a run with other settings "
                                 f"({', '.join(keys) or 'record'} differ); rerun with the "
                                 "same flags to resume, pass --force to discard it, or "
                                 "choose another --out")
            for sub in ("methods", "cache"):
                shutil.rmtree(cfg.out / sub, ignore_errors=True)
    write_text_atomic(run_file, json.dumps({"record": record, "model_dir": str(cfg.model),
                                            "data": str(cfg.data), "calib": None if
                                            cfg.calib is None else str(cfg.calib)},
                                           indent=1) + "\n")


def finished(cfg: ReproConfig, method: str, record: dict) -> bool:
    file = cfg.out / "methods" / f"{method}.json"
    return file.is_file() and read_json(file, "method result").get("record") == record


def run(cfg: ReproConfig, log=print) -> dict:
    """Everything of the module docstring; returns the results written to results.json."""
    for m in cfg.methods:
        get_method(m)  # an unknown name lists the known ones
    flat = [m for m in cfg.methods if get_method(m).solver == "flat"]
    if cfg.dtype != "float32" and flat:
        raise ValueError(f"--dtype {cfg.dtype}: the flat solver of {', '.join(flat)} trains "
                         "on float32 blocks and fails on a lower-precision model; use --dtype "
                         "float32 (32 GB per copy of an 8B model) or drop those methods")
    if not cfg.model.is_dir():
        raise FileNotFoundError(f"--model {cfg.model}: no such directory; give a local "
                                "LLaDA-8B-Instruct or Dream-v0-Instruct-7B directory")
    tok = load_tokenizer(cfg.model)
    if tok.chat_format is None:
        raise ValueError(f"--model {cfg.model}: its tokenizer_config.json has no chat_template "
                         "of LLaDA-Instruct's or Dream-Instruct's kind; give the instruct "
                         "model's directory (the prompts are chat turns)")
    family = "dream" if isinstance(read_config(cfg.model), DreamConfig) else "llada"
    settings = sampler_settings(family, cfg.sampler)
    calib, evals = load_problems(cfg)
    record = run_record(cfg, family, settings, calib, evals)
    claim_out(cfg, record)
    pending = [m for m in cfg.methods if not finished(cfg, m, record)]
    for m in cfg.methods:
        if m not in pending:
            log(f"{m}: finished earlier with the same settings, skipped")
    if pending:
        run_methods(cfg, record, tok, settings, calib, evals, pending, log)
    results = assemble(cfg, record)
    write_text_atomic(cfg.out / "results.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(cfg.out / "results.md", markdown(results) + "\n")
    return results


def run_methods(cfg: ReproConfig, record: dict, tok, settings: SamplerSettings, calib,
                evals, pending: list[str], log) -> None:
    """Calibrate and evaluate each pending method, reusing (or making) the caches."""
    device = torch.device(cfg.device)
    teacher = load(cfg.model, dtype=DTYPES[cfg.dtype], device=device)
    fmt = PromptFormat(chat=True)
    ids, attn = encode_prompts(tok, [p.question for p in evals], fmt)  # (N, P)
    ids, attn = ids.to(device), None if attn is None else attn.to(device)
    scoring = dict(attention_mask=attn, problems=evals, decode=text_decoder(tok),
                   check=is_correct, eos_token_id=tok.eos_token_id, seed=cfg.seed,
                   chunk=cfg.batch, batch_size=cfg.batch)
    t_dir, d_dir = cfg.out / "cache" / "teacher_eval", cfg.out / "cache" / "stage1"
    if not t_dir.is_dir():
        log(f"teacher rollouts on {len(evals)} evaluation problems")
        save_traces(teacher_eval_traces(teacher, ids, settings, attention_mask=attn,
                                        chunk=cfg.batch, seed=cfg.seed), t_dir)
    traces = load_traces(t_dir)
    fp = evaluate(teacher, {}, ids, settings, teacher_traces=traces, **scoring).models["FP"]
    write_text_atomic(cfg.out / "cache" / "fp.json", json.dumps(
        {k: v for k, v in fp.to_dict(seed=cfg.seed).items() if k != "seconds"}, indent=1)
        + "\n")
    data = None
    if any(get_method(m).needs_data for m in pending):
        if not d_dir.is_dir():
            log(f"Stage I on {len(calib)} calibration problems")
            c_ids, c_attn = encode_prompts(tok, [p.question for p in calib], fmt)  # (C, P')
            save_calib_data(stage1(teacher, c_ids.to(device), None if c_attn is None
                                   else c_attn.to(device), settings, cfg), d_dir)
        data = load_calib_data(d_dir, device)  # the cached bytes, as a resume sees them
    for m in progress_bar(pending, desc="methods", unit="method"):
        log(f"{m}: calibrating and evaluating")
        cal = quantize(teacher, m, data, cfg)
        res = evaluate(teacher, {m: cal.model}, ids, settings, teacher_traces=traces,
                       **scoring).models[m]
        out = {"record": record, "method": cal.description(),
               "calib_seconds": round(cal.seconds, 2), "device": str(device),
               "eval": res.to_dict(seed=cfg.seed),
               "outcomes": {k: v.tolist() for k, v in per_problem(res).items()}}
        write_text_atomic(cfg.out / "methods" / f"{m}.json",
                          json.dumps(out, indent=1, allow_nan=False) + "\n")
        del cal, res  # one quantized copy at a time


#: paired outcome → the sign of a difference fair − other that favours fair
FAVOURS = {"correct": +1, "token_flips": -1, "mismatched": -1}


def assemble(cfg: ReproConfig, record: dict) -> dict:
    """results.json from run.json, cache/fp.json and methods/*.json (no recomputation)."""
    methods = {m: read_json(cfg.out / "methods" / f"{m}.json", "method result")
               for m in cfg.methods}
    fp = read_json(cfg.out / "cache" / "fp.json", "teacher result")
    rows = {"FP": {"accuracy": fp["accuracy"]["accuracy"]}}
    for m, r in methods.items():
        e = r["eval"]
        rows[m] = {"accuracy": e["accuracy"]["accuracy"],
                   "token_flip": e["teacher_forced"]["frontier_token_flip"],
                   "set_flip": e["teacher_forced"]["frontier_set_flip"],
                   "masked_kl": e["teacher_forced"]["masked_kl"],
                   "mismatch": e["mismatch"]["post_commit_mismatch"],
                   "calib_seconds": r["calib_seconds"], "description": r["method"]}
    paired = {}
    if FAIR in methods:
        for m in methods:
            if m != FAIR:
                paired[m] = {k: paired_comparison(methods[FAIR]["outcomes"][k],
                                                  methods[m]["outcomes"][k],
                                                  seed=cfg.seed).to_dict() for k in FAVOURS}
    return {"record": record, "models": rows, "paired": paired}


def _rate(d, digits: int = 3) -> str:
    if not isinstance(d, dict) or d.get("value") is None:
        return "n/a"
    lo, hi = d["ci95"]
    return f"{d['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(r: dict) -> str:
    rec = r["record"]
    s = rec["sampler"]
    lines = [f"# W{rec['w_bits']}A{rec['a_bits']} on {rec['family']} "
             f"({rec['n_eval']} math word problems)", "",
             f"Calibration: {rec['n_calib']} problems (Stage I rollouts, "
             f"{rec['states_per_rollout']} states each; flat solver {rec['epochs']} epochs); "
             f"evaluation: {rec['n_eval']} held-out problems; seed {rec['seed']}; weights "
             f"loaded as {rec['dtype']}; sampler " + ", ".join(f"{k}={v}" for k, v in s.items())
             + ". Generated by `paper_repro/llada_dream_w4a4.py`.", "",
             "Cells: value [95% bootstrap interval over problems]. token/set flip: frontier "
             "flip rates (teacher-forced); KL: masked KL (nats); mismatch: post-commit "
             "mismatch (own rollouts, after the teacher's EOS excluded).", "",
             "| model | accuracy | token flip | set flip | masked KL | mismatch | calib s |",
             "|---|---|---|---|---|---|---|"]
    for m, row in r["models"].items():
        cells = [_rate(row.get(k), 4 if k != "accuracy" else 3) if k in row else "—"
                 for k in ("accuracy", "token_flip", "set_flip", "masked_kl", "mismatch")]
        sec = f"{row['calib_seconds']:.0f}" if "calib_seconds" in row else "—"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {sec} |")
    if r["paired"]:
        lines += ["", f"Paired tests, {FAIR} − other on per-problem outcomes (mean difference "
                  "[95% bootstrap CI], sign-test p; for accuracy positive favours fair, for "
                  "flips and mismatches negative does):", ""]
        lines += paired_table(r["paired"], "other")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from fairref.cli import non_negative_float, positive_int

    ap = argparse.ArgumentParser(
        prog="llada_dream_w4a4.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\nRun:")[0])
    ap.add_argument("--model", type=Path, required=True, metavar="DIR",
                    help="local LLaDA-8B-Instruct or Dream-v0-Instruct-7B directory")
    ap.add_argument("--data", type=Path, required=True, metavar="FILE.jsonl",
                    help='problems, one {"question": ..., "answer": "... #### 42"} per line')
    ap.add_argument("--calib", type=Path, metavar="FILE.jsonl",
                    help="calibration problems from this file instead of --data")
    ap.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="results folder (resumable: rerun the same command to continue)")
    d = ReproConfig.__dataclass_fields__
    ap.add_argument("--n-calib", type=positive_int, default=d["n_calib"].default,
                    help="calibration problems (default: %(default)s)")
    ap.add_argument("--n-eval", type=positive_int, default=d["n_eval"].default,
                    help="evaluation problems (default: %(default)s)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), metavar="NAME",
                    help="SPEC §4.4 methods (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    ap.add_argument("--dtype", choices=list(DTYPES), default=d["dtype"].default,
                    help="dtype the weights are loaded in (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    ap.add_argument("--epochs", type=positive_int, default=d["epochs"].default,
                    help="flat solver epochs per block (default: %(default)s)")
    ap.add_argument("--states", type=positive_int, default=d["states_per_rollout"].default,
                    help="calibration states per rollout, SPEC §4.1 (default: %(default)s)")
    ap.add_argument("--batch", type=positive_int, default=d["batch"].default,
                    help="prompts per sampler call and states per teacher-forced pass: the "
                         "memory knob (default: %(default)s)")
    g = ap.add_argument_group("sampler overrides (defaults: the published settings above)")
    g.add_argument("--steps", type=positive_int)
    g.add_argument("--gen-length", type=positive_int)
    g.add_argument("--block-length", type=positive_int, help="LLaDA only")
    g.add_argument("--temperature", type=non_negative_float)
    g.add_argument("--remasking", choices=["low_confidence", "random"], help="LLaDA only")
    g.add_argument("--alg", choices=["origin", "maskgit_plus", "topk_margin", "entropy"],
                   help="Dream only")
    g.add_argument("--top-p", type=float, help="Dream only")
    ap.add_argument("--force", action="store_true",
                    help="discard an earlier run in --out made with other settings")
    return ap


def config_from_args(args: argparse.Namespace) -> ReproConfig:
    from fairref.cli.common import _device

    _device(args.device)  # cuda without CUDA: one clear error before any work
    sampler = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    return ReproConfig(model=args.model, data=args.data, out=args.out, calib=args.calib,
                       n_calib=args.n_calib, n_eval=args.n_eval,
                       methods=tuple(dict.fromkeys(args.methods)), seed=args.seed,
                       dtype=args.dtype, device=args.device, epochs=args.epochs,
                       states_per_rollout=args.states, batch=args.batch, sampler=sampler,
                       force=args.force)


def main(argv=None) -> int:
    """Run from the command line; bad input is one ``error:`` line and status 2."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        results = run(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except KeyboardInterrupt:  # finished methods and caches stay: rerun to resume
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(markdown(results))
    print(f"\nwrote {cfg.out / 'results.json'} and {cfg.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
