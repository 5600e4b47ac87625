"""QuantLinear: a linear layer with quantized weights and activations (SPEC §1).

The module stores the integer weight q_w of the transformed weight, its float32 scales
(and zero points, for asymmetric fake-quant weights) and the float bias. It offers two
forward paths over the same stored operands:

- ``path="fake"`` (default): ``F.linear(fake_quantize(T(x), a_spec), Ŵ, b)`` with
  Ŵ = dequantize(q_w). This is what calibration, evaluation and the toy report use.
- ``path="int"``: quantize the activations per token with ``a_spec`` and call the
  integer reference ``int4_matmul`` (exact integer accumulation + pinned float32
  epilogue), then add the bias. Its output equals ``int4_matmul`` on the same operands
  bit for bit, and agrees with the fake path to float32 rounding (bound: SPEC §1, checked
  in tests/test_quant_linear.py).

**Ŵ is cached.** It is a pure function of (q_w, s_w, z_w), computed in ``__init__`` and
recomputed whenever one of those buffers is replaced or modified in place (its tensor
identity or autograd version counter changed: ``load_state_dict``, ``.to(device)``, an
in-place ``copy_``). It is not part of the state dict: the state stays the integers and
scales, so a reload gives the same Ŵ bit for bit.

**The input-transform slot.** ``transform`` (None = identity) is any object with

- ``in_features`` (K) and ``apply(x)``: (…, K) → (…, K), float32 — the activation side,
  applied in every forward before activation quantization. It returns a new tensor, never
  a view of x or of its own state: the forward quantizes that tensor in place;
- ``apply_weight(W)``: (N, K) → (N, K) — the weight side, applied once when a float
  weight is quantized (``from_linear``, and by the calibration solvers before GPTQ);
- ``to_dict()``: a JSON-able description with a ``"type"`` key, for checkpoints (SPEC §7).

so that F.linear(T(x), T_w(W)) = F.linear(x, W) in exact arithmetic. Today's transform is
``fairref.quant.rotation.RotationSpec`` (QuaRot-style: T(x) = x R, T_w(W) = W R, SPEC §1).
The learned transform of SPEC §4.3(d) fits the same slot: T(x) = x diag(ζ)⁻¹ P with
P = P_l ⊗ P_r applied as vec(P_lᵀ X P_r), T_w(W) = W diag(ζ) P⁻ᵀ; register its
``from_dict`` in ``TRANSFORMS`` so ``transform_from_dict`` can rebuild it.

Legend: B... leading batch dims, T = prod(B...) tokens, K in_features, N out_features,
g group size, G = K/g.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairref.quant.grid import QuantSpec, dequantize, fake_quantize, quantize
from fairref.quant.int4 import int4_matmul
from fairref.quant.rotation import RotationKind, RotationSpec
from fairref.quant.transform import KroneckerTransform


@runtime_checkable
class InputTransform(Protocol):
    """An invertible transform of a linear's K inputs (see the module docstring)."""

    in_features: int

    def apply(self, x: Tensor) -> Tensor: ...

    def apply_weight(self, W: Tensor) -> Tensor: ...

    def to_dict(self) -> dict: ...


#: ``to_dict()["type"]`` → the constructor that inverts it (``transform_from_dict``)
TRANSFORMS: dict[str, Callable[[dict], InputTransform]] = {
    "rotation": RotationSpec.from_dict,  # SPEC §1 (QuaRot-style)
    "kronecker": KroneckerTransform.from_dict,  # SPEC §4.3(d) (the flat solver's)
}


def transform_from_dict(d: dict | None) -> InputTransform | None:
    """Rebuild an input transform from its ``to_dict()`` description (None → None)."""
    if d is None:
        return None
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown input transform type {kind!r} in {d!r}; known: "
                         f"{sorted(TRANSFORMS)}")
    return TRANSFORMS[kind](d)


