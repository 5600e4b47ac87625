"""Integer grids, scales, and the quantize / dequantize pair (SPEC §1).

This file *is* the golden convention: every other implementation diffs against it.
Pinned choices (all SPEC §1):

- signed b-bit grid q ∈ [qmin, qmax] = [−2^(b−1), 2^(b−1) − 1], b ∈ {2, …, 8};
- the input is cast to float32 first and every step is one float32 operation in the order
  written: ``s = (c * amax) / qmax`` ("restricted", the QuaRot/SpinQuant convention) or
  ``s = (c * amax) / (qmax + 0.5)`` ("full", the compressed-tensors/torchao convention);
- ``q = clamp(round_half_even(x / s), qmin, qmax)`` with a true division, never ``x * (1/s)``;
- amax = 0, or a scale that underflows to 0, gives s = 1 (and so q = 0);
- asymmetric (fake-quant only): min/max taken with 0 included and multiplied by c,
  ``s = (max − min) / (2^b − 1)``, ``z = clamp(round(−min / s), 0, 2^b − 1)``,
  ``q_u = clamp(round(x / s) + z, 0, 2^b − 1)``, ``x̂ = (q_u − z) * s``;
- non-finite input is a ``ValueError`` naming the tensor.

Granularity decides over which elements one scale is shared (the reduced axes):
``tensor`` all of them; ``channel`` the input columns of a weight (N, K) → scale (N, 1);
``token`` the last axis of an activation (..., K) → scale (..., 1); ``group`` runs of
``group_size`` along the last axis → scale (..., K/g).

Legend: N output channels, K input features, g group size, T tokens.
Checked against: compressed-tensors and torchao primitives (scale_mode="full"), tests/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Granularity = Literal["tensor", "channel", "group", "token"]
ScaleMode = Literal["restricted", "full"]


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized (SPEC §1). Immutable; validated on construction."""

    bits: int = 4  # grid width b, 2..8; W4A4 is the paper's setting
    symmetric: bool = True  # the integer path is symmetric; asymmetric is fake-quant only
    granularity: Granularity = "channel"  # weights: per output channel (SPEC §1 default)
    group_size: int | None = None  # g, required iff granularity == "group"
    scale_mode: ScaleMode = "restricted"  # s = c·amax / qmax (QuaRot); "full": / (qmax + ½)
    clip: float = 1.0  # clip ratio c ∈ (0, 1] applied to amax (or to min and max)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"QuantSpec.bits must be an integer in 2..8, got {self.bits!r}")
        if self.granularity not in ("tensor", "channel", "group", "token"):
            raise ValueError(
                "QuantSpec.granularity must be one of 'tensor', 'channel', 'group', 'token', "
                f"got {self.granularity!r}"
            )
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(
                    "QuantSpec.group_size must be a positive integer when granularity='group', "
                    f"got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise ValueError(
                f"QuantSpec.group_size is only meaningful with granularity='group' "
                f"(got group_size={self.group_size!r} with granularity={self.granularity!r})"
            )
        if self.scale_mode not in ("restricted", "full"):
            raise ValueError(
                f"QuantSpec.scale_mode must be 'restricted' or 'full', got {self.scale_mode!r}"
            )
        if isinstance(self.clip, bool) or not (
                isinstance(self.clip, (int, float)) and 0.0 < float(self.clip) <= 1.0):
            raise ValueError(f"QuantSpec.clip must be a ratio in (0, 1], got {self.clip!r}")

    @property
    def qmin(self) -> int:
        """Smallest grid value: −2^(b−1) (symmetric) or 0 (asymmetric, unsigned)."""
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest grid value: 2^(b−1) − 1 (symmetric) or 2^b − 1 (asymmetric, unsigned)."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def scale_divisor(self) -> float:
        """The denominator of the symmetric scale: qmax ("restricted") or qmax + ½ ("full")."""
        qmax = 2 ** (self.bits - 1) - 1
        return float(qmax) if self.scale_mode == "restricted" else qmax + 0.5


# --- input checks --------------------------------------------------------------------------


