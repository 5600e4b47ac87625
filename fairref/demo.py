"""``fairref demo``: the whole pipeline on the shipped toy models, a table and a report (SPEC §8).

For each toy (LLaDA, Dream), at W``w_bits``A``a_bits`` with the methods' Hadamard rotation:

1. calibration prompts from the TRAIN split of every toy task (never held-out), Stage I
   (:func:`fairref.fair.pipeline.prepare`: prior, teacher states, plain inputs), the prior
   saved as JSON and plotted;
2. each method of ``config.methods`` through :func:`fairref.fair.pipeline.calibrate` on the
   same data with the same seed, timed;
3. :func:`fairref.eval.run.evaluate` on held-out problems of every task: the teacher (FP)
   and every method — accuracy, frontier token / set flip rate, masked KL, post-commit
   mismatch, time — and the stability lag on the first ``lag_problems`` problems.

Written into ``out`` (built in a temporary directory, renamed into place at the end):
``results.json`` (everything, with per-problem outcomes for paired tests, the config and
each model's sampler settings: its checkpoint's generation_config.json), ``report.md`` and
its PNG figures. :func:`format_table` gives the table the CLI prints; its numbers come from
``results["table"]`` (both in :mod:`fairref.demo_report`).

Parallelism: the two toys are independent, so each runs in its own process (``workers``,
``spawn``), each with one torch intra-op thread (``threads``, restored afterwards in an
in-process run). On 2 cores this halves the wall time of an idle machine; on a busy one
two single-threaded processes still take their share without waiting for each other. One
thread, because intra-op threads do wait for each other, and the matmuls

are tiny (≤ 64 sequences × 32 tokens × 256 channels): on the shared 2-core machine this
was written on, with other jobs running (load 7–10), one LLaDA-toy forward of 64 sequences
took 0.36–0.39 s of CPU and ~1 s of wall time with 1 thread, and 1.7–2.7 s of CPU and
4–7 s of wall time with 2 (the threads wait for each other). Raise ``threads`` on an
idle many-core machine.

Measured (``fairref demo``, default sizes, on the shared 2-core machine this was written
on): 181 s CPU, 774 s wall at load average 7–9 from other jobs (the run got 23% of a core);
before the LLaDA toy decoded in blocks of 4 it took 183 s CPU (300 s wall at load ~5.6), so
the semi-AR sampler costs the same. The LLaDA process takes about two thirds of the CPU;
with the machine to itself the wall time would be about that process's CPU time, ~2
minutes (an estimate: the machine was never idle).

Seeds: the calibration and held-out problems are drawn with ``config.seed`` (the two splits
are disjoint by construction, ``fairref.toy.tasks``); ``seed`` also seeds the flat solver's
batch order, the rollouts and the bootstrap resamples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fairref.demo_report import format_table, report_markdown
from fairref.files import atomic_directory
from fairref.progress import progress_bar

__all__ = ["DEMO_METHODS", "DemoConfig", "format_table", "report_markdown", "run_demo"]

#: the methods the demo compares (SPEC §4.4), in table order
DEMO_METHODS = ("rtn", "quarot", "flatquant", "masked-uniform", "fair")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and seeds of one demo run; :meth:`small` (the default) and :meth:`full`."""

    models: tuple[str, ...] = ("llada", "dream")  # shipped toys (fairref.toy.checkpoint_dir)
    methods: tuple[str, ...] = DEMO_METHODS  # named methods of SPEC §4.4
    w_bits: int = 4  # weight bits
    a_bits: int = 4  # activation bits (16: activations in floating point)
    calib_per_task: int = 8  # TRAIN-split calibration prompts per task (4 tasks)
    states_per_rollout: int = 2  # S of SPEC §4.1
    flat_epochs: int = 2  # epochs of the flat solver (SPEC §4.3d default: 15)
    flat_batch: int = 4  # states per flat-solver step (SPEC default)
    eval_per_task: int = 24  # HELD-OUT problems per task
    lag_problems: int = 6  # problems whose stability lag is measured (O(G·T) passes each)
    n_resamples: int = 1000  # bootstrap resamples over problems (SPEC §5)
    seed: int = 0  # problems, rollouts, flat batch order, bootstrap
    threads: int = 1  # torch intra-op threads per model (module docstring)
    workers: int = 1  # processes, one model each, at once (1: in this process; presets: 2)

    def __post_init__(self) -> None:
        from fairref.fair import METHODS
        from fairref.toy import TOY_MODELS

        for name in ("calib_per_task", "states_per_rollout", "flat_batch", "eval_per_task",
                     "n_resamples", "threads", "workers", "w_bits", "a_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DemoConfig.{name} must be a positive int, got {v!r}")
        for name in ("flat_epochs", "lag_problems"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"DemoConfig.{name} must be an int >= 0, got {v!r}")
        bad = [m for m in self.models if m not in TOY_MODELS]
        if bad or not self.models:
            raise ValueError(f"DemoConfig.models: unknown toy {bad or '(none given)'}; "
                             f"choose from {', '.join(TOY_MODELS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"DemoConfig.methods: unknown method {bad or '(none given)'}; "
                             f"choose from {', '.join(METHODS)}")

    @classmethod
    def small(cls, **changes) -> "DemoConfig":
        """The default of ``fairref demo``: both toys, one process each (module docstring)."""
        return cls(**{"workers": 2, **changes})

    @classmethod
    def full(cls, **changes) -> "DemoConfig":
        """A thorough run: 64 calibration prompts per task, S = 4, the SPEC's 15 flat
        epochs, 500 held-out problems per task, lag on 32. Estimated from the default's
        timings (120× the flat-solver work, 21× the evaluation), not measured: about 1.5
        hours with two cores."""
        return cls(**{**dict(calib_per_task=64, states_per_rollout=4, flat_epochs=15,
                             eval_per_task=500, lag_problems=32, workers=2), **changes})

    def describe(self) -> str:
        """One line with the sizes, printed before a run."""
        return (f"models {', '.join(self.models)}; W{self.w_bits}A{self.a_bits} + Hadamard "
                f"rotation; methods {', '.join(self.methods)}; calibration "
                f"{self.calib_per_task}/task (train split), S = {self.states_per_rollout} "
                f"states/rollout, flat epochs {self.flat_epochs}; held-out "
                f"{self.eval_per_task}/task, stability lag on {self.lag_problems}; "
                f"seed {self.seed}; {self.workers} process(es) × {self.threads} torch "
                f"thread(s)")


