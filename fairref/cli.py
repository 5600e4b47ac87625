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


_COMMANDS = {"golden": (_add_golden, _run_golden), "generate": (_add_generate, _run_generate),
             "demo": (_add_demo, _run_demo)}


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
