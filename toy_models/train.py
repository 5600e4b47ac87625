"""Train a toy masked-diffusion LM on the task mixture (SPEC §2, §7; LLaDA SFT objective).

Objective (LLaDA SFT, Nie et al. 2025, Eq. (5) restricted to the response): for a clean
sequence x0 = [prompt; answer] draw one mask ratio t ~ U(eps, 1) per sequence, mask each
answer token independently with probability t (the prompt is never masked), and minimise

    L = (1 / (B G)) Σ_b Σ_{i masked} −log p(x0_i | x_t) / t_b,

the 1/t weight that makes L an upper bound on the negative log-likelihood. The model is seen
only through ``model.logits`` (SPEC §2), whose row i predicts token i for both LLaDA and
Dream, so the same code trains both architectures.

Reproducibility: ``torch.manual_seed(seed)`` fixes the initialisation and the mask draws come
from one ``torch.Generator``; the problems of step s come from ``make_problems`` seeded by
(seed, s). Matmuls run under bf16 autocast (AMX on this CPU makes them ~4x faster); the
master weights and the loss are float32. The checkpoint is written through
``fairref.models.save`` with bf16 weights, and those stored weights are the full-precision
reference every evaluation uses.

Legend: B batch, P prompt length, G generation length, L = P + G, V vocabulary size.

Usage: ``python toy_models/train.py --arch llada --out toy_models/llada_toy [--steps N]``;
``--init DIR`` continues from a saved checkpoint (a second phase with its own warm-up and
cosine schedule; its ``train_config.json`` records the previous phase).
"""

from __future__ import annotations

from pathlib import Path