def check_finite(x: Tensor, name: str) -> None:
    """Raise a ``ValueError`` naming ``name`` if ``x`` holds NaN or ±Inf (SPEC §1)."""
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {n_bad} non-finite value(s) (NaN or Inf); quantization "
            "scales would be undefined. Check the upstream computation."
        )


def _to_float32(x: Tensor, name: str) -> Tensor:
    """x cast to float32 after the type checks; finiteness is *not* checked here."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float32)


def _as_float32(x: Tensor, name: str) -> Tensor:
    x = _to_float32(x, name)
    check_finite(x, name)
    return x


def _check_finite_stats(stats: tuple[Tensor, ...], x: Tensor, name: str) -> None:
    """The finiteness check of SPEC §1 done on the reductions instead of on x.

    amax/amin propagate NaN and ±Inf, so every element of x is finite iff every per-unit
    max and min (or |x| max) is: one check over the (small) scale-shaped tensors replaces
    a full pass over x. On failure ``check_finite`` scans x to count and name the culprits.
    """
    if not all(bool(torch.isfinite(t).all()) for t in stats):
        check_finite(x, name)
        raise AssertionError("unreachable: a non-finite reduction of a finite tensor")


def _check_shape(x: Tensor, spec: QuantSpec, name: str) -> None:
    if spec.granularity == "channel" and x.ndim != 2:
        raise ValueError(
            f"{name}: granularity='channel' expects a 2-D weight (N, K), got shape "
            f"{tuple(x.shape)}; use granularity='token' for activations (..., K)"
        )
    if spec.granularity in ("token", "group") and x.ndim < 1:
        raise ValueError(f"{name}: granularity={spec.granularity!r} needs at least 1 dim")
    if spec.granularity == "group":
        K = x.shape[-1]
        if K % spec.group_size != 0:
            raise ValueError(
                f"group_size={spec.group_size} does not divide the last dim K={K} of {name}; "
                "choose a group size that divides K"
            )


# --- scales ----------------------------------------------------------------------------------


def _grouped(x: Tensor, spec: QuantSpec) -> Tensor:
    """View x so that the last axis holds exactly the elements sharing one scale."""
    if spec.granularity == "tensor":
        return x.reshape(1, -1)  # (1, numel)
    if spec.granularity == "group":
        return x.reshape(*x.shape[:-1], x.shape[-1] // spec.group_size, spec.group_size)
    return x  # channel / token: the last axis is already the shared one


def _fix_zero_scale(s: Tensor) -> Tensor:
    # amax = 0 (all-zero row/group/token) or an underflow to 0: s = 1, so q = round(x) = 0.
    return torch.where(s == 0, torch.ones_like(s), s)


def qparams(x: Tensor, spec: QuantSpec, clip: Tensor | float | None = None,
            name: str = "x") -> tuple[Tensor, Tensor]:
    """Scale and zero point of ``x`` under ``spec`` (SPEC §1).

    ``clip`` overrides ``spec.clip``; a tensor clip must broadcast to the scale's shape
    (e.g. a per-output-channel clip of shape (N, 1)). Returns float32 ``scale`` and int32
    ``zero`` (all zeros when symmetric), shaped (N, 1) for channel, (..., 1) for token,
    (..., K/g) for group, and x.ndim ones for tensor.
    """
    x = _to_float32(x, name)
    _check_shape(x, spec, name)
    return _qparams(x, spec, clip, name)


def _qparams(x: Tensor, spec: QuantSpec, clip: Tensor | float | None, name: str
             ) -> tuple[Tensor, Tensor]:
    """``qparams`` on a float32 x of a checked shape; raises if x is not finite."""
    c = torch.as_tensor(spec.clip if clip is None else clip, dtype=torch.float32)
    xg = _grouped(x, spec)  # (..., m): the m elements on the last axis share one scale
    if spec.symmetric:
        # max|x| = max(max x, −min x) exactly: two reductions, no |x| tensor to allocate;
        # NaN/Inf in a unit shows up here (both reductions and maximum propagate them)
        amax = torch.maximum(xg.amax(dim=-1), xg.amin(dim=-1).neg())  # (...,)
        _check_finite_stats((amax,), x, name)
        amax = _shape_params(amax, x, spec)  # scale's shape
        s = (c * amax) / torch.tensor(spec.scale_divisor, dtype=torch.float32)
        s = _fix_zero_scale(s)
        return s, torch.zeros_like(s, dtype=torch.int32)
    zero_f = torch.zeros((), dtype=torch.float32)
    x_min, x_max = xg.amin(dim=-1), xg.amax(dim=-1)  # (...,)
    _check_finite_stats((x_min, x_max), x, name)
    lo = _shape_params(torch.minimum(x_min, zero_f), x, spec) * c  # min with 0, × c
    hi = _shape_params(torch.maximum(x_max, zero_f), x, spec) * c  # max with 0, × c
    s = _fix_zero_scale((hi - lo) / torch.tensor(float(spec.qmax), dtype=torch.float32))
    z = torch.clamp(torch.round(-lo / s), 0, spec.qmax).to(torch.int32)
    return s, z


def _shape_params(p: Tensor, x: Tensor, spec: QuantSpec) -> Tensor:
    if spec.granularity == "tensor":
        return p.reshape((1,) * x.ndim)
    if spec.granularity == "group":
        return p  # (..., K/g)
    return p.unsqueeze(-1)  # (..., 1)


def _expand(p: Tensor, x: Tensor, spec: QuantSpec) -> Tensor:
    """Broadcast per-group parameters (..., K/g) to x's shape (..., K)."""
    if spec.granularity == "group":
        return p.repeat_interleave(spec.group_size, dim=-1)
    return p


