"""One evaluation of a teacher and its quantized students on held-out prompts (SPEC §5).

:func:`evaluate` is what ``fairref eval``, ``fairref demo`` and the paper scripts call:

1. the teacher rolls out on every prompt with its trace recorded (``fairref.diffusion.
   generate``, in chunks of ``chunk`` prompts);
2. each student is run teacher-forced on those traces (frontier token and set flips, masked
   KL: :func:`~fairref.eval.metrics.teacher_forced_metrics`), then rolls out on its own from
   the same prompts (task accuracy, post-commit mismatch, divergence step);
3. optionally the stability lag of the first ``lag_problems`` problems, for the teacher
   and each student, on the teacher's trajectory.

The result keeps every per-problem outcome, so two students can be compared with a paired
test over the same problems (:func:`~fairref.eval.stats.paired_comparison`).

Legend: N problems, P prompt length, L sequence length.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from fairref.diffusion import SamplerSettings, Trace, generate
from fairref.diffusion.trace import STEP_FIELDS
from fairref.eval.metrics import (
    Accuracy,
    Mismatch,
    TeacherForcedMetrics,
    amplification,
    post_commit_mismatch,
    teacher_forced_metrics,
)
from fairref.eval.logit_cache import DEFAULT_MAX_BYTES, LogitCache
from fairref.eval.stability import StabilityLag, stability_lag
from fairref.progress import progress_bar


@dataclass
class ModelResult:
    """Everything measured for one model (the teacher has no flips, KL or mismatch)."""

    accuracy: Accuracy | None = None
    teacher_forced: TeacherForcedMetrics | None = None
    mismatch: Mismatch | None = None
    lag: StabilityLag | None = None
    seconds: float = 0.0

    def to_dict(self, n_resamples: int = 1000, seed: int = 0) -> dict:
        out: dict = {"seconds": round(self.seconds, 2)}
        for name in ("accuracy", "teacher_forced", "mismatch", "lag"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v.to_dict(n_resamples, seed)
        if self.teacher_forced is not None and self.mismatch is not None:
            out["amplification"] = amplification(self.mismatch.rate,
                                                  self.teacher_forced.token_flip_rate)
        return out

    def summary(self) -> dict[str, float | None]:
        """The headline numbers of one model, as plain floats (None = n/a)."""
        tf, mm = self.teacher_forced, self.mismatch
        return {"accuracy": None if self.accuracy is None else self.accuracy.rate,
                "token_flip": None if tf is None else tf.token_flip_rate,
                "set_flip": None if tf is None else tf.set_flip_rate,
                "masked_kl": None if tf is None else tf.masked_kl,
                "mismatch": None if mm is None else mm.rate}


@dataclass
class EvalResult:
    """The teacher's and every student's results on the same problems."""

    settings: SamplerSettings
    n_problems: int
    models: dict[str, ModelResult] = field(default_factory=dict)

    def to_dict(self, n_resamples: int = 1000, seed: int = 0) -> dict:
        return {"settings": dataclasses.asdict(self.settings), "n_problems": self.n_problems,
                "models": {k: v.to_dict(n_resamples, seed) for k, v in self.models.items()}}


def _concat_mismatch(parts: Sequence[Mismatch]) -> Mismatch:
    return Mismatch(*(np.concatenate([getattr(p, f) for p in parts])
                      for f in ("mismatched", "counted", "divergence_step", "diverged")),
                    T=parts[0].T)


def _rollouts(model, prompt_ids: Tensor, attention_mask: Tensor | None,
              settings: SamplerSettings, chunk: int, seed: int, desc: str) -> list[Trace]:
    traces = []
    # on the prompts' device: a CUDA sampler cannot draw from a CPU generator
    g = torch.Generator(device=prompt_ids.device).manual_seed(seed)
    for a in progress_bar(range(0, prompt_ids.shape[0], chunk), desc=desc, unit="chunk"):
        attn = None if attention_mask is None else attention_mask[a:a + chunk]
        with torch.no_grad():
            _, tr = generate(model, prompt_ids[a:a + chunk], settings, attention_mask=attn,
                             generator=g, record=True)
        traces.append(tr)
    return traces


def teacher_eval_traces(teacher, prompt_ids: Tensor, settings: SamplerSettings, *,
                        attention_mask: Tensor | None = None, chunk: int = 256, seed: int = 0
                        ) -> list[Trace]:
    """The teacher's recorded rollouts of step 1, as :func:`evaluate` makes them (one
    :class:`Trace` per ``chunk`` prompts, drawn from a generator seeded ``seed``)."""
    return _rollouts(teacher, prompt_ids, attention_mask, settings, chunk, seed, "teacher")


def _accuracy(traces: list[Trace], problems, decode, check) -> Accuracy | None:
    if problems is None:
        return None
    texts = [decode(row) for tr in traces for row in tr.y[:, tr.prompt_len:]]
    return Accuracy(np.array([bool(check(p, c)) for p, c in zip(problems, texts)], dtype=bool))


def evaluate(teacher, students: dict, prompt_ids: Tensor, settings: SamplerSettings, *,
             attention_mask: Tensor | None = None, problems: Sequence | None = None,
             decode: Callable[[Tensor], str] | None = None,
             check: Callable[[object, str], bool] | None = None,
             eos_token_id: int | None = None, lag_problems: int = 0, chunk: int = 256,
             batch_size: int = 64, seed: int = 0,
             teacher_traces: Sequence[Trace] | None = None,
             reuse_logits: bool = True, teacher_cache: LogitCache | None = None,
             cache_bytes: int = DEFAULT_MAX_BYTES) -> EvalResult:
    """Evaluate ``students`` (name → quantized model) against ``teacher`` (module docstring).

    ``prompt_ids`` (N, P) held-out prompts (never calibration prompts); with ``problems``,
    ``decode`` (generated ids → text) and ``check`` (problem, text → bool) task accuracy is
    measured too. ``eos_token_id`` excludes the positions after the teacher's EOS from the
    post-commit mismatch (None: all positions count).

    ``teacher_traces``: the teacher's recorded rollouts from an earlier call with the same
    prompts, settings, ``chunk`` and ``seed`` (:func:`teacher_eval_traces`), so that
    students evaluated one at a time share them; every student's result is then the same as in one
    call with all students (each student's rollouts draw from their own generator).

    ``reuse_logits`` (default): no model is run twice on one state
    (:mod:`fairref.eval.logit_cache`): the teacher's rollout logits serve every
    teacher-forced pass, and a student's rollout reuses its teacher-forced logits on the
    steps where its state is still the teacher's. Each cache holds at most ``cache_bytes``.
    ``teacher_cache``: a :class:`LogitCache` of ``teacher`` kept by the caller, so that
    calls on the same prompts (other students, other calibrations) share the teacher's
    logits too. ``reuse_logits=False`` runs every forward pass plainly.
    """
    if teacher_cache is not None and teacher_cache.__wrapped__ is not teacher:
        raise ValueError("teacher_cache wraps another model than teacher; make it with "
                         "LogitCache(teacher)")
    if reuse_logits:
        teacher = teacher_cache if teacher_cache is not None else LogitCache(teacher,
                                                                             cache_bytes)
    if problems is not None and (decode is None or check is None):
        raise ValueError("problems needs decode and check to score completions")
    if problems is not None and len(problems) != prompt_ids.shape[0]:
        raise ValueError(f"{len(problems)} problems for {prompt_ids.shape[0]} prompts")
    result = EvalResult(settings, int(prompt_ids.shape[0]))
    t0 = time.perf_counter()
    if teacher_traces is None:
        t_traces = teacher_eval_traces(teacher, prompt_ids, settings,
                                       attention_mask=attention_mask, chunk=chunk, seed=seed)
    else:
        t_traces = list(teacher_traces)
        if sum(tr.y.shape[0] for tr in t_traces) != prompt_ids.shape[0]:
            raise ValueError(f"teacher_traces hold {sum(tr.y.shape[0] for tr in t_traces)} "
                             f"rollouts for {prompt_ids.shape[0]} prompts; record them on the "
                             "same prompts")
    fp = ModelResult(accuracy=_accuracy(t_traces, problems, decode, check))
    lag_traces = _first_problems(t_traces, lag_problems)
    if lag_traces:
        fp.lag = stability_lag(teacher, lag_traces, batch_size)
    fp.seconds = time.perf_counter() - t0
    result.models["FP"] = fp
    for name, student in students.items():
        t0 = time.perf_counter()
        if reuse_logits:
            student = LogitCache(student, cache_bytes)
        r = ModelResult()
        r.teacher_forced = teacher_forced_metrics(teacher, student, t_traces, batch_size)
        s_traces = _rollouts(student, prompt_ids, attention_mask, settings, chunk, seed, name)
        r.accuracy = _accuracy(s_traces, problems, decode, check)
        r.mismatch = _concat_mismatch([
            post_commit_mismatch(a, b, eos_token_id, include_after_eos=eos_token_id is None)
            for a, b in zip(t_traces, s_traces)])
        if lag_traces:
            r.lag = stability_lag(student, lag_traces, batch_size)
        r.seconds = time.perf_counter() - t0
        result.models[name] = r
    return result


def _first_problems(traces: list[Trace], n: int) -> list[Trace]:
    """The traces restricted to their first ``n`` problems in order (for the costly lag)."""
    out, left = [], n
    for tr in traces:
        if left <= 0:
            break
        b = min(left, tr.x.shape[1])
        out.append(_head(tr, b) if b < tr.x.shape[1] else tr)
        left -= b
    return out


def _head(tr: Trace, b: int) -> Trace:
    """The trace of the first ``b`` problems of ``tr``."""
    step = {f: getattr(tr, f)[:, :b] for f in STEP_FIELDS}  # (T, b, ...) per-step fields
    attn = None if tr.attention_mask is None else tr.attention_mask[:b]
    return dataclasses.replace(tr, **step, tau=tr.tau[:b], y=tr.y[:b], attention_mask=attn)
