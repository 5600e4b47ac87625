"""``fairref golden`` (the SPEC §1 golden vectors) and ``fairref generate`` (sampling)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fairref.cli.common import non_negative_float, positive_int


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
