"""The ``fairref`` command line (SPEC §8). argparse lives only here.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int``; the
run function imports the library lazily so ``fairref --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
    from fairref.quant import golden

    if args.out is not None:
        if args.out.exists() and not args.force:
            print(f"error: {args.out} exists; pass --force to overwrite it", file=sys.stderr)
            return 2
        n = golden.write_vectors(args.out)
        print(f"wrote {n} test vectors to {args.out}")
        return 0
    if not args.verify.is_file():
        print(f"error: no vectors file at {args.verify}", file=sys.stderr)
        return 2
    report = golden.verify_vectors(args.verify)
    if report.failed:
        ids = ", ".join(str(t) for t in report.failed)
        print(f"FAIL: {len(report.failed)} of {report.total} vectors disagree: tcId {ids}")
        return 1
    print(f"OK: all {report.total} vectors in {args.verify} verified")
    return 0


_COMMANDS = {"golden": (_add_golden, _run_golden)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairref",
        description="FAIR-Calib reference implementation: post-training quantization "
        "for diffusion LLMs (LLaDA, Dream).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _COMMANDS[args.command][1](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
