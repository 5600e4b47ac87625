"""The one batched loop over teacher states (SPEC §5 "teacher-forced"; used by §6 checks).

Every teacher-forced quantity of the project — frontier token and set flips, masked KL
(``metrics.py``), stability lag, and the SPEC §6 bounds on real pairs (``bounds_check.py``)
— is a reduction over the same thing: a batch of states x_t, both models run on the *same*
x_t, and per state the logits (or the final hidden states) of each. This file is that loop,
written once:

- :func:`iter_batches` runs one or two models on any stack of states ``(S, L)`` in batches
  of ``batch_size``, under ``torch.no_grad`` and with the padding mask, and yields each
  batch's outputs. It is a generator, so a consumer reduces a batch before the next one is
  computed and nothing of size S·L·V is ever held (a 126k vocabulary makes one state's
  logits 0.5 MB per position).
- :func:`iter_trace_states` feeds it the recorded states of one or more traces (SPEC §2)
  and attaches to each batch the trace fields of its states (M_t, A_t, F_t, k_t, …).

Outputs are indexed by the position they predict: logits come from ``model.logits``
(Dream's one-position shift is inside it, SPEC §2); final hidden states (``hidden=True``)
are run through the protocol's ``embed`` and ``run_block`` and then shifted by
``logit_shift`` with the same rule as the logits (row i predicts position i).

The loop runs the models plainly: LLaDA's classifier-free guidance (a second,
prompt-masked pass mixed into the sampler's logits) is not replayed. The metrics, which
compare the sampler's decisions, reject such traces (:func:`check_teacher_forced`).

Legend: T steps, B rollouts of a trace, L length, S states, b states in a batch,
d hidden size, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from fairref.diffusion.trace import Trace
from fairref.models.protocol import shift_head_logits

#: states per forward pass: a batch holds b·L·V logits per model (LLaDA-8B, L = 400:
#: 16 states are 3.2 GB of float32 each); tiny models can afford far more
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class ModelOutputs:
    """One model's outputs on a batch of states, indexed by predicted position."""

    z: Tensor | None  # (b, L, V) logits, None unless requested
    h: Tensor | None  # (b, L, d) final hidden states, row i predicts i; None unless requested


@dataclass(frozen=True)
class Batch:
    """A batch of states and the outputs of each model on them (see :func:`iter_batches`)."""

    index: Tensor  # (b,) int64: rows of the input stack
    x: Tensor  # (b, L) int64: the states
    attention_mask: Tensor | None  # (b, L) bool, None when the input had none
    outputs: tuple[ModelOutputs, ...]  # one per model, in the order given


@dataclass(frozen=True)
class StateBatch:
    """A batch of recorded teacher states with the teacher's and the student's outputs.

    ``t`` and ``row`` locate each state in trace number ``trace`` (``x_t`` of rollout
    ``row``); the mask fields are copied from the trace so a consumer needs nothing else.
    """

    trace: int  # which trace of the list the states come from
    t: Tensor  # (b,) int64: step
    row: Tensor  # (b,) int64: rollout (problem) within the trace
    x: Tensor  # (b, L) int64: x_t
    attention_mask: Tensor | None  # (b, L) bool
    masked: Tensor  # (b, L) bool: M_t
    active: Tensor  # (b, L) bool: A_t
    committed: Tensor  # (b, L) bool: F_t
    k: Tensor  # (b,) int64: k_t, −1 where undefined
    teacher: ModelOutputs
    student: ModelOutputs | None  # None when no student was given


