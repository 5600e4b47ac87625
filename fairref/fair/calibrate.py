"""Stage II core: sequential, layer-wise, token-weighted quantization of a model (SPEC §4.2).

Blocks ℓ = 1..N are quantized in order. Block ℓ sees X^ℓ, its inputs along the
*already-quantized* path (GPTQ's sequential scheme), and its full-precision target
Y^ℓ = Block^ℓ(teacher's input to block ℓ). Within a block the linears are quantized
true-sequentially in the groups of ``model.linear_groups()`` — (q, k, v) → (o) →
(gate, up) → (down) — re-collecting each group's inputs after the previous group has been
replaced by its quantized version, so every linear is solved for the inputs it will really
see.

Solver (a) of SPEC §4.3: each linear is quantized by weighted GPTQ on its own
full-precision output, with H = 2 Σ_n w_n x̃_n x̃_nᵀ / Σ_n w_n built from x̃_n = Q_a(x_n R),
the input as the quantized forward sees it (rotation, then activation quantization), and
the weight W R. With ``solver="rtn"`` no data is used (RTN); with all w_n = 1 this is the
ordinary layer-wise GPTQ (SPEC §4.4), so the token weights are the only difference between
methods and ablations are exact.

Solver (b), ``clip_search=True`` with "rtn" or "gptq": per group, the activation clip
ratio minimizing L_ℓ with the group's weights RTN-quantized (later groups still full
precision), then per output channel the weight clip minimizing the weighted output error;
the solver then uses those clips (``fairref.fair.clip_search``).

Solver (d), ``solver="flat"``: the block's four sites are trained jointly by
``fairref.fair.flat.flat_block`` on X^ℓ (or, with ``flat.fp_inputs``, on the teacher's
input to block ℓ) and exported in place; X^{ℓ+1} is then produced by the *exported* block.

Where blocks come from: a *block source* (``fairref.models.blocks``). In memory, every
block of ``model`` is resident; with ``StreamingBlocks`` (layer streaming) block ℓ is read
from the float checkpoint's shards when the loop reaches it and written to the output
when it is final, so only the embedding, the head, one block and the two (B, L, d)
activations h_fp, h_q are resident. The loop below is the same for both.

The weights ``w`` are per hidden-state row (B, L): the caller maps positions to rows
(for Dream, hidden state i carries the weight of position i + 1, SPEC §3.4) and zeroes
padding. This module never builds a prior: that is Stage I's job.

Reported per block: the weighted hidden-state MSE L_ℓ = Σ_n w_n ‖Y_n − Block_Q(X_n)‖² /
Σ_n w_n (SPEC §4.2).

Legend: B calibration states, L sequence length, d hidden size, K a linear's inputs,
T = B·L tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from fairref.fair.clip_search import search_act_clip, search_weight_clip
from fairref.fair.flat import FlatConfig, flat_block
from fairref.models.blocks import InMemoryBlocks
from fairref.quant.gptq import gptq_quantize
from fairref.quant.grid import QuantSpec, fake_quantize, quantize
from fairref.quant.hessian import HessianAccumulator
from fairref.quant.linear import QuantLinear
from fairref.quant.rotation import RotationKind, RotationSpec
from fairref.quant.smooth import (activation_absmax, fold_into_norm, fold_into_weight,
                                  smooth_factors)


@dataclass(frozen=True)
class CalibConfig:
    """What Stage II quantizes and how (SPEC §1, §4.3a). Defaults: W4A4 + Hadamard + GPTQ."""

    w_spec: QuantSpec = QuantSpec(bits=4)  # per-output-channel symmetric int4 weights
    a_spec: QuantSpec | None = QuantSpec(bits=4, granularity="token")  # None: weight-only
    rotation: RotationKind | None = "hadamard"  # per-linear rotation R, or None
    rotation_seed: int = 0  # used only by rotation="random"
    solver: Literal["rtn", "gptq", "flat"] = "gptq"  # (a) GPTQ, (d) flat, or RTN
    clip_search: bool = False  # solver (b) before "rtn"/"gptq": searched clip ratios
    flat: FlatConfig = FlatConfig()  # settings of solver "flat" (SPEC §4.3d)
    percdamp: float = 0.01  # GPTQ damping, fraction of mean(diag H)
    blocksize: int = 128  # GPTQ lazy-batch columns (does not change the result)
    act_order: bool = False  # GPTQ column order by descending diag H
    #: SmoothQuant before "rtn"/"gptq" (SPEC §4.4): at every site fed by an RMSNorm
    #: (``model.norm_sites()``), ζ with this migration strength α is folded into the norm
    #: and the site's weights before they are quantized; None = off. The flat solver
    #: learns its own ζ.
    smooth_alpha: float | None = None

    def __post_init__(self) -> None:
        if self.solver not in ("rtn", "gptq", "flat"):
            raise ValueError(f"CalibConfig.solver must be 'rtn', 'gptq' or 'flat', got {self.solver!r}")
        if self.clip_search and self.solver == "flat":
            raise ValueError("CalibConfig.clip_search is for solvers 'rtn' and 'gptq'; the flat "
                             "solver learns its clips")
        if self.smooth_alpha is not None:
            if self.solver == "flat":
                raise ValueError("CalibConfig.smooth_alpha is for solvers 'rtn' and 'gptq'; the "
                                 "flat solver learns its own smoothing ζ (FlatConfig.smooth)")
            if not 0.0 <= self.smooth_alpha <= 1.0:
                raise ValueError(f"CalibConfig.smooth_alpha must be in [0, 1] (SmoothQuant's "
                                 f"migration strength), got {self.smooth_alpha!r}")

    @property
    def needs_data(self) -> bool:
        """Whether the block loop needs calibration states (all but plain RTN)."""
        return self.solver != "rtn" or self.clip_search or self.smooth_alpha is not None


@dataclass
class CalibReport:
    """Per-block weighted hidden-state MSE L_ℓ after quantizing block ℓ (SPEC §4.2)."""

    block_loss: list[float] = field(default_factory=list)
    #: per linear (qualified name): the GPTQ damping used and whether it fell back to RTN
    solver_info: dict[str, dict] = field(default_factory=dict)


def _capture_inputs(block: nn.Module, names: list[str], run: Callable[[], Tensor]
                    ) -> dict[str, Tensor]:
    """Run ``run()`` once and return the input each named linear of ``block`` received."""
    seen: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        def hook(_mod, args, name=name):
            seen[name] = args[0].detach()
        hooks.append(block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in seen]
    if missing:
        raise RuntimeError(f"linears {missing} were not called by the block's forward")
    return seen


def _replace(block: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(block.get_submodule(parent_name) if parent_name else block, attr, new)


def _quantize_linear(lin: nn.Linear, x: Tensor | None, w: Tensor | None, cfg: CalibConfig,
                     act_clip: float | None = None) -> tuple[QuantLinear, dict]:
    """One linear: RTN, or weighted GPTQ on its quantized-path inputs x (..., K); with
    ``cfg.clip_search`` at the activation clip ``act_clip`` and searched weight clips."""
    K = lin.in_features
    # the same RotationSpec.apply rotates W here and x in the QuantLinear's forward
    R = None if cfg.rotation is None else RotationSpec(cfg.rotation, K, cfg.rotation_seed)
    a_spec = cfg.a_spec
    if act_clip is not None:
        a_spec = dataclasses.replace(cfg.a_spec, clip=act_clip)
    if cfg.solver == "rtn" and not cfg.clip_search:
        return QuantLinear.from_linear(lin, cfg.w_spec, cfg.a_spec, transform=R), {}
    W = lin.weight.detach().to(torch.float32)  # (N, K)
    xr = x.to(torch.float32).reshape(-1, K)  # (T, K)
    if R is not None:
        W = R.apply_weight(W)  # W R, the weight in the rotated basis: x Wᵀ = (x R)(W R)ᵀ
        xr = R.apply(xr)  # x R, exactly what QuantLinear.transformed_input computes
    if a_spec is not None:
        xr = fake_quantize(xr, a_spec, name="layer input")  # what the QuantLinear sees
    H = HessianAccumulator(K).add(xr, None if w is None else w.reshape(-1)).H
    bias = None if lin.bias is None else lin.bias.detach()
    c_w = search_weight_clip(W, H, cfg.w_spec) if cfg.clip_search else None  # (N, 1)
    info = {} if not cfg.clip_search else {"act_clip": act_clip,
                                           "weight_clip": c_w.reshape(-1).tolist()}
    if cfg.solver == "rtn":  # RTN at the searched clips
        q, s, z = quantize(W, cfg.w_spec, clip=c_w, name="linear.weight")
        return QuantLinear.from_quantized(q, s, z, cfg.w_spec, a_spec, bias=bias, transform=R), info
    res = gptq_quantize(W, H, cfg.w_spec, blocksize=cfg.blocksize, percdamp=cfg.percdamp,
                        act_order=cfg.act_order, clip=c_w)
    ql = QuantLinear.from_quantized(res.q, res.scale, res.zero, cfg.w_spec, a_spec,
                                    bias=bias, transform=R)
    return ql, {"damp": res.damp, "fell_back_to_rtn": res.fell_back_to_rtn, **info}


@torch.no_grad()
def smooth_site(block: nn.Module, norm_name: str, group: Sequence[str], x: Tensor,
                w: Tensor | None, alpha: float) -> Tensor:
    """SmoothQuant at one site, in place: ζ = smooth_factors(max over the rows of x of
    weight > 0, the group's stacked weights, α), then the norm weight g ⊘ ζ and each
    linear's W diag ζ (SPEC §4.4). The block computes the same function up to rounding;
    activation outliers have moved into the weights. ``x`` (B, L, K): the norm's output
    (the group's shared input); ``w`` (B, L) row weights or None. Returns ζ (K,)."""
    norm = block.get_submodule(norm_name)
    lins = [block.get_submodule(n) for n in group]
    W = torch.cat([lin.weight.detach().to(torch.float32) for lin in lins])  # (ΣN, K)
    zeta = smooth_factors(activation_absmax(x, w), W, alpha).to(W.device)  # (K,)
    norm.weight.copy_(fold_into_norm(norm.weight, zeta).to(norm.weight.dtype))
    for lin in lins:
        lin.weight.copy_(fold_into_weight(lin.weight, zeta).to(lin.weight.dtype))
    return zeta


def _group_rtn_loss(model, l: int, group: list[str], act_clip: float, h_q: Tensor, Y: Tensor,
                    w: Tensor | None, attention_mask: Tensor | None, cfg: CalibConfig) -> float:
    """L_ℓ with the group's linears RTN-quantized at activation clip ``act_clip`` (SPEC §4.3b)."""
    block = model.blocks[l]
    a_spec = dataclasses.replace(cfg.a_spec, clip=act_clip)
    originals = {n: block.get_submodule(n) for n in group}
    try:
        for n, lin in originals.items():
            R = None if cfg.rotation is None else RotationSpec(cfg.rotation, lin.in_features,
                                                               cfg.rotation_seed)
            _replace(block, n, QuantLinear.from_linear(lin, cfg.w_spec, a_spec, transform=R))
        return _weighted_mse(Y, model.run_block(l, h_q, attention_mask), w)
    finally:
        for n, lin in originals.items():
            _replace(block, n, lin)


def _weighted_mse(Y: Tensor, Yq: Tensor, w: Tensor | None) -> float:
    err = (Y.float() - Yq.float()).square().sum(-1)  # (B, L)
    if w is None:
        return float(err.mean())
    return float((w * err).sum() / w.sum())


@torch.no_grad()
def quantize_model(model, states: Tensor | None = None, weights: Tensor | None = None,
                   attention_mask: Tensor | None = None, config: CalibConfig = CalibConfig(),
                   progress: Callable[[str], None] | None = None, *,
                   resume_blocks: Sequence[nn.Module] = (),
                   on_block: Callable[[int, nn.Module], None] | None = None,
                   blocks=None) -> CalibReport:
    """Quantize every linear inside ``model.blocks`` in place (SPEC §4.2).

    ``states``: (B, L) token ids of the calibration states (teacher states x_t for the
    masked methods, plain text for GPTQ); required unless ``config.solver == "rtn"``.
    ``weights``: (B, L) non-negative per hidden-state row, or None for w ≡ 1.
    ``attention_mask``: (B, L) bool, True for real tokens; padded rows get weight 0.
    ``progress``: called with a one-line message after each block.

    Resuming an interrupted run: ``resume_blocks`` are blocks 0..k−1 as an earlier run of
    the same inputs and config quantized them (e.g. reloaded from a checkpoint saved by
    ``on_block``). They are swapped in instead of being calibrated again; X^ℓ, Y^ℓ and L_ℓ
    are recomputed by running them, which is deterministic, so the run continues to the
    same bytes as an uninterrupted one. ``on_block(ℓ, model)`` is called after block ℓ is
    final (the model then holds blocks 0..ℓ quantized, the rest still float; with a
    streaming source only block ℓ is resident).

    ``blocks``: the block source (``fairref.models.blocks``) the loop reads block ℓ from
    and hands final blocks to; default ``InMemoryBlocks(model, resume_blocks)``. A
    ``StreamingBlocks`` source (``model`` must then be its ``.model``) keeps one block
    resident and writes each final block to disk; it resumes from the blocks its work
    directory holds, so ``resume_blocks`` must then be empty. The loop is the same.
    """
    if blocks is None:
        blocks = InMemoryBlocks(model, resume_blocks)
    elif resume_blocks:
        raise ValueError("resume_blocks is for the in-memory source; a streaming source "
                         "resumes from its own work directory (StreamingBlocks(resume=True))")
    elif blocks.model is not model:
        raise ValueError("model must be the block source's model (blocks.model)")
    if config.needs_data and states is None:
        raise ValueError(f"states is required for solver={config.solver!r}"
                         f"{' with clip_search' if config.clip_search else ''}"
                         f"{' with smoothing' if config.smooth_alpha is not None else ''} "
                         "(calibration data); use solver='rtn' for data-free quantization")
    w = weights
    if states is not None:
        if states.ndim != 2:
            raise ValueError(f"states must be (B, L) token ids, got shape {tuple(states.shape)}")
        if w is not None:
            if tuple(w.shape) != tuple(states.shape):
                raise ValueError(f"weights must have the shape of states {tuple(states.shape)}, "
                                 f"got {tuple(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError("weights must be finite and non-negative")
            w = w.to(torch.float64)
        if attention_mask is not None:
            m = attention_mask.to(torch.float64)
            w = m if w is None else w * m
    report = CalibReport()
    groups = [list(g) for g in model.linear_groups()]
    #: group → the RMSNorm feeding it, where SmoothQuant folds ζ (the other groups: none)
    site_norm = ({tuple(lins): norm for norm, lins in model.norm_sites()}
                 if config.smooth_alpha is not None else {})
    h_fp = h_q = None
    if states is not None:
        h_fp = model.embed(states)  # (B, L, d) teacher path
        h_q = h_fp.clone()  # (B, L, d) quantized path
    n_blocks, resumed = len(blocks), blocks.n_done
    for l in range(n_blocks):
        block = None
        if l >= resumed or h_fp is not None:  # resident from here until blocks.finish(l)
            block = blocks.float_block(l)
        Y = None if h_fp is None else model.run_block(l, h_fp, attention_mask)  # target Y^ℓ
        if l < resumed:  # quantized by the interrupted run: swap it in
            block = blocks.final_block(l)
        elif config.solver == "flat":
            X = h_fp if config.flat.fp_inputs else h_q  # FlatQuant's option: teacher inputs
            gptq = dict(percdamp=config.percdamp, blocksize=config.blocksize,
                        act_order=config.act_order)
            report.solver_info[f"blocks.{l}"] = flat_block(
                block, groups, lambda h, m: model.run_block(l, h, m), X, Y, w, attention_mask,
                config.w_spec, config.a_spec, config.rotation, config.rotation_seed,
                config.flat, gptq=gptq)
        for group in groups if config.solver != "flat" and l >= resumed else []:
            xs = {}
            if tuple(group) in site_norm:  # SmoothQuant on this group's inputs, then solve
                x = _capture_inputs(block, group[:1],
                                    lambda: model.run_block(l, h_q, attention_mask))[group[0]]
                smooth_site(block, site_norm[tuple(group)], group, x, w, config.smooth_alpha)
            if config.solver == "gptq" or config.clip_search:
                xs = _capture_inputs(block, group,
                                     lambda: model.run_block(l, h_q, attention_mask))
            c_a = None
            if config.clip_search and config.a_spec is not None:
                c_a = search_act_clip(lambda c: _group_rtn_loss(
                    model, l, group, c, h_q, Y, w, attention_mask, config))
            for name in group:
                ql, info = _quantize_linear(block.get_submodule(name), xs.get(name), w, config,
                                            act_clip=c_a)
                _replace(block, name, ql.to(next(block.parameters()).device))
                if info:
                    report.solver_info[f"blocks.{l}.{name}"] = info
        if h_q is not None:
            h_q = model.run_block(l, h_q, attention_mask)  # X^{ℓ+1} on the quantized path
            report.block_loss.append(_weighted_mse(Y, h_q, w))
            h_fp = Y
        if progress is not None:
            loss = f", L_ℓ = {report.block_loss[-1]:.4g}" if report.block_loss else ""
            progress(f"block {l + 1}/{n_blocks} quantized ({config.solver}){loss}")
        if on_block is not None:
            on_block(l, model)
        blocks.finish(l)  # streaming: written to disk and dropped
    return report