def _problems(config: DemoConfig, split: str, n: int) -> list[tuple[str, str]]:
    """``n`` problems of every task from ``split``, as (task, prompt) in task order."""
    from fairref.toy.tasks import TASKS, make_problems

    return [(task, prompt) for task in TASKS
            for prompt, _ in make_problems(task, n, config.seed, split=split)]


def _check(problem: tuple[str, str], completion: str) -> bool:
    from fairref.toy.tasks import check

    return check(problem[0], problem[1], completion)


def _per_problem(r) -> dict:
    """The per-problem outcomes of one ``ModelResult`` (for paired tests; lists of numbers)."""
    out: dict = {}
    if r.accuracy is not None:
        out["correct"] = r.accuracy.correct.astype(int).tolist()
    tf = r.teacher_forced
    if tf is not None:
        for f in ("token_flips", "frontier_slots", "set_flips", "set_steps", "kl_sum", "kl_slots"):
            out[f] = np.asarray(getattr(tf, f)).tolist()
    if r.mismatch is not None:
        for f in ("mismatched", "counted", "divergence_step"):
            out[f] = np.asarray(getattr(r.mismatch, f)).tolist()
        out["diverged"] = r.mismatch.diverged.astype(int).tolist()
    if r.lag is not None:
        out["lag"] = {f: np.asarray(getattr(r.lag, f)).astype(int).tolist()
                      for f in ("problem", "position", "tau", "lag", "observed")}
    return out