def _scale_shape(spec: QuantSpec, N: int, K: int) -> tuple[int, int]:
    if spec.granularity == "group":
        return (N, K // spec.group_size)
    if spec.granularity == "tensor":
        return (1, 1)
    return (N, 1)


def _check_transform(transform, K: int) -> None:
    if transform is None:
        return
    if isinstance(transform, Tensor):
        raise ValueError("transform must be an input transform such as "
                         "RotationSpec('hadamard', K), not a dense matrix")
    if not isinstance(transform, InputTransform):
        raise ValueError(f"transform must have in_features, apply, apply_weight and to_dict "
                         f"(an InputTransform), got {type(transform).__name__}")
    if transform.in_features != K:
        raise ValueError(f"transform acts on {transform.in_features} features, the linear "
                         f"has K={K}")


class QuantLinear(nn.Module):
    """y = Q_a(T(x)) · Q_w(T_w(W))ᵀ + b, with a fake-quant and an integer path (SPEC §1)."""

    def __init__(self, q_w: Tensor, s_w: Tensor, z_w: Tensor | None, w_spec: QuantSpec,
                 a_spec: QuantSpec | None, bias: Tensor | None = None,
                 transform: InputTransform | None = None) -> None:
        super().__init__()
        if q_w.ndim != 2 or q_w.is_floating_point():
            raise ValueError(f"q must be an integer (N, K) tensor, got {q_w.dtype} {tuple(q_w.shape)}")
        N, K = q_w.shape
        if w_spec.granularity not in ("channel", "group", "tensor"):
            raise ValueError(f"w_spec.granularity must be 'channel', 'group' or 'tensor' for a "
                             f"weight, got {w_spec.granularity!r}")
        if w_spec.granularity == "group" and K % w_spec.group_size:
            raise ValueError(f"w_spec.group_size={w_spec.group_size} does not divide K={K}")
        if tuple(s_w.shape) != _scale_shape(w_spec, N, K):
            raise ValueError(f"scale must have shape {_scale_shape(w_spec, N, K)} for "
                             f"{w_spec.granularity!r} granularity, got {tuple(s_w.shape)}")
        if q_w.numel() and (int(q_w.min()) < w_spec.qmin or int(q_w.max()) > w_spec.qmax):
            raise ValueError(f"q has values outside [{w_spec.qmin}, {w_spec.qmax}] of w_spec")
        if bias is not None and tuple(bias.shape) != (N,):
            raise ValueError(f"bias must have shape ({N},), got {tuple(bias.shape)}")
        _check_transform(transform, K)
        if a_spec is not None and a_spec.granularity == "channel":
            raise ValueError("a_spec.granularity='channel' is for weights; use 'token' (SPEC §1)")
        self.in_features, self.out_features = K, N
        self.w_spec, self.a_spec = w_spec, a_spec
        self.transform = transform  # data, not a buffer: T applied to x (and W at build)
        self.register_buffer("q_w", q_w.to(torch.int32))  # (N, K) grid values of T_w(W)
        self.register_buffer("s_w", s_w.to(torch.float32))  # (N, 1), (N, G) or (1, 1)
        z = torch.zeros_like(self.s_w, dtype=torch.int32) if z_w is None else z_w.to(torch.int32)
        self.register_buffer("z_w", z)  # zero points; all 0 when symmetric
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        # the cache of Ŵ, built now rather than in the first forward (see W_hat)
        self._W_hat, self._W_hat_key = self.dequantized_weight(), self._weight_key()

    # --- constructors ----------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, w_spec: QuantSpec, a_spec: QuantSpec | None,
                    transform: InputTransform | None = None) -> "QuantLinear":
        """Round-to-nearest quantization of ``linear`` (of T_w(W) when ``transform`` is given)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach().to(torch.float32)  # (N, K)
        _check_transform(transform, W.shape[1])
        if transform is not None:
            W = transform.apply_weight(W)  # (N, K): e.g. W R, the weight in the rotated basis
        q, s, z = quantize(W, w_spec, name="linear.weight")
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, s, z, w_spec, a_spec, bias, transform)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor, zero: Tensor | None, w_spec: QuantSpec,
                       a_spec: QuantSpec | None, bias: Tensor | None = None,
                       transform: InputTransform | None = None) -> "QuantLinear":
        """Wrap an already-quantized weight (e.g. a GPTQ result for W R, SPEC §4.3a)."""
        return cls(q, scale, zero, w_spec, a_spec, bias, transform)

    # --- the cached weight -------------------------------------------------------------------

    def dequantized_weight(self) -> Tensor:
        """Ŵ = dequantize(q_w) (N, K), float32, recomputed from the stored integers."""
        z = None if self.w_spec.symmetric else self.z_w
        return dequantize(self.q_w, self.s_w, z, self.w_spec)

    def _weight_key(self) -> tuple:
        # the source tensors themselves (so an identity is never reused while cached) and
        # their autograd version counters, which every in-place write increments
        return tuple((t, t._version) for t in (self.q_w, self.s_w, self.z_w))

    def _apply(self, fn, *args, **kwargs):
        # .to(device) and friends replace the buffers: rebuild Ŵ there now, and drop the
        # references the old key holds to the replaced tensors
        out = super()._apply(fn, *args, **kwargs)
        self._W_hat, self._W_hat_key = self.dequantized_weight(), self._weight_key()
        return out

    @property
    def W_hat(self) -> Tensor:
        """The cached Ŵ, equal to ``dequantized_weight()`` bit for bit; rebuilt when q_w,
        s_w or z_w was replaced or modified in place since it was computed."""
        key = self._weight_key()
        if any(a is not b or va != vb for (a, va), (b, vb) in zip(key, self._W_hat_key)):
            self._W_hat, self._W_hat_key = self.dequantized_weight(), key
        return self._W_hat

    # --- forward -----------------------------------------------------------------------------

    def transformed_input(self, x: Tensor) -> Tensor:
        """T(x) (B..., K) in float32: what the activation quantizer sees."""
        xr = x.to(torch.float32)
        return xr if self.transform is None else self.transform.apply(xr)

    def forward(self, x: Tensor, path: str = "fake") -> Tensor:
        """y (B..., N) from x (B..., K) along the ``"fake"`` or ``"int"`` path."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in K={self.in_features} features, got {tuple(x.shape)}")
        if path not in ("fake", "int"):
            raise ValueError(f"path must be 'fake' or 'int', got {path!r}")
        xr = self.transformed_input(x)  # (B..., K)
        if path == "fake":
            if self.a_spec is None:
                return F.linear(xr, self.W_hat, self.bias).to(x.dtype)
            # T(x) is a fresh tensor (the slot's contract): quantize it in place unless it
            # shares x's memory or autograd needs it
            own = (xr.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
                   and not (torch.is_grad_enabled() and xr.requires_grad))
            xa = fake_quantize(xr, self.a_spec, name="x", inplace=own)
            return F.linear(xa, self.W_hat, self.bias).to(x.dtype)
        return self._forward_int(xr).to(x.dtype)

    def _forward_int(self, xr: Tensor) -> Tensor:
        if self.a_spec is None:
            raise ValueError("path='int' needs a_spec (weight-only QuantLinear has only the "
                             "fake path)")
        if not (self.a_spec.symmetric and self.w_spec.symmetric):
            raise ValueError("path='int' is symmetric only (SPEC §1): use symmetric a_spec "
                             "and w_spec, or path='fake'")
        if self.a_spec.granularity not in ("token", "tensor"):
            raise ValueError(f"path='int' needs per-token (or per-tensor) activation scales, "
                             f"got a_spec.granularity={self.a_spec.granularity!r}")
        lead = xr.shape[:-1]
        x2 = xr.reshape(-1, self.in_features)  # (T, K)
        q_a, s_a, _ = quantize(x2, self.a_spec, name="x")  # (T, K) int32, (T, 1) or (1, 1)
        s_a = s_a.expand(x2.shape[0], 1).contiguous()  # (T, 1)
        N = self.out_features
        g = self.w_spec.group_size if self.w_spec.granularity == "group" else None
        s_w = self.s_w.expand(N, 1).contiguous() if self.w_spec.granularity == "tensor" else self.s_w
        out = int4_matmul(q_a, s_a, self.q_w, s_w, group_size=g,
                          bits_a=self.a_spec.bits, bits_w=self.w_spec.bits)  # (T, N)
        if self.bias is not None:
            out = out + self.bias  # one float32 add per output, after the epilogue
        return out.reshape(*lead, N)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"w_bits={self.w_spec.bits}, a_bits={None if self.a_spec is None else self.a_spec.bits}, "
                f"transform={_describe(self.transform)}")


