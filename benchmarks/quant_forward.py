"""Cost of the fake-quant W4A4 + Hadamard forward against the full-precision one (SPEC §1).

Loads the shipped LLaDA toy (``fairref.toy.checkpoint_dir("llada")``, float32), builds a
copy whose every block linear is a library ``QuantLinear`` (RTN, W4 per output channel,
A4 per token, block-wise Hadamard rotation: ``fairref.quant.quantize_linears``), and times
``model.logits`` of both on the same inputs: 64 held-out toy prompts (16 of each task),
each followed by 16 mask tokens. The two paths are timed interleaved (FP, W4A4, FP, …) so
that a change in machine load hits both; each is reported as the median over the repeats.
One intra-op thread (``torch.set_num_threads(1)``): every operation runs on the calling
thread, so its CPU time (``time.thread_time``) is the forward's cost even when other
processes share the cores, where wall time would also count their time slices. Both are
printed; the ratio of the last line is of CPU times. Target: ratio ≤ 1.3.

Usage: ``python benchmarks/quant_forward.py [--repeats 15]``.
Last line: ``w4a4_vs_fp_forward_ratio R``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from fairref.models import load
from fairref.quant import QuantSpec, quantize_linears
from fairref.toy import checkpoint_dir
from fairref.toy.char_tokenizer import GEN_LEN, encode_prompts
from fairref.toy.tasks import TASKS, make_problems

N_PROMPTS = 64  # toy prompts in the batch, split evenly over the tasks
SEED = 0  # held-out problems drawn with this seed


def w4a4_hadamard_copy(model):
    """A deep copy of ``model`` with every block linear an RTN W4A4 Hadamard QuantLinear."""
    q_model = copy.deepcopy(model)
    names = [f"{l}.{n}" for l in range(len(q_model.blocks))
             for g in q_model.linear_groups() for n in g]
    quantize_linears(q_model.blocks, names, QuantSpec(bits=4, granularity="channel"),
                     QuantSpec(bits=4, granularity="token"), rotation_kind="hadamard")
    return q_model.eval()


def inputs(mask_id: int) -> torch.Tensor:
    """(B, P + G) ids: the prompts of N_PROMPTS held-out problems, then G masks."""
    per_task = N_PROMPTS // len(TASKS)
    prompts = [p for t in TASKS for p, _ in make_problems(t, per_task, SEED, split="heldout")]
    ids = encode_prompts(prompts)  # (B, P)
    return torch.cat([ids, torch.full((ids.shape[0], GEN_LEN), mask_id)], dim=1)  # (B, L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fp = load(checkpoint_dir("llada")).eval()
    q = w4a4_hadamard_copy(fp)
    x = inputs(fp.mask_token_id)
    cpu: dict[str, list[float]] = {"fp32": [], "w4a4_hadamard": []}
    wall: dict[str, list[float]] = {"fp32": [], "w4a4_hadamard": []}
    with torch.no_grad():
        for model in (fp, q):
            model.logits(x)  # warm-up: allocations, cached Hadamard factors
        for _ in range(args.repeats):
            for name, model in (("fp32", fp), ("w4a4_hadamard", q)):
                c0, w0 = time.thread_time(), time.perf_counter()
                model.logits(x)
                cpu[name].append(time.thread_time() - c0)
                wall[name].append(time.perf_counter() - w0)
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    print(f"LLaDA toy (d={fp.config.d_model}, {len(fp.blocks)} blocks), input {tuple(x.shape)}, "
          f"torch.set_num_threads(1), median of {args.repeats} interleaved repeats")
    for name in cpu:
        print(f"{name:14s} cpu {med_cpu[name] * 1e3:8.1f} ms   wall {med_wall[name] * 1e3:8.1f} ms")
    print(f"wall-time ratio {med_wall['w4a4_hadamard'] / med_wall['fp32']:.3f}")
    print(f"w4a4_vs_fp_forward_ratio {med_cpu['w4a4_hadamard'] / med_cpu['fp32']:.3f}")


if __name__ == "__main__":
    main()
