"""The ``fairref`` command line (SPEC §8). argparse lives only here.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int``,
registered in ``_COMMANDS``; the run function imports the library lazily so
``fairref --help`` stays fast.

How a command reports errors (SPEC §7: no raw traceback reaches a user). A run function
never prints and catches its own failures: it lets the library raise, or raises itself,

- ``ValueError`` for bad input (a config value, a file's content, a flag combination), or
- an ``OSError`` such as ``FileNotFoundError`` / ``FileExistsError`` for paths,

with a message that says what was wrong, where (the file, key or ``--flag``) and how to
fix it. :func:`main` wraps every run in one place: such an exception becomes the single
line ``error: <message>`` on stderr and exit status 2; Ctrl-C prints ``interrupted`` and
exits 130; anything else is a bug and keeps its traceback. Flag values are checked by
argparse ``type=`` functions (:func:`positive_int`, ...), whose errors take the same
one-line form. Exit statuses: 0 success, 1 a negative verdict (``golden --verify`` found
disagreeing vectors), 2 an error the user can fix, 130 interrupted. A new command gets all
of this by being added to ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

#: exceptions that are the user's to fix (see the module docstring): one line, exit 2
EXPECTED_ERRORS = (ValueError, OSError)


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (``--steps 0`` is an error, not "use the default")."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def non_negative_float(text: str) -> float:
    """argparse type: a finite float ≥ 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}") from None
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text!r}")
    return x


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line error format (subparsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _add_golden(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "golden",
        help="write or verify the int4 golden test vectors (SPEC §1)",
        description=(
            "Write Wycheproof-style golden vectors for the quantization conventions of "
            "SPEC §1 (quantize/dequantize, packing, the integer int4 matmul and its "
            "epilogue, GPTQ), or verify this implementation against a vectors file. "
            "With --verify the exit status is non-zero and the failing tcIds are listed "
            "when any vector disagrees."
        ),
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, metavar="FILE", help="write a new vectors file here")
    g.add_argument("--verify", type=Path, metavar="FILE", help="check a vectors file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def _run_golden(args: argparse.Namespace) -> int:
    from fairref.quant import golden, golden_cases

    if args.out is not None:
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a directory; give a file name, e.g. "
                             f"--out {args.out / 'int4_vectors.json'}")
        if args.out.exists() and not args.force:
            raise ValueError(f"{args.out} exists; pass --force to overwrite it")
        n = golden_cases.write_vectors(args.out)  # creates a missing folder
        print(f"wrote {n} test vectors to {args.out}")
        return 0
    report = golden.verify_vectors(args.verify)
    if report.failed:
        ids = ", ".join(str(t) for t in report.failed)
        print(f"FAIL: {len(report.failed)} of {report.total} vectors disagree: tcId {ids}")
        return 1
    print(f"OK: all {report.total} vectors in {args.verify} verified")
    return 0


# --- generate -------------------------------------------------------------------------------

def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text with a LLaDA/Dream checkpoint and its faithful sampler (SPEC §2)",
        description=(
            "Load a local checkpoint directory (config.json, safetensors, tokenizer.json), "
            "append the masked generation region to the prompt and run the public "
            "generation loop of its architecture (LLaDA: blocks + low-confidence remasking; "
            "Dream: timesteps + maskgit_plus/topk_margin/entropy/origin). Prints the "
            "generated text up to the first EOS. Sampler defaults come from the model's "
            "generation_config.json when it has the keys steps / gen_length / "
            "block_length / alg, else from built-in defaults (8 steps, 16 tokens)."
        ),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="checkpoint directory (the LLaDA-8B / Dream-7B layout)")
    p.add_argument("--prompt", required=True, action="append", metavar="TEXT",
                   help="prompt text; repeat the option for a batch of prompts")
    p.add_argument("--steps", type=positive_int, help="total sampling steps")
    p.add_argument("--gen-length", type=positive_int, help="number of tokens to generate")
    p.add_argument("--block-length", type=positive_int,
                   help="LLaDA block length (default: the whole generation region)")
    p.add_argument("--alg", choices=["origin", "maskgit_plus", "topk_margin", "entropy"],
                   help="Dream remasking algorithm")
    p.add_argument("--remasking", choices=["low_confidence", "random"],
                   help="LLaDA remasking strategy (default: low_confidence)")
    p.add_argument("--temperature", type=non_negative_float,
                   help="sampling temperature; 0 is greedy (default: 0)")
    p.add_argument("--chat", action="store_true",
                   help="lay each prompt out as a user turn of the instruct model's chat "
                        "format (LLaDA-Instruct or Dream/Qwen2, read from its "
                        "tokenizer_config.json); an error for a model without one")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    p.add_argument("--trace", type=Path, metavar="FILE",
                   help="also record the sampler trace (SPEC §2) and save it as JSON here")