def _describe(transform: InputTransform | None) -> str | None:
    """The transform's ``to_dict()`` in one short line: scalars as they are, each stored
    matrix or vector by its name and shape (``print(model)`` must not print the matrices)."""
    if transform is None:
        return None
    parts = []
    for k, v in transform.to_dict().items():
        if isinstance(v, list):
            parts.append(f"{k}={_shape(v)}")
        elif v is not None:
            parts.append(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")
    return "{" + ", ".join(parts) + "}"


def _shape(v: list) -> tuple[int, ...]:
    """The shape of a nested list (its first element at each depth)."""
    return (len(v),) + (_shape(v[0]) if v and isinstance(v[0], list) else ())


def quantize_linears(module: nn.Module, names: list[str], w_spec: QuantSpec,
                     a_spec: QuantSpec | None, rotation_kind: RotationKind | None = None,
                     seed: int = 0) -> nn.Module:
    """Replace the named ``nn.Linear`` submodules of ``module`` by RTN ``QuantLinear``s.

    ``names`` are dotted paths as in ``module.named_modules()``. With ``rotation_kind``
    each linear gets the transform RotationSpec(rotation_kind, K, seed) (SPEC §1). Modifies
    ``module`` in place and returns it.
    """
    for name in names:
        try:
            lin = module.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"names: no submodule {name!r} in the module") from e
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"names: {name!r} is a {type(lin).__name__}, not an nn.Linear")
        T = None if rotation_kind is None else RotationSpec(rotation_kind, lin.in_features, seed)
        ql = QuantLinear.from_linear(lin, w_spec, a_spec, transform=T)
        ql.to(lin.weight.device)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, ql)
    return module
