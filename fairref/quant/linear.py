"""QuantLinear: a linear layer with quantized weights and activations (SPEC §1).

The module stores the integer weight q_w of W R (R the optional rotation, identity when
absent), its float32 scales (and zero points, for asymmetric fake-quant weights) and the
float bias. It offers two forward paths over the same stored operands:

- ``path="fake"`` (default, differentiable in x): ``F.linear(fake_quant_a(x R), Ŵ) + b``
  with Ŵ = dequantize(q_w). This is what calibration and evaluation use.
- ``path="int"``: quantize the activations per token with ``a_spec`` and call the
  integer reference ``int4_matmul`` (exact integer accumulation + pinned float32
  epilogue), then add the bias. Its output equals ``int4_matmul`` on the same operands
  bit for bit, and agrees with the fake path to float32 rounding (bound: SPEC §1, checked
  in tests/test_quant_linear.py).

``a_spec=None`` means weight-only quantization (fake path only). Rotation: since
x Wᵀ = (x R)(W R)ᵀ, the module rotates its input by R and holds the weight of W R.

Legend: B... leading batch dims, T = prod(B...) tokens, K in_features, N out_features,
g group size, G = K/g.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairref.quant.grid import QuantSpec, dequantize, fake_quantize, quantize
from fairref.quant.int4 import int4_matmul
from fairref.quant.rotation import RotationKind, rotation as make_rotation


def _scale_shape(spec: QuantSpec, N: int, K: int) -> tuple[int, int]:
    if spec.granularity == "group":
        return (N, K // spec.group_size)
    if spec.granularity == "tensor":
        return (1, 1)
    return (N, 1)


class QuantLinear(nn.Module):
    """y = Q_a(x R) · Q_w(W R)ᵀ + b, with a fake-quant and an integer path (SPEC §1)."""

    def __init__(self, q_w: Tensor, s_w: Tensor, z_w: Tensor | None, w_spec: QuantSpec,
                 a_spec: QuantSpec | None, bias: Tensor | None = None,
                 rotation: Tensor | None = None) -> None:
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
        if rotation is not None and tuple(rotation.shape) != (K, K):
            raise ValueError(f"rotation must be ({K}, {K}) for K={K}, got {tuple(rotation.shape)}")
        if a_spec is not None and a_spec.granularity == "channel":
            raise ValueError("a_spec.granularity='channel' is for weights; use 'token' (SPEC §1)")
        self.in_features, self.out_features = K, N
        self.w_spec, self.a_spec = w_spec, a_spec
        self.register_buffer("q_w", q_w.to(torch.int32))  # (N, K) grid values of W R
        self.register_buffer("s_w", s_w.to(torch.float32))  # (N, 1), (N, G) or (1, 1)
        z = torch.zeros_like(self.s_w, dtype=torch.int32) if z_w is None else z_w.to(torch.int32)
        self.register_buffer("z_w", z)  # zero points; all 0 when symmetric
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32))
        self.register_buffer("R", None if rotation is None else rotation.to(torch.float32))

    # --- constructors ----------------------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, w_spec: QuantSpec, a_spec: QuantSpec | None,
                    rotation: Tensor | None = None) -> "QuantLinear":
        """Round-to-nearest quantization of ``linear`` (of W R when ``rotation`` is given)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach().to(torch.float32)  # (N, K)
        if rotation is not None:
            if tuple(rotation.shape) != (W.shape[1], W.shape[1]):
                raise ValueError(f"rotation must be ({W.shape[1]}, {W.shape[1]}), "
                                 f"got {tuple(rotation.shape)}")
            W = W @ rotation.to(torch.float32)  # (N, K): the weight in the rotated basis
        q, s, z = quantize(W, w_spec, name="linear.weight")
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, s, z, w_spec, a_spec, bias, rotation)

    @classmethod
    def from_quantized(cls, q: Tensor, scale: Tensor, zero: Tensor | None, w_spec: QuantSpec,
                       a_spec: QuantSpec | None, bias: Tensor | None = None,
                       rotation: Tensor | None = None) -> "QuantLinear":
        """Wrap an already-quantized weight (e.g. a GPTQ result for W R, SPEC §4.3a)."""
        return cls(q, scale, zero, w_spec, a_spec, bias, rotation)

    # --- forward -----------------------------------------------------------------------------

    def dequantized_weight(self) -> Tensor:
        """Ŵ = dequantize(q_w) (N, K), float32, in the rotated basis (of W R)."""
        z = None if self.w_spec.symmetric else self.z_w
        return dequantize(self.q_w, self.s_w, z, self.w_spec)

    def forward(self, x: Tensor, path: str = "fake") -> Tensor:
        """y (B..., N) from x (B..., K) along the ``"fake"`` or ``"int"`` path."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in K={self.in_features} features, got {tuple(x.shape)}")
        xr = x.to(torch.float32)
        if self.R is not None:
            xr = xr @ self.R  # (B..., K) rotated input
        if path == "fake":
            xa = xr if self.a_spec is None else fake_quantize(xr, self.a_spec, name="x")
            return F.linear(xa, self.dequantized_weight(), self.bias).to(x.dtype)
        if path == "int":
            return self._forward_int(xr).to(x.dtype)
        raise ValueError(f"path must be 'fake' or 'int', got {path!r}")

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
                f"rotated={self.R is not None}")


def quantize_linears(module: nn.Module, names: list[str], w_spec: QuantSpec,
                     a_spec: QuantSpec | None, rotation_kind: RotationKind | None = None,
                     seed: int = 0) -> nn.Module:
    """Replace the named ``nn.Linear`` submodules of ``module`` by RTN ``QuantLinear``s.

    ``names`` are dotted paths as in ``module.named_modules()``. With ``rotation_kind``
    each linear gets R = rotation(K, rotation_kind, seed). Modifies ``module`` in place
    and returns it.
    """
    for name in names:
        try:
            lin = module.get_submodule(name)
        except AttributeError as e:
            raise ValueError(f"names: no submodule {name!r} in the module") from e
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"names: {name!r} is a {type(lin).__name__}, not an nn.Linear")
        R = None if rotation_kind is None else make_rotation(lin.in_features, rotation_kind, seed)
        ql = QuantLinear.from_linear(lin, w_spec, a_spec, rotation=R)
        ql.to(lin.weight.device)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, ql)
    return module
