"""FAIR-Calib end to end: calibration data from the teacher, then one method (SPEC §3–4.4).

Two calls, shared by ``fairref probe | calibrate``, ``fairref demo``, the benchmarks and the
paper scripts, so that every method runs through one code path:

- :func:`prepare` — Stage I on the calibration prompts: the teacher's rollouts and traces,
  the prior (§3), the teacher states (§4.1) and the plain inputs with the same prompts
  and token count (§4.4). Methods on one data axis then share the same states.
- :func:`calibrate` — a quantized copy of the teacher by one named method
  (:mod:`fairref.fair.methods`): RTN, or the §4.2 block loop with solver (a) or (d) on
  plain inputs or teacher states, weighted by w ≡ 1 or by the prior (with the method's
  ablation applied to it).

``masked-uniform`` passes w = None; ``fair`` passes the prior's weights, which are exactly
1.0 on every real row when the prior is constant and γ = 0 — the condition under which the
two produce byte-identical weights (tested).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fairref.diffusion import SamplerSettings
from fairref.fair.calibrate import CalibConfig, CalibReport, quantize_model
from fairref.fair.methods import Method, get_method
from fairref.fair.prior import Prior, PriorConfig, estimate_prior, token_weights
from fairref.fair.probe import ProbeResult
from fairref.fair.flat import FlatConfig
from fairref.fair.states import CalibStates, plain_inputs, teacher_states
from fairref.models.blocks import StreamingBlocks
from fairref.quant.grid import QuantSpec

#: bits with which activations stay in floating point ("W4A16")
FLOAT_ACTIVATIONS = 16


@dataclass(frozen=True)
class CalibData:
    """What Stage II needs from Stage I (module docstring)."""

    prior: Prior
    masked: CalibStates  # teacher states x_t with their frontier bands
    plain: CalibStates  # the same prompts, answers written in, nothing masked
    probe: ProbeResult
    seconds: float  # Stage I wall time


def prepare(teacher, prompt_ids: Tensor, settings: SamplerSettings, *,
            prior_config: PriorConfig = PriorConfig(), states_per_rollout: int = 4,
            rollouts: int = 1, seed: int = 0, attention_mask: Tensor | None = None,
            batch_size: int | None = None) -> CalibData:
    """Stage I on calibration ``prompt_ids`` (B, P): prior, teacher states, plain inputs.

    ``states_per_rollout`` is S of §4.1 (default 4); ``rollouts`` per prompt (more than one
    only with a random sampler); ``seed`` seeds those rollouts; ``batch_size`` prompts are
    rolled out at a time (None: all at once — a real model's vocabulary makes that large).
    """
    t0 = time.perf_counter()
    prior, result = estimate_prior(teacher, prompt_ids, settings, prior_config,
                                   rollouts=rollouts, seed=seed, attention_mask=attention_mask,
                                   batch_size=batch_size)
    masked = teacher_states(result.traces, result.bands, states_per_rollout)
    plain = plain_inputs(result.traces, states_per_rollout)
    return CalibData(prior, masked, plain, result, time.perf_counter() - t0)


def method_prior(method: Method, prior: Prior, seed: int = 0) -> Prior:
    """The prior as ``method`` uses it: its λ, γ or shuffle applied (SPEC §4.4)."""
    p = prior
    if method.lam is not None:
        p = p.replace(lam=method.lam)
    if method.gamma is not None:
        p = p.replace(gamma=method.gamma)
    if method.shuffled:
        p = p.shuffled(seed)
    return p


def calib_config(method: Method, w_bits: int = 4, a_bits: int = 4,
                 flat: FlatConfig = FlatConfig(), smooth_alpha: float | None = None
                 ) -> CalibConfig:
    """The Stage II configuration of ``method`` at W``w_bits``A``a_bits`` (SPEC §1, §4.3):
    weights per output channel, activations per token, both symmetric; ``a_bits=16``
    leaves activations in floating point."""
    a_spec = None if a_bits == FLOAT_ACTIVATIONS else QuantSpec(bits=a_bits, granularity="token")
    return CalibConfig(w_spec=QuantSpec(bits=w_bits), a_spec=a_spec, rotation=method.rotation,
                       solver=method.solver, flat=flat, smooth_alpha=smooth_alpha)


@dataclass
class Calibrated:
    """A quantized model and how it was made."""

    model: torch.nn.Module
    method: Method
    config: CalibConfig
    report: CalibReport
    prior: Prior | None
    seconds: float
    info: dict = field(default_factory=dict)

    def description(self) -> dict:
        """JSON-able record of the method and solver settings (stored in checkpoints; no
        wall time, so the same inputs and seed give the same bytes)."""
        c = self.config
        return {"name": self.method.name, "solver": c.solver, "data": self.method.data,
                "weights": self.method.weights, "rotation": c.rotation,
                "w_spec": dataclasses.asdict(c.w_spec),
                "a_spec": None if c.a_spec is None else dataclasses.asdict(c.a_spec),
                "flat": dataclasses.asdict(c.flat) if c.solver == "flat" else None,
                "gptq": {"percdamp": c.percdamp, "blocksize": c.blocksize,
                         "act_order": c.act_order} if c.solver == "gptq" else None,
                **({} if c.smooth_alpha is None else {"smooth_alpha": c.smooth_alpha}),
                "block_loss": self.report.block_loss,
                **self.info}


def calibrate(teacher, method: str | Method, data: CalibData | None = None, *,
              prior: Prior | None = None, w_bits: int = 4, a_bits: int = 4,
              flat: FlatConfig = FlatConfig(), seed: int = 0, progress=None,
              resume_blocks=(), on_block=None, smooth_alpha: float | None = None
              ) -> Calibrated:
    """A quantized copy of ``teacher`` by ``method`` (the teacher is left untouched).

    ``teacher`` is a model (deep-copied, every block resident) or a
    :class:`~fairref.models.blocks.StreamingBlocks` source (layer streaming: nothing is
    copied, one block is resident at a time and each final block is written to the
    source's output; finish with ``source.save(method=result.description(), ...)``; the
    result's ``model`` then holds no blocks).

    ``data`` from :func:`prepare` is required unless the method is data-free (RTN);
    ``prior`` overrides ``data.prior`` (e.g. one loaded from a file). ``seed`` seeds the
    flat solver's batch order and the shuffled-prior control. ``resume_blocks`` and
    ``on_block`` are passed to :func:`~fairref.fair.calibrate.quantize_model` (resuming an
    interrupted run, saving progress after each block). ``smooth_alpha`` switches on
    SmoothQuant (SPEC §4.4) for the methods of solver "rtn" and "gptq"; it needs
    calibration activations, which a data-free method (RTN) then takes from the plain
    inputs of ``data``.
    """
    m = get_method(method) if isinstance(method, str) else method
    if smooth_alpha is not None and m.solver == "flat":
        raise ValueError(f"smoothing is for the rtn and gptq solvers; method {m.name!r} uses "
                         "the flat solver, which learns its own ζ")
    if smooth_alpha is not None and data is None:
        raise ValueError("smoothing measures activations: give Stage I data (pipeline.prepare) "
                         f"to calibrate {m.name!r} with smooth_alpha")
    if m.needs_data and data is None:
        raise ValueError(f"method {m.name!r} calibrates on data: run Stage I first "
                         "(fairref.fair.pipeline.prepare, or `fairref probe`)")
    use_prior = prior if prior is not None else (data.prior if data is not None else None)
    if m.needs_prior and use_prior is None:
        raise ValueError(f"method {m.name!r} weights tokens by a Stage I prior; give one")
    flat = dataclasses.replace(flat, seed=seed)
    cfg = calib_config(m, w_bits, a_bits, flat, smooth_alpha)
    blocks = teacher if isinstance(teacher, StreamingBlocks) else None
    model = teacher.model if blocks is not None else copy.deepcopy(teacher)

    def checked(l: int, model) -> None:
        # block ℓ is final and resident (in every source): no NaN/Inf may leave it
        bad = [n for n, t in model.blocks[l].state_dict().items()
               if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise ValueError(f"calibration by {m.name!r} produced NaN/Inf in block {l}: "
                             f"{bad[0]} (and {len(bad) - 1} more); lower the flat solver's "
                             "lr, or check the calibration data")
        if on_block is not None:
            on_block(l, model)

    t0 = time.perf_counter()
    p = None
    if not cfg.needs_data:
        report = quantize_model(model, config=cfg, progress=progress,
                                resume_blocks=resume_blocks, on_block=checked, blocks=blocks)
    else:
        states = data.masked if m.data == "masked" else data.plain
        # Stage I may have left its states elsewhere (e.g. on the CPU); the block loop runs
        # where the model's resident weights are (streaming: only embedding, norm, head)
        device = next(t.device for t in model.parameters() if t.device.type != "meta")
        states = states.to(device)
        w = None
        if m.needs_prior:
            p = method_prior(m, use_prior, seed)
            if p.pi.numel() != states.ids.shape[1] - states.prompt_len:
                raise ValueError(f"the prior covers {p.pi.numel()} generation positions but the "
                                 f"calibration states have "
                                 f"{states.ids.shape[1] - states.prompt_len}; probe with the "
                                 "same gen_length")
            w = token_weights(p, states, logit_shift=model.logit_shift)
        report = quantize_model(model, states.ids, w, states.attention_mask, cfg,
                                progress=progress, resume_blocks=resume_blocks,
                                on_block=checked, blocks=blocks)
    # what stays resident (every block in memory; embedding, norm and head when streaming)
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point()
           and t.device.type != "meta" and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"calibration by {m.name!r} produced NaN/Inf in {bad[0]} (and "
                         f"{len(bad) - 1} more); lower the flat solver's lr, or check the "
                         "calibration data")
    return Calibrated(model.eval(), m, cfg, report, p, time.perf_counter() - t0)
