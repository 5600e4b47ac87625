"""What FAIR-Calib's token weights cost in Stage II, next to FlatQuant (SPEC §4.4).

On the shipped LLaDA toy, one Stage I run (``pipeline.prepare`` on ``--per-task``
training prompts per task, the toy's own sampler: its generation_config.json) feeds every method, so all of them see
the same prompts and token count. Stage I is reported in forward passes (counted by a
forward hook on the token embedding: calls and sequences) and seconds. Stage II of
``fair``, ``flatquant`` and ``masked-uniform`` at W4A4 is then timed ``--repeats`` times,
interleaved (fair, flatquant, masked-uniform, fair, …), and each method's median is
reported.

Two ratios, because the methods do not all read the same tensors:

- ``fair / masked-uniform``: the *same* teacher states (§4.1), w from the prior vs w ≡ 1;
  the only difference is the weights, so this isolates their cost.
- ``fair / flatquant``: FlatQuant calibrates on the plain inputs by definition (the same
  prompts and shape, nothing masked); this is the cost a user compares against. It is the
  last line, ``fair_vs_flatquant_time_ratio R`` (target ≤ 1.1: the weights cost nothing).

One intra-op thread (``torch.set_num_threads(1)``). Default (2 prompts per task, so 32
teacher states, 1 flat epoch, 3 repeats): about 1 minute wall on the shared 2-core
machine it was made on, which printed fair 5.48 s, flatquant 6.62 s, masked-uniform
5.60 s, ``fair_vs_masked_uniform_time_ratio 0.978`` and ``fair_vs_flatquant_time_ratio
0.827``. Single runs swing several-fold under load (one niced run at 4 prompts per task
saw 128–301 s for the same work), hence the interleaving and medians. (Measured when the
LLaDA toy decoded in one block; its semi-AR sampler gives Stage II the same number and
shape of states, so the ratios measure the same work.)
Usage: ``python benchmarks/calibration_cost.py [--per-task N] [--epochs E] [--repeats R]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fairref.fair import FlatConfig
from fairref.fair.pipeline import calibrate, prepare
from fairref.models import load
from fairref.toy import checkpoint_dir
from fairref.toy.char_tokenizer import encode_prompts
from fairref.toy.evaluate import toy_sampler
from fairref.toy.tasks import TASKS, make_problems

METHODS = ("fair", "flatquant", "masked-uniform")


class ForwardCounter:
    """Counts forward passes through a model's token embedding: calls and sequences."""

    def __init__(self, model: torch.nn.Module):
        emb = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
        self.calls = self.sequences = 0
        self.handle = emb.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.sequences += int(args[0].shape[0])  # (B, L) token ids

    def remove(self) -> None:
        self.handle.remove()


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-task", type=int, default=2, help="calibration prompts per task")
    ap.add_argument("--epochs", type=int, default=1, help="flat solver epochs")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    teacher = load(checkpoint_dir("llada"))
    prompts = [p for t in TASKS for p, _ in make_problems(t, args.per_task, 0, split="train")]
    ids = encode_prompts(prompts)  # (B, P)
    counter = ForwardCounter(teacher)
    sampler = toy_sampler("llada")
    data = prepare(teacher, ids, sampler)
    counter.remove()
    print(f"stage I: {len(prompts)} prompts, {counter.calls} forward calls, "
          f"{counter.sequences} sequence forwards ({sampler.steps} sampler steps), "
          f"{data.seconds:.2f} s; {data.masked.ids.shape[0]} teacher states and "
          f"{data.plain.ids.shape[0]} plain sequences of length {data.masked.ids.shape[1]}",
          flush=True)
    flat = FlatConfig(epochs=args.epochs)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.repeats):
        for m in METHODS:  # interleaved, so that load changes hit every method alike
            t0 = time.perf_counter()
            calibrate(teacher, m, data, w_bits=4, a_bits=4, flat=flat)
            times[m].append(time.perf_counter() - t0)
        print(f"repeat {r}: " + ", ".join(f"{m} {times[m][-1]:.2f} s" for m in METHODS),
              flush=True)
    med = {m: statistics.median(v) for m, v in times.items()}
    print("stage II median (W4A4, flat solver, "
          f"{args.epochs} epochs): " + ", ".join(f"{m} {med[m]:.2f} s" for m in METHODS))
    print(f"fair_vs_masked_uniform_time_ratio {med['fair'] / med['masked-uniform']:.3f} "
          "(same teacher states; only w differs)")
    ratio = med["fair"] / med["flatquant"]
    print(f"fair_vs_flatquant_time_ratio {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