# --- the pair ---------------------------------------------------------------------------------


def quantize_to_grid(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec,
                     name: str = "x") -> Tensor:
    """q = clamp(round(x / s) [+ z], qmin, qmax) with given parameters → int32 (SPEC §1)."""
    x = _as_float32(x, name)
    return _grid_values(x, scale, zero, spec).to(torch.int32)


def _grid_values(x: Tensor, scale: Tensor, zero: Tensor, spec: QuantSpec) -> Tensor:
    """clamp(round(x / s) [+ z], qmin, qmax) as float32 (exact: small integers)."""
    s = _expand(scale.to(torch.float32), x, spec)
    q = torch.round(x / s)  # true division, round half to even
    if not spec.symmetric:
        q = q + _expand(zero, x, spec).to(torch.float32)
    return torch.clamp(q, spec.qmin, spec.qmax)


def quantize(x: Tensor, spec: QuantSpec, clip: Tensor | float | None = None,
             name: str = "x") -> tuple[Tensor, Tensor, Tensor]:
    """Quantize ``x`` → ``(q, scale, zero)``: int32 grid values, float32 scales, int32 zeros."""
    x = _to_float32(x, name)
    _check_shape(x, spec, name)
    scale, zero = _qparams(x, spec, clip, name)  # raises unless x is finite
    return _grid_values(x, scale, zero, spec).to(torch.int32), scale, zero


def dequantize(q: Tensor, scale: Tensor, zero: Tensor | None, spec: QuantSpec) -> Tensor:
    """x̂ = (q − z) · s in float32 (SPEC §1); ``zero`` may be None when symmetric."""
    if q.is_floating_point():
        raise ValueError(f"q must be an integer tensor, got dtype {q.dtype}")
    if zero is None and not spec.symmetric:
        # an asymmetric q_u is offset by z: dropping it would silently shift every value
        raise ValueError("zero must be given for an asymmetric spec (x̂ = (q_u − z) · s)")
    if not spec.symmetric:
        qf = (q.to(torch.int32) - _expand(zero, q, spec).to(torch.int32)).to(torch.float32)
    else:
        qf = q.to(torch.float32)
    return qf * _expand(scale.to(torch.float32), q, spec)