def _warn_unknown(tok, prompts: list[str]) -> None:
    """Say which parts of a prompt the tokenizer could only map to its unknown token."""
    unk = getattr(tok.tokenizer.model, "unk_token", None)
    for p in prompts:
        enc = tok.tokenizer.encode(p, add_special_tokens=False)
        bad = [p[a:b] for t, (a, b) in zip(enc.tokens, enc.offsets) if unk and t == unk]
        if bad:
            print(f"warning: prompt {p!r}: {bad} are not in the model's vocabulary and were "
                  f"encoded as {unk}", file=sys.stderr)


def _run_generate(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from fairref.diffusion import generate, load_generation_config, sampler_family
    from fairref.models import encode_prompts, load, load_tokenizer

    model = load(args.model)
    tok = load_tokenizer(args.model)
    family = sampler_family(model)
    settings, fmt = load_generation_config(args.model, family)
    fmt = dataclasses.replace(fmt, chat=True) if args.chat else fmt
    flags = {"steps": "--steps", "gen_length": "--gen-length", "block_length": "--block-length",
             "remasking": "--remasking", "alg": "--alg", "temperature": "--temperature"}
    given = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    settings = dataclasses.replace(settings, **given)
    unused = settings.unused_by(family)
    if unused:
        raise ValueError(f"{', '.join(flags[k] for k in unused)}: not an option of the "
                         f"{family} sampler that {args.model} uses; drop it")
    _warn_unknown(tok, args.prompt)
    ids, attn = encode_prompts(tok, args.prompt, fmt)  # (B, P), (B, P) or None
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        out = generate(model, ids, settings, attention_mask=attn, generator=g,
                       record=args.trace is not None)
    x, trace = out if args.trace is not None else (out, None)
    for row in x[:, ids.shape[1]:].tolist():
        if tok.eos_token_id is not None and tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        print(tok.decode(row))
    if trace is not None:
        trace.to_json(args.trace)
        print(f"trace ({trace.x.shape[0]} steps) saved to {args.trace}", file=sys.stderr)
    return 0


# --- shared by probe | calibrate | eval -------------------------------------------------------

#: weight bits SPEC §1 allows; activations also take 16 (= stay in floating point)
BITS = range(2, 9)


def weight_bits(text: str) -> int:
    """argparse type: weight bits b ∈ {2, …, 8} (SPEC §1)."""
    try:
        b = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bits in 2..8, got {text!r}") from None
    if b not in BITS:
        raise argparse.ArgumentTypeError(f"expected bits in 2..8 (SPEC §1 grid), got {b}")
    return b


def activation_bits(text: str) -> int:
    """argparse type: activation bits in {2, …, 8}, or 16 for float activations (W·A16)."""
    try:
        b = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bits in 2..8 or 16, got {text!r}") from None
    if b not in BITS and b != 16:
        raise argparse.ArgumentTypeError(f"expected bits in 2..8, or 16 for float "
                                         f"activations, got {b}")
    return b


def _add_run_options(p: argparse.ArgumentParser, out_help: str, *, prompts: bool = True) -> None:
    """--seed, --device, --force and (unless ``prompts`` is False) --prompts, --n-per-task."""
    if prompts:
        p.add_argument("--prompts", type=Path, metavar="FILE.jsonl",
                       help='JSONL file, one {"prompt": "..."} object per line (eval: with an '
                            'optional "answer"), encoded in the prompt format of the model\'s '
                            "generation_config.json; required unless --model is a shipped toy "
                            "model, whose own task problems are the default")
        p.add_argument("--n-per-task", type=positive_int, default=8, metavar="N",
                       help="toy model without --prompts: problems per task "
                            "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the toy problems, the rollouts and the solver "
                        "(default: %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:i]; the model is moved there")
    p.add_argument("--force", action="store_true", help=out_help)


def _device(name: str):
    """The torch device of ``--device``; a CUDA device without CUDA is an error."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here (torch "
                         f"{torch.__version__}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return device


def _check_out(path: Path, force: bool, flag: str = "--out") -> None:
    """Refuse an existing output unless ``--force``, before any work is done."""
    if path.exists() and not force:
        raise FileExistsError(f"{flag} {path} exists; pass --force to overwrite it, or choose "
                              "another path")


def _load_teacher(path: Path, device):
    """The float model of ``--model`` on ``device`` (a quantized directory, or one with a
    NaN/Inf weight, is refused)."""
    import torch

    from fairref.models import load
    from fairref.models.quantized import is_quantized_dir

    if is_quantized_dir(path):
        raise ValueError(f"--model {path} is a quantized checkpoint; give the float model it "
                         "was calibrated from (pass quantized ones to eval --quantized)")
    model = load(path, device=device)
    for name, t in model.state_dict().items():
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            raise ValueError(f"--model {path}: weight {name} holds {bad} NaN/Inf value(s); the "
                             "checkpoint is corrupt or was saved from a diverged run")
    return model


def _settings(model_dir: Path, model):
    from fairref.diffusion import load_generation_config, sampler_family

    settings, _ = load_generation_config(model_dir, sampler_family(model))
    return settings


def _prompts(args, split: str, device):
    from fairref.prompts import load_prompts

    ps = load_prompts(args.model, split, prompts_file=args.prompts, n_per_task=args.n_per_task,
                      seed=args.seed)
    attn = None if ps.attention_mask is None else ps.attention_mask.to(device)
    return ps, ps.ids.to(device), attn


def _prior_config(args):
    """The PriorConfig of the --beta … --pi-prompt flags (SPEC §3 defaults otherwise)."""
    from fairref.fair import PriorConfig

    flags = ("beta", "phi", "m_min", "window", "reliability", "lam", "pi_min", "pi_max",
             "pi_prompt", "gamma")
    return PriorConfig(**{k: getattr(args, k) for k in flags if getattr(args, k) is not None})


def _add_prior_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prior options (SPEC §3; defaults as there)")
    g.add_argument("--beta", type=float, help="§3.1 band width: next ⌈β·k_t⌉ after F_t (1)")
    g.add_argument("--phi", help="§3.1 fragility φ: inverse_square or one (inverse_square)")
    g.add_argument("--m-min", type=float, help="§3.1 margin floor of φ (0.05)")
    g.add_argument("--window", type=positive_int, help="§3.2 reliability window W (4)")
    g.add_argument("--reliability", help="§3.2 reliability: soft or hard (soft)")
    g.add_argument("--lam", type=float, help="§3.3 weight λ of the frontier term (0.5)")
    g.add_argument("--pi-min", type=float, help="§3.3 lower clip of π (0.25)")
    g.add_argument("--pi-max", type=float, help="§3.3 upper clip of π (4)")
    g.add_argument("--pi-prompt", type=float, help="§3.3 weight of prompt positions (1)")
    g.add_argument("--gamma", type=float, help="§3.4 extra weight (1 + γ) in the band (1)")
    g.add_argument("--rollouts", type=positive_int, default=1,
                   help="rollouts per prompt; more than one only with a random sampler (1)")


# --- probe ----------------------------------------------------------------------------------

def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="Stage I: probe the float teacher for the position prior π (SPEC §3)",
        description=(
            "Roll the full-precision teacher out on the calibration prompts with the sampler "
            "settings of its generation_config.json, recording traces; measure the "
            "fragility-weighted frontier hits (§3.1) and the masked-stage reliability (§3.2) "
            "of every generation position, and combine them into the prior π (§3.3). Writes "
            "the prior, its inputs and settings as one JSON file (atomically) and prints "
            "where π puts its weight. Prompts: a shipped toy model uses N problems per task "
            "of its tasks' TRAIN split (never the held-out problems); any other model needs "
            "--prompts."),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="float checkpoint directory (the teacher)")
    p.add_argument("--out", type=Path, required=True, metavar="PRIOR.json",
                   help="where to write the prior")
    p.add_argument("--save-traces", type=Path, metavar="DIR",
                   help="also write the teacher's traces (SPEC §2) as trace_NNN.json here")
    _add_prior_options(p)
    _add_run_options(p, "overwrite an existing --out file / --save-traces folder")


def _run_probe(args: argparse.Namespace) -> int:
    import torch

    from fairref.fair import estimate_prior
    from fairref.files import atomic_directory

    torch.manual_seed(args.seed)
    _check_out(args.out, args.force)
    if args.save_traces is not None:
        _check_out(args.save_traces, args.force, "--save-traces")
    config = _prior_config(args)
    device = _device(args.device)
    teacher = _load_teacher(args.model, device)
    settings = _settings(args.model, teacher)
    ps, ids, attn = _prompts(args, "train", device)
    with torch.no_grad():
        prior, result = estimate_prior(teacher, ids, settings, config, rollouts=args.rollouts,
                                       seed=args.seed, attention_mask=attn)
    if args.save_traces is not None:
        with atomic_directory(args.save_traces, overwrite=args.force) as tmp:
            for i, tr in enumerate(result.traces):
                tr.to_json(tmp / f"trace_{i:03d}.json")
    prior.save(args.out)
    print(f"probed {ids.shape[0]} prompts ({ps.source}), {len(result.traces)} trace(s)")
    print(_prior_summary(prior))
    print(f"prior written to {args.out}")
    return 0


def _prior_summary(prior) -> str:
    """Where π puts its weight: the largest and smallest positions, the mass by quarter."""
    pi = prior.pi
    G = pi.numel()
    top = sorted(range(G), key=lambda j: (-float(pi[j]), j))[:5]
    quarters = [float(pi[q * G // 4:(q + 1) * G // 4].sum() / pi.sum()) for q in range(4)]
    return (f"π over G = {G} positions: range [{float(pi.min()):.3g}, {float(pi.max()):.3g}], "
            f"largest at j = " + ", ".join(f"{j} ({float(pi[j]):.3g})" for j in top)
            + "; share of Σπ by quarter of the generation: "
            + " / ".join(f"{q:.0%}" for q in quarters))


# --- calibrate ------------------------------------------------------------------------------

def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="Stage II: quantize a float model by a named method (SPEC §4, §7)",
        description=(
            "Quantize every linear inside the transformer blocks of --model at "
            "W<w-bits>A<a-bits> by one named method of SPEC §4.4 (rtn, gptq, quarot, "
            "flatquant, masked-uniform[-gptq], fair[-gptq] and the fair-* ablations), through fairref.fair.pipeline: Stage I on the calibration prompts (teacher "
            "rollouts, the prior, the teacher states of §4.1 and the plain inputs), then the "
            "§4.2 block loop. Writes a quantized checkpoint directory (§7) atomically. "
            "Prompts as for probe (toy default: the TRAIN split). Methods weighted by a "
            "prior (fair*) use --prior when given, else the prior Stage I computes from the "
            "same calibration prompts with the SPEC §3 defaults; --prior given to a method "
            "without prior weights is an error. Progress is saved after each block in "
            "OUT.partial/; --resume continues an interrupted run to the same bytes."),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR",
                   help="float checkpoint directory (the teacher)")
    p.add_argument("--method", required=True, metavar="NAME",
                   help="calibration method of SPEC §4.4, e.g. fair, masked-uniform, gptq, "
                        "rtn (an unknown name lists them all)")
    p.add_argument("--prior", type=Path, metavar="PRIOR.json",
                   help="prior from `fairref probe` (fair* methods; default: computed here)")
    p.add_argument("--w-bits", type=weight_bits, default=4,
                   help="weight bits, 2..8 (default: %(default)s)")
    p.add_argument("--a-bits", type=activation_bits, default=4,
                   help="activation bits, 2..8, or 16 to keep activations in floating point "
                        "(default: %(default)s)")
    p.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                   help="SmoothQuant before the rtn / gptq solvers: fold ζ with migration "
                        "strength ALPHA in [0, 1] (0.5 is SmoothQuant's default) into each "
                        "norm and the linears it feeds (SPEC §4.4); off by default")
    p.add_argument("--out", type=Path, required=True, metavar="QDIR",
                   help="quantized checkpoint directory to write")
    p.add_argument("--format", choices=("fairref", "compressed-tensors"), default="fairref",
                   help="fairref: SPEC §7 (default); compressed-tensors: its pack-quantized "
                        "layout (fairref/export.py), for methods without a rotation or learned "
                        "transform (e.g. gptq); other methods are refused before calibrating")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run saved in QDIR.partial/ (same settings "
                        "required; the result is byte-identical to an uninterrupted run)")
    p.add_argument("--stream", action="store_true",
                   help="layer streaming: after Stage I, read one block at a time from "
                        "--model's shards and write each quantized block before the next "
                        "(resident: embedding, head, one block); same bytes as without")
    p.add_argument("--epochs", type=positive_int, default=15,
                   help="flat solver: epochs per block (default: %(default)s, SPEC §4.3d)")
    p.add_argument("--batch", type=positive_int, default=4,
                   help="flat solver: states per optimizer step (default: %(default)s)")
    p.add_argument("--states", type=positive_int, default=4, metavar="S",
                   help="calibration states per rollout, SPEC §4.1 (default: %(default)s)")
    p.add_argument("--rollouts", type=positive_int, default=1,
                   help="rollouts per prompt; more than one only with a random sampler (1)")
    _add_run_options(p, "overwrite an existing --out directory (and discard a saved partial "
                        "run unless --resume)")


def _inputs_hash(args, method, settings, ids, prior_file) -> str:
    """SHA-256 of everything that determines the checkpoint: the teacher's files, the
    prompts' ids, the sampler, method, bits, solver and prior settings, the seed."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256()
    for f in sorted(args.model.iterdir()):
        if f.name in ("config.json", "model.safetensors.index.json") or f.suffix == ".safetensors":
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    h.update(ids.cpu().numpy().tobytes())
    if prior_file is not None:
        h.update(Path(prior_file).read_bytes())
    record = {"method": dataclasses.asdict(method), "w_bits": args.w_bits,
              "a_bits": args.a_bits, "epochs": args.epochs, "batch": args.batch,
              "states": args.states, "rollouts": args.rollouts, "seed": args.seed,
              "smooth": args.smooth,
              "sampler": dataclasses.asdict(settings), "shape": list(ids.shape)}
    h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _resume_blocks(partial: Path, inputs_hash: str, device) -> list:
    """The blocks an interrupted run saved in ``partial``, if its inputs were the same."""
    from fairref.files import read_json
    from fairref.models import load

    if not partial.is_dir():
        raise FileNotFoundError(f"--resume: no interrupted run at {partial}; run without "
                                "--resume to start one")
    qc = read_json(partial / "config.json", "partial checkpoint config").get(
        "quantization_config") or {}
    state = (qc.get("method") or {}).get("partial") or {}
    if state.get("inputs_hash") != inputs_hash:
        raise ValueError(f"--resume: {partial} was written with other settings or inputs "
                         "(model, prompts, method, bits, solver options, prior or seed differ); "
                         "rerun with the original flags, or pass --force without --resume to "
                         "start over")
    done = state.get("blocks_done")
    model = load(partial, device=device)
    if not isinstance(done, int) or not 0 < done <= len(model.blocks):
        raise ValueError(f"--resume: {partial}/config.json has no valid blocks_done "
                         f"({done!r}); pass --force without --resume to start over")
    return [model.blocks[l] for l in range(done)]


def _given_prior(args, settings):
    """The --prior file, checked against the generation length it must cover."""
    from fairref.fair import Prior

    prior = Prior.load(args.prior)
    if prior.pi.numel() != settings.gen_length:
        raise ValueError(f"--prior {args.prior} covers {prior.pi.numel()} generation "
                         f"positions but {args.model} generates gen_length = "
                         f"{settings.gen_length}; probe this model again")
    return prior


def _write_calibrated(result, args, stream=None) -> None:
    """The quantized checkpoint of ``result`` at --out (atomic), with the prior it used."""
    import tempfile

    from fairref.models.quantized import save_quantized

    # the wall time stays out of the checkpoint: same inputs and seed → the same bytes
    desc = result.description()
    if args.format == "compressed-tensors":
        from fairref.export import compressed_tensors_config, export_compressed_tensors

        export_compressed_tensors(result.model, args.out, method=desc, source=args.model,
                                  overwrite=args.force)
        for note in compressed_tensors_config(result.model)[1]:
            print(f"note: {note}")  # also in the exported config.json (fairref_export.notes)
        return
    with tempfile.TemporaryDirectory() as tmp:
        prior_file = None
        if result.prior is not None:  # the prior as the method used it (ablation applied)
            prior_file = Path(tmp) / "prior.json"
            result.prior.save(prior_file)
        if stream is not None:  # the blocks are on disk already: finalise OUT
            stream.save(method=desc, prior_file=prior_file, source=args.model)
            return
        save_quantized(result.model, args.out, method=desc, prior_file=prior_file,
                       source=args.model, overwrite=args.force)


def _run_calibrate(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from fairref.fair import FlatConfig, get_method
    from fairref.fair.pipeline import calibrate, prepare
    from fairref.models.quantized import save_quantized
    from fairref.progress import progress_bar

    torch.manual_seed(args.seed)
    method = get_method(args.method)
    if args.prior is not None and not method.needs_prior:
        raise ValueError(f"--prior: method {method.name!r} does not weight tokens by a prior "
                         "(only the fair* methods do); drop --prior")
    _check_out(args.out, args.force)
    if args.format == "compressed-tensors" and (method.rotation or method.solver == "flat"):
        from fairref.export import transform_refusal

        raise ValueError(f"--format compressed-tensors: method {method.name!r} cannot be exported: "
                         + transform_refusal("kronecker" if method.solver == "flat"
                                             else method.rotation))
    if args.stream and args.format == "compressed-tensors":
        raise ValueError("--stream writes fairref's own format block by block, and "
                         "--format compressed-tensors needs the whole quantized model: drop "
                         "--stream, or drop --format")
    partial = _partial_dir(args.out)
    if partial.exists() and not args.resume and not args.force:
        raise FileExistsError(f"{partial} holds an interrupted run of this output; pass "
                              "--resume to continue it, or --force to start over")
    flat = FlatConfig(epochs=args.epochs, batch=args.batch)  # checks the values
    device = _device(args.device)
    teacher = _load_teacher(args.model, device)
    settings = _settings(args.model, teacher)
    prior = None if args.prior is None else _given_prior(args, settings)
    ps, ids, attn = _prompts(args, "train", device)
    inputs_hash = _inputs_hash(args, method, settings, ids, args.prior)
    resume_blocks = (_resume_blocks(partial, inputs_hash, device)
                     if args.resume and not args.stream else [])
    if partial.exists() and not args.resume:
        shutil.rmtree(partial)  # --force: start over
    if args.smooth is not None and method.solver == "flat":
        raise ValueError(f"--smooth: method {method.name!r} uses the flat solver, which learns "
                         "its own smoothing; use --smooth with rtn, gptq, quarot or *-gptq")
    if args.smooth is not None and not 0.0 <= args.smooth <= 1.0:
        raise ValueError(f"--smooth {args.smooth}: the migration strength must be in [0, 1]")
    data = None
    if method.needs_data or args.smooth is not None:
        with torch.no_grad():
            data = prepare(teacher, ids, settings, states_per_rollout=args.states,
                           rollouts=args.rollouts, seed=args.seed, attention_mask=attn)
    n_blocks = len(teacher.blocks)
    if args.stream:  # Stage I is done: drop the teacher, stream blocks through OUT.partial
        from fairref.models.blocks import StreamingBlocks
        from fairref.quant import QuantSpec

        teacher = StreamingBlocks(args.model, args.out, device=device, resume=args.resume,
                                  run_key=inputs_hash, overwrite=args.force,
                                  w_spec=QuantSpec(bits=args.w_bits), work_dir=partial)
    bar = progress_bar(range(n_blocks), desc=f"calibrate {method.name}", unit="block")

    def on_block(l: int, model) -> None:
        bar.update(1)
        # the partial run already holds resumed blocks; the last block's result is the
        # checkpoint itself
        if len(resume_blocks) <= l < n_blocks - 1 and not args.stream:
            save_quantized(model, partial, overwrite=True, method={"partial": {
                "blocks_done": l + 1, "inputs_hash": inputs_hash, "method": method.name}})

    try:
        result = calibrate(teacher, method, data, prior=prior, w_bits=args.w_bits,
                           a_bits=args.a_bits, flat=flat, seed=args.seed,
                           resume_blocks=resume_blocks, on_block=on_block,
                           smooth_alpha=args.smooth)
    except ValueError:
        # a deterministic failure (NaN/Inf in calibration, ...): resuming would repeat it, so
        # no partial run is left behind; an interruption or an OSError keeps it for --resume
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    _write_calibrated(result, args, teacher if args.stream else None)
    shutil.rmtree(partial, ignore_errors=True)
    took = result.seconds + (data.seconds if data is not None else 0.0)
    done = teacher.n_done if args.stream else len(resume_blocks)
    resumed = f", resumed after block {done}" if done else ""
    print(f"{method.name} at W{args.w_bits}A{args.a_bits} on {ids.shape[0]} prompts "
          f"({ps.source}){resumed}: {took:.1f} s")
    if result.report.block_loss:
        print("block loss L_ℓ: " + ", ".join(f"{x:.4g}" for x in result.report.block_loss))
    print(f"quantized checkpoint written to {args.out}")
    return 0


# --- eval -----------------------------------------------------------------------------------

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


_COMMANDS = {"demo": (_add_demo, _run_demo), "probe": (_add_probe, _run_probe),
             "calibrate": (_add_calibrate, _run_calibrate), "eval": (_add_eval, _run_eval),
             "generate": (_add_generate, _run_generate), "golden": (_add_golden, _run_golden)}


def version() -> str:
    """The installed distribution's version, else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fairref")
    except PackageNotFoundError:
        from fairref import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fairref",
        description="FAIR-Calib reference implementation: post-training quantization "
        "for diffusion LLMs (LLaDA, Dream).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures become one ``error:`` line and status 2."""
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command][1](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; an OSError as "path: reason"."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