def _row(model: str, method: str, m: dict, calib_s: float | None) -> dict:
    """One table row from a model's ``ModelResult.to_dict()``: value and 95% interval."""
    tf, mm = m.get("teacher_forced"), m.get("mismatch")
    cells = {"accuracy": m["accuracy"]["accuracy"] if "accuracy" in m else None,
             "token_flip": tf["frontier_token_flip"] if tf else None,
             "set_flip": (None if tf is None or tf["frontier_set_flip"] == "n/a"
                          else tf["frontier_set_flip"]),
             "masked_kl": tf["masked_kl"] if tf else None,
             "mismatch": mm["post_commit_mismatch"] if mm else None}
    row = {"model": model, "method": method}
    for key, cell in cells.items():
        row[key] = None if cell is None else cell["value"]
        row[key + "_ci95"] = None if cell is None else cell["ci95"]
    row["calib_seconds"] = None if calib_s is None else round(calib_s, 2)
    row["eval_seconds"] = m["seconds"]
    return row


def _run_model(name: str, config: DemoConfig, tmp: Path, progress) -> tuple[dict, list[dict]]:
    """Stage I, every method and the evaluation of one toy; figures into ``tmp``."""
    from fairref.eval.figures import plot_flip_by_margin, plot_lag_ccdf
    from fairref.eval.run import evaluate
    from fairref.eval.stats import paired_comparison
    from fairref.fair import FlatConfig
    from fairref.fair.pipeline import calibrate, prepare
    from fairref.models import load
    from fairref.toy import checkpoint_dir
    from fairref.toy.char_tokenizer import EOS_ID, decode_completion, encode_prompts
    from fairref.toy.evaluate import describe_sampler, toy_sampler

    say = progress or (lambda _msg: None)
    setting = f"W{config.w_bits}A{config.a_bits} + Hadamard rotation"
    teacher = load(checkpoint_dir(name)).eval()
    sampler = toy_sampler(name)  # the checkpoint's generation_config.json (SPEC §3: the
    # sampler of Stage I is the one used at evaluation)
    calib = _problems(config, "train", config.calib_per_task)
    held = _problems(config, "heldout", config.eval_per_task)

    # 1. Stage I on the calibration prompts (train split)
    data = prepare(teacher, encode_prompts([p for _, p in calib]), sampler,
                   states_per_rollout=config.states_per_rollout, seed=config.seed)
    say(f"{name}: Stage I on {len(calib)} prompts, {data.masked.ids.shape[0]} states "
        f"({data.seconds:.1f} s)")
    data.prior.save(tmp / f"prior_{name}.json")
    data.prior.plot(tmp / f"prior_{name}.png", title=(
        f"{name} toy — Stage I position prior for {setting} calibration "
        f"({len(calib)} train prompts)"))

    # 2. every method on the same data, the same seed
    flat = FlatConfig(epochs=config.flat_epochs, batch=config.flat_batch)
    students, methods = {}, {}
    for method in progress_bar(config.methods, desc=f"{name} calibrate"):
        c = calibrate(teacher, method, data, w_bits=config.w_bits, a_bits=config.a_bits,
                      flat=flat, seed=config.seed)
        # the wall time is kept beside the description, which stays free of it
        students[method] = c.model
        methods[method] = {**c.description(), "seconds": round(c.seconds, 2)}
        say(f"{name}: {method} calibrated ({c.seconds:.1f} s)")

    # 3. held-out evaluation of FP and every method
    t0 = time.perf_counter()
    ev = evaluate(teacher, students, encode_prompts([p for _, p in held]), sampler,
                  problems=held, decode=decode_completion, check=_check, eos_token_id=EOS_ID,
                  lag_problems=config.lag_problems, seed=config.seed)
    say(f"{name}: evaluated on {len(held)} held-out problems ({time.perf_counter() - t0:.1f} s)")
    ev_dict = ev.to_dict(config.n_resamples, config.seed)
    rows = [_row(name, k, v, None if k == "FP" else methods[k]["seconds"])
            for k, v in ev_dict["models"].items()]

    # paired tests over the same problems: the last method (FAIR-Calib) against each other
    ref = config.methods[-1]
    paired = {other: {"accuracy": paired_comparison(
        ev.models[ref].accuracy.correct * 1.0, ev.models[other].accuracy.correct * 1.0,
        config.n_resamples, config.seed).to_dict()} for other in ["FP", *config.methods[:-1]]}

    figures = {"prior": f"prior_{name}.png"}
    tf = {k: v["teacher_forced"]["frontier_token_flip_by_margin"]
          for k, v in ev_dict["models"].items() if "teacher_forced" in v}
    figures["flip_by_margin"] = plot_flip_by_margin(tf, tmp / f"flip_by_margin_{name}.png", (
        f"{name} toy, {setting}: frontier token flip rate by teacher margin "
        f"({len(held)} held-out problems)")).name
    if config.lag_problems:
        km = {k: v["lag"]["ccdf_km"] for k, v in ev_dict["models"].items() if "lag" in v}
        figures["lag_ccdf"] = plot_lag_ccdf(km, tmp / f"lag_ccdf_{name}.png", (
            f"{name} toy, {setting}: stability lag CCDF "
            f"({min(config.lag_problems, len(held))} held-out problems)")).name
    result = {
        "checkpoint": checkpoint_dir(name).name,
        "setting": setting,
        "sampler": dataclasses.asdict(sampler),
        "sampler_text": describe_sampler(sampler, name),
        "calibration": {"problems": [list(p) for p in calib], "split": "train",
                        "states": int(data.masked.ids.shape[0]),
                        "stage1_seconds": round(data.seconds, 2),
                        "prior_file": f"prior_{name}.json"},
        "methods": methods,
        "heldout": {"problems": [list(p) for p in held], "split": "heldout"},
        "eval": ev_dict,
        "per_problem": {k: _per_problem(v) for k, v in ev.models.items()},
        "paired_vs": {"method": ref, "against": paired},
        "figures": figures,
    }
    return result, rows


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers)."""
    try:
        import resource
    except ImportError:  # not on Unix: this process only
        return time.process_time()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ru.ru_utime + ru.ru_stime


def _run_model_threads(name: str, config: DemoConfig, tmp: Path, progress):
    """:func:`_run_model` with ``config.threads`` torch threads, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run_model(name, config, tmp, progress)
    finally:
        torch.set_num_threads(threads)