def fake_quantize(x: Tensor, spec: QuantSpec, clip: Tensor | float | None = None,
                  name: str = "x", inplace: bool = False) -> Tensor:
    """dequantize(quantize(x)): the value the quantized model computes with, float32.

    Bit for bit the pair's result, computed without the int32 round trip: the grid values
    are small integers, exact in float32, so (q [− z]) · s is the same product. The
    finiteness check runs on the scale reductions (``_check_finite_stats``), not on x: this
    is the activation hot path of every quantized forward. ``inplace=True`` writes the
    result into x itself when x is float32 (a fresh tensor the caller owns, such as a
    rotation's output; not one autograd needs), sparing one allocation: same values.
    """
    x = _to_float32(x, name)
    _check_shape(x, spec, name)
    scale, zero = _qparams(x, spec, clip, name)  # raises unless x is finite
    xg = _grouped(x, spec)  # (..., m): the m elements sharing one scale
    s = _per_unit(scale, spec)  # broadcasts against xg
    # One fresh tensor, then in-place steps: on CPU a new large tensor per step costs more
    # (page faults) than the arithmetic. Same operations, same order as the pair.
    q = (xg.div_(s) if inplace else torch.div(xg, s)).round_()  # true division, half to even
    if spec.symmetric:
        q.clamp_(spec.qmin, spec.qmax)
    else:
        z = _per_unit(zero, spec).to(torch.float32)
        q.add_(z).clamp_(spec.qmin, spec.qmax).sub_(z)  # q_u − z, exact in float32
    return q.mul_(s).reshape(x.shape)  # (q [− z]) · s


def _per_unit(p: Tensor, spec: QuantSpec) -> Tensor:
    """Scale-shaped parameters broadcastable against ``_grouped(x)``."""
    if spec.granularity == "tensor":
        return p.reshape(1, 1)
    if spec.granularity == "group":
        return p.unsqueeze(-1)  # (..., K/g, 1)
    return p  # (..., 1)


# --- clip search ----------------------------------------------------------------------------

#: SPEC §4.3(b): activation clip candidates 1.00, 0.95, …, 0.60
ACT_CLIP_GRID = tuple(round(1.0 - 0.05 * i, 2) for i in range(9))
#: SPEC §4.3(b): weight clip candidates c = 1 − i/100, i < 20
WEIGHT_CLIP_GRID = tuple(round(1.0 - i / 100, 2) for i in range(20))


def search_clip(x: Tensor, spec: QuantSpec, candidates=WEIGHT_CLIP_GRID,
                weights: Tensor | None = None, per_row: bool = False,
                name: str = "x") -> Tensor:
    """The clip ratio minimizing the (weighted) squared error Σ w ⊙ (x − x̂_c)².

    ``weights`` broadcasts to ``x`` (e.g. per-token weights (T, 1), or per-column importance
    such as diag(H) of shape (1, K)); None means 1. With ``per_row`` a separate ratio is
    chosen for each row of the last-but-one axis (x must then be 2-D), returned as (N, 1);
    otherwise a 0-d tensor. Ties go to the larger ratio (SPEC §4.3b), which is why
    candidates are scanned in descending order and only a strict improvement wins.
    """
    x = _as_float32(x, name)
    if per_row and x.ndim != 2:
        raise ValueError(f"{name}: per_row clip search expects a 2-D tensor, got {tuple(x.shape)}")
    if weights is not None:
        weights = _as_float32(weights, "weights")
        if (weights < 0).any():
            raise ValueError("weights must be non-negative")
    cands = sorted({float(c) for c in candidates}, reverse=True)
    if not cands or not all(0.0 < c <= 1.0 for c in cands):
        raise ValueError(f"candidates must be non-empty ratios in (0, 1], got {candidates!r}")
    best_err, best_c = None, None
    for c in cands:
        err = (x - fake_quantize(x, spec, clip=c)).square()
        if weights is not None:
            err = err * weights
        err = err.sum(dim=-1, keepdim=True) if per_row else err.sum()  # (N, 1) or ()
        c_t = torch.full_like(err, c)
        if best_err is None:
            best_err, best_c = err, c_t
        else:
            better = err < best_err  # strict: ties keep the larger (earlier) ratio
            best_err = torch.where(better, err, best_err)
            best_c = torch.where(better, c_t, best_c)
    return best_c