def model_device(model) -> torch.device:
    """Where ``model`` computes: the device of its first parameter (CPU for a model
    without parameters, such as a test oracle)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def model_outputs(model, x: Tensor, attention_mask: Tensor | None, logits: bool = True,
                  hidden: bool = False) -> ModelOutputs:
    """One forward pass of ``model`` on states ``x`` (b, L) (SPEC §2 interface).

    With ``hidden`` the last block's output is computed through ``embed``/``run_block`` and
    aligned to predicted positions; the logits are then the head on those same states (one
    pass, not two). Without it the logits are ``model.logits`` — the only method a model
    needs when ``hidden`` is False.
    """
    if not hidden:
        return ModelOutputs(z=model.logits(x, attention_mask=attention_mask), h=None)
    h = model.embed(x)  # (b, L, d)
    for i in range(len(model.blocks)):
        h = model.run_block(i, h, attention_mask)
    z = shift_head_logits(model.head(h), model.logit_shift) if logits else None  # (b, L, V)
    # row i of h predicts position i + logit_shift: the logits' shift, applied to rows
    return ModelOutputs(z=z, h=shift_head_logits(h, model.logit_shift))  # (b, L, d)


@torch.no_grad()
def iter_batches(models: Sequence, x: Tensor, attention_mask: Tensor | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, logits: bool = True,
                 hidden: bool = False) -> Iterator[Batch]:
    """Run every model of ``models`` on the same states, ``batch_size`` at a time.

    ``x``: (S, L) int64 states; ``attention_mask``: (S, L) bool (True = real token) or None.
    Yields one :class:`Batch` per slice of ``batch_size`` consecutive states, the models'
    outputs in the order of ``models``. ``logits``/``hidden`` select what is computed.
    Each batch is moved to the first model's device (:func:`model_device`); ``index``
    stays on the CPU, the other fields live on that device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if x.dim() != 2:
        raise ValueError(f"x must be a (S, L) stack of states, got shape {tuple(x.shape)}")
    if attention_mask is not None and attention_mask.shape != x.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, want "
                         f"the states' shape {tuple(x.shape)}")
    device = model_device(models[0])
    for s0 in range(0, x.shape[0], batch_size):
        sl = slice(s0, s0 + batch_size)
        x_b = x[sl].to(device)  # (b, L)
        am = None if attention_mask is None else attention_mask[sl].to(device)  # (b, L)
        outs = tuple(model_outputs(m, x_b, am, logits=logits, hidden=hidden)
                     for m in models)
        yield Batch(index=torch.arange(x.shape[0])[sl], x=x_b, attention_mask=am,
                    outputs=outs)


def check_teacher_forced(trace: Trace) -> None:
    """Raise ``ValueError`` if a trace's states cannot be replayed by a plain forward pass."""
    if not isinstance(trace, Trace):
        raise ValueError(f"expected a fairref Trace, got {type(trace).__name__}")
    if trace.settings.get("cfg_scale", 0) > 0:
        raise ValueError("teacher-forced evaluation of a trace recorded with cfg_scale > 0 is "
                         "not supported (the guided logits need a second, prompt-masked pass); "
                         "record the evaluation traces with cfg_scale=0")


def flat_states(trace: Trace) -> tuple[Tensor, Tensor | None]:
    """A trace's states as one stack, step-major: state s = t·B + r.
    Returns ``x`` (T·B, L) and the padding mask repeated per step (T·B, L) or None."""
    T, B, L = trace.x.shape
    am = None if trace.attention_mask is None else trace.attention_mask.repeat(T, 1)
    return trace.x.reshape(T * B, L), am  # (S, L)


def iter_trace_states(teacher, student, traces: Trace | Sequence[Trace],
                      batch_size: int = DEFAULT_BATCH_SIZE, logits: bool = True,
                      hidden: bool = False) -> Iterator[StateBatch]:
    """Teacher-forced pass over every recorded state x_t of ``traces`` (SPEC §5).

    ``teacher`` and ``student`` (``student`` may be None: teacher only) run on the same
    x_t with the trace's padding mask; batches never mix traces (their lengths may differ).
    Yields :class:`StateBatch` in trace order, each trace's states step-major; ``t`` and
    ``row`` are on the CPU, the states, masks and outputs on the teacher's device.
    """
    traces = [traces] if isinstance(traces, Trace) else list(traces)
    models = (teacher,) if student is None else (teacher, student)
    for n, trace in enumerate(traces):
        T, B, L = trace.x.shape
        x, am = flat_states(trace)  # (S, L)
        fields = {name: getattr(trace, name).reshape(T * B, L)
                  for name in ("masked", "active", "committed")}  # each (S, L)
        k = trace.k.reshape(T * B)  # (S,)
        for batch in iter_batches(models, x, am, batch_size, logits=logits, hidden=hidden):
            s, dev = batch.index, batch.x.device  # (b,)
            yield StateBatch(trace=n, t=s // B, row=s % B, x=batch.x,
                             attention_mask=batch.attention_mask,
                             masked=fields["masked"][s].to(dev),
                             active=fields["active"][s].to(dev),
                             committed=fields["committed"][s].to(dev), k=k[s].to(dev),
                             teacher=batch.outputs[0],
                             student=batch.outputs[1] if student is not None else None)
