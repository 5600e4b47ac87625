"""What the commands share: flag types, the run options, device and output checks, the
teacher, its sampler settings and prompts, the prior options (see ``fairref.cli``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NoReturn

#: exceptions that are the user's to fix (see ``fairref.cli``): one line, exit 2
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