import argparse
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fairref.toy.char_tokenizer import (
    MASK_ID,
    PROMPT_LEN,
    encode_answers,
    encode_prompts,
)
from fairref.toy.tasks import TASKS, make_problems


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run."""

    arch: str  # "llada" or "dream" (the preset in fairref.toy.presets)
    steps: int = 1000  # optimizer steps (~20 min per model on a contended core)
    batch_size: int = 96  # sequences per step, split over the tasks by task_weights
    task_weights: tuple[int, ...] = (1,) * len(TASKS)  # relative share of each task in TASKS
    lr: float = 2.5e-3  # peak AdamW learning rate (tiny models tolerate a high rate)
    min_lr_ratio: float = 0.05  # cosine schedule ends at lr * min_lr_ratio
    warmup: int = 100  # linear warm-up steps
    weight_decay: float = 0.05  # AdamW decoupled weight decay (matrices only)
    beta2: float = 0.98  # AdamW beta2 (beta1 = 0.9); 0.98 is steadier for short runs
    grad_clip: float = 1.0  # global grad-norm clip
    eps: float = 1e-3  # smallest mask ratio t, keeps the 1/t weight finite
    seed: int = 0  # seeds the initialisation, the mask draws and the data stream
    bf16_autocast: bool = True  # run matmuls in bf16 (weights and loss stay float32)

    def __post_init__(self) -> None:
        if self.arch not in ("llada", "dream"):
            raise ValueError(f"arch must be 'llada' or 'dream', got {self.arch!r}")
        if self.steps < 1:
            raise ValueError(f"need steps >= 1, got steps={self.steps}")
        if (len(self.task_weights) != len(TASKS) or min(self.task_weights) < 0
                or sum(self.task_weights) < 1):
            raise ValueError(
                f"task_weights needs one integer >= 0 per task {TASKS}, not all 0 "
                f"(0 leaves a task out of this phase), got {self.task_weights}"
            )
        if self.batch_size < sum(self.task_weights):
            raise ValueError(
                f"batch_size={self.batch_size} is smaller than sum(task_weights)="
                f"{sum(self.task_weights)}: every weighted task needs a row per step"
            )
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(frac, 1.0)))


def batch_problems(cfg: TrainConfig, step: int) -> list[tuple[str, str]]:
    """The training problems of ``step``: the batch split over the tasks in proportion to
    ``cfg.task_weights`` (whole units of ``batch_size // sum(weights)`` rows each, the
    remainder one row at a time to the first tasks), each task's share drawn with seed
    (cfg.seed, step)."""
    unit, r = divmod(cfg.batch_size, sum(cfg.task_weights))
    out: list[tuple[str, str]] = []
    weighted = [(task, w) for task, w in zip(TASKS, cfg.task_weights) if w > 0]
    for k, (task, w) in enumerate(weighted):
        out += make_problems(task, unit * w + (k < r), seed=cfg.seed * 1_000_003 + step)
    return out


def encode_batch(problems: list[tuple[str, str]]) -> Tensor:
    """Clean sequences x0 ``(B, L)``: left-padded prompt then EOS-padded answer."""
    prompts, answers = zip(*problems)
    return torch.cat([encode_prompts(list(prompts)), encode_answers(list(answers))], dim=1)


def diffusion_loss(
    model, x0: Tensor, t: Tensor, u: Tensor, P: int = PROMPT_LEN, mask_id: int = MASK_ID
) -> Tensor:
    """The masked-diffusion loss of the module docstring for clean ``x0`` ``(B, L)``.

    ``t`` ``(B,)`` are the mask ratios and ``u`` ``(B, G)`` uniform draws: answer token i of
    row b is masked iff ``u[b, i] < t[b]``. Passing the draws in keeps this a pure function.
    """
    B, L = x0.shape
    G = L - P
    if t.shape != (B,) or u.shape != (B, G):
        raise ValueError(f"t must be ({B},) and u ({B}, {G}); got {tuple(t.shape)}, {tuple(u.shape)}")
    masked = u < t[:, None]  # (B, G)
    xt = x0.clone()
    xt[:, P:] = torch.where(masked, torch.full_like(x0[:, P:], mask_id), x0[:, P:])
    z = model.logits(xt)[:, P:].float()  # (B, G, V)
    ce = F.cross_entropy(z.reshape(B * G, -1), x0[:, P:].reshape(-1), reduction="none")
    ce = ce.view(B, G)  # (B, G)
    return (ce * masked / t[:, None]).sum() / (B * G)


def train(model, cfg: TrainConfig, log=print, eval_fn=None, eval_every: int = 500):
    """Train ``model`` in place with ``cfg``; ``log`` gets one progress line per 50 steps and
    ``eval_fn(model) -> str`` (optional) is logged every ``eval_every`` steps."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the mask draws
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, cfg.beta2),
    )
    model.train()
    t0, run_loss = time.time(), 0.0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x0 = encode_batch(batch_problems(cfg, step))  # (B, L)
        B, L = x0.shape
        t = cfg.eps + (1 - cfg.eps) * torch.rand(B, generator=gen)  # (B,)
        u = torch.rand(B, L - PROMPT_LEN, generator=gen)  # (B, G)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
            loss = diffusion_loss(model, x0, t, u, mask_id=model.mask_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        run_loss += loss.item()
        if (step + 1) % 50 == 0:
            log(
                f"step {step + 1}/{cfg.steps} loss {run_loss / 50:.4f} "
                f"lr {lr_at(step, cfg):.2e} {time.time() - t0:.0f}s"
            )
            run_loss = 0.0
        if eval_fn is not None and (step + 1) % eval_every == 0:
            model.eval()
            log(f"step {step + 1} eval: {eval_fn(model)}")
            model.train()
    model.eval()
    return model


def main(argv: list[str] | None = None) -> int:
    from fairref.toy.presets import build_toy, save_toy

    ap = argparse.ArgumentParser(description="train a toy masked-diffusion LM (toy_models/README.md)")
    ap.add_argument("--arch", choices=("llada", "dream"), required=True)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--task-weights", type=int, nargs="+", default=list(TrainConfig.task_weights),
                    metavar="W", help=f"relative batch share of each task {TASKS} "
                    "(default: equal)")
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from this checkpoint instead of a fresh initialisation")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        arch=args.arch, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        task_weights=tuple(args.task_weights),
    )
    print(f"config: {asdict(cfg)}", flush=True)
    torch.manual_seed(cfg.seed)
    if args.init is None:
        model = build_toy(cfg.arch)
    else:  # a further training phase: start from the stored (bf16) weights
        from fairref.models import load

        model = load(args.init)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.arch}: {n_params / 1e6:.2f}M parameters", flush=True)

    def progress_eval(m) -> str:
        # imported lazily and guarded: a progress line must never stop a training run
        try:
            from fairref.toy.evaluate import quick_accuracy

            return quick_accuracy(m, n=32, seed=123)
        except Exception as e:  # noqa: BLE001 - progress only
            return f"(evaluation skipped: {type(e).__name__}: {e})"

    t0 = time.time()
    train(model, cfg, log=lambda s: print(s, flush=True), eval_fn=progress_eval,
          eval_every=args.eval_every)
    print(f"trained in {time.time() - t0:.0f}s", flush=True)
    record = {**asdict(cfg), "init": None if args.init is None else str(args.init),
              "train_seconds": round(time.time() - t0)}
    if args.init is not None and (args.init / "train_config.json").is_file():
        record["previous_phase"] = json.loads((args.init / "train_config.json").read_text())
    save_toy(model, cfg.arch, args.out, train_config=record)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
