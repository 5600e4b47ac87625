"""``fairref probe``: Stage I, the position prior of SPEC §3."""

from __future__ import annotations

import argparse
from pathlib import Path

from fairref.cli.common import (_add_prior_options, _add_run_options, _check_out, _device,
                                _load_teacher, _prior_config, _prompts, _settings)


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