def _stderr_line(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _worker(name: str, config: DemoConfig, tmp: Path, say: bool):
    """One model in a worker process; its messages go to stderr (a callback cannot cross)."""
    return _run_model_threads(name, config, tmp, _stderr_line if say else None)


def _run_in_processes(config: DemoConfig, tmp: Path, workers: int, say: bool) -> list:
    """:func:`_run_model` for each model in its own process (``spawn``: a fresh
    interpreter, no forked torch state), results in ``config.models`` order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, name, config, tmp, say) for name in config.models]
        return [f.result() for f in futures]


def run_demo(config: DemoConfig = DemoConfig(), out: str | Path = "runs/demo",
             progress: Callable[[str], None] | None = None, *, overwrite: bool = False) -> dict:
    """Run the demo (module docstring) and write ``out``; returns the results dict.

    ``out`` is refused (``FileExistsError``) when it exists and is not empty, unless
    ``overwrite``; it is built in a temporary directory beside it and appears only when
    complete. ``progress`` gets a one-line message after each stage (from a worker process
    the messages go to stderr instead). With ``config.workers`` > 1 the models run in
    ``spawn``ed processes, which import the calling script again: call ``run_demo`` from
    under ``if __name__ == "__main__":`` there (as every multiprocessing program must).
    """
    from fairref import __version__

    out = Path(out)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        workers = min(config.workers, len(config.models))
        if workers > 1:
            per_model = _run_in_processes(config, Path(tmp), workers, progress is not None)
        else:
            per_model = [_run_model_threads(name, config, Path(tmp), progress)
                         for name in config.models]
        models = {name: r for name, (r, _) in zip(config.models, per_model)}
        table = [row for _, rows in per_model for row in rows]
        results = {
            "schema": "fairref-demo/2",  # 2: the sampler is per model (models.<name>.sampler)
            "config": dataclasses.asdict(config),
            "environment": {"fairref": __version__, "torch": torch.__version__,
                            "python": platform.python_version(),
                            "machine": platform.machine(), "cpus": os.cpu_count(),
                            "threads": config.threads},
            "timing": {"wall_seconds": round(time.perf_counter() - t0, 1),
                       "cpu_seconds": round(_cpu_seconds() - cpu0, 1), "workers": workers},
            "table": table,
            "models": models,
        }
        (Path(tmp) / "results.json").write_text(json.dumps(results, indent=1) + "\n",
                                                 encoding="utf-8")
        (Path(tmp) / "report.md").write_text(report_markdown(results), encoding="utf-8")
    return results
