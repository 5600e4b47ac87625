"""Cost of one evaluation with reused logits against the plain path (fairref.eval.logit_cache).

``fairref.eval.run.evaluate`` on the shipped LLaDA toy (semi-AR, as shipped) against two
data-free students (the ``rtn`` preset at W4A4 and W4A8), on held-out problems of every
task: once with
``reuse_logits=False`` (every forward pass run: the teacher again for each student's
teacher-forced pass, each student's rollout from scratch) and once with the default
``reuse_logits=True``. The two are run alternately, ``--repeats`` times each, and each is
reported as the median. One intra-op thread (``torch.set_num_threads(1)``), timed in CPU
time of that thread (``time.thread_time``) so that other processes on the machine do not
count. The results of both paths are compared too (they are equal wherever the matrix
multiply is batch-invariant, as on the CPUs this was measured on); the number of model rows
each path ran is printed.

Usage: ``python benchmarks/eval_reuse.py [--problems 100] [--repeats 3]``.
Last line: ``eval_reuse_vs_plain_time_ratio R``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fairref.diffusion import load_generation_config
from fairref.eval.run import evaluate
from fairref.fair.pipeline import calibrate
from fairref.models import load
from fairref.toy import checkpoint_dir
from fairref.toy.char_tokenizer import EOS_ID, decode_completion, encode_prompts
from fairref.toy.tasks import TASKS, check, distinct_problems


class Counted:
    """``model`` with the rows its ``logits`` ran counted (attributes delegated)."""

    def __init__(self, model):
        self.__wrapped__ = model
        self.rows = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["__wrapped__"], name)

    def logits(self, x, attention_mask=None):
        self.rows += x.shape[0]
        return self.__wrapped__.logits(x, attention_mask=attention_mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100, help="held-out problems per task")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = load(checkpoint_dir("llada")).eval()
    settings = load_generation_config(checkpoint_dir("llada"), "llada")[0]
    problems = [(t, p) for t in TASKS
                for p, _ in distinct_problems(t, args.problems, 1, "heldout")]
    ids = encode_prompts([p for _, p in problems])
    students = {f"rtn-w4a{a}": calibrate(teacher, "rtn", w_bits=4, a_bits=a).model
                for a in (4, 8)}

    def one(reuse: bool):
        t = Counted(teacher)
        s = {k: Counted(v) for k, v in students.items()}
        t0 = time.thread_time()
        res = evaluate(t, s, ids, settings, problems=problems, decode=decode_completion,
                       check=lambda pr, text: check(pr[0], pr[1], text), eos_token_id=EOS_ID,
                       reuse_logits=reuse)
        dt = time.thread_time() - t0
        rows = t.rows + sum(v.rows for v in s.values())
        summary = {k: v.summary() for k, v in res.models.items()}
        return dt, rows, summary

    times = {False: [], True: []}
    rows, summaries = {}, {}
    for _ in range(args.repeats):
        for reuse in (False, True):
            dt, rows[reuse], summaries[reuse] = one(reuse)
            times[reuse].append(dt)
    plain, reused = statistics.median(times[False]), statistics.median(times[True])
    print(f"LLaDA toy, {settings.steps} steps, block {settings.block_length}; "
          f"{len(problems)} held-out problems, students {', '.join(students)}; "
          f"torch.set_num_threads(1), CPU seconds (median of {args.repeats})")
    print(f"plain:  {plain:.2f} s, {rows[False]} model rows")
    print(f"reused: {reused:.2f} s, {rows[True]} model rows")
    print(f"same results: {summaries[False] == summaries[True]}")
    print(f"eval_reuse_vs_plain_time_ratio {reused / plain:.3f}")


if __name__ == "__main__":
    main()
