"""Quantization core (SPEC §1, §4.3a): grids, int4 integer path, rotations, GPTQ, QuantLinear."""

from fairref.quant.grid import (
    ACT_CLIP_GRID,
    WEIGHT_CLIP_GRID,
    QuantSpec,
    dequantize,
    fake_quantize,
    qparams,
    quantize,
    quantize_to_grid,
    search_clip,
)
from fairref.quant.gptq import GPTQResult, gptq_quantize
from fairref.quant.hessian import HessianAccumulator, hessian
from fairref.quant.int4 import (
    int4_matmul,
    pack_int4,
    pack_int32_ct,
    unpack_int4,
    unpack_int32_ct,
)
from fairref.quant.linear import InputTransform, QuantLinear, quantize_linears, transform_from_dict
from fairref.quant.rotation import RotationSpec, hadamard, random_orthogonal, rotation

__all__ = [
    "ACT_CLIP_GRID",
    "WEIGHT_CLIP_GRID",
    "QuantSpec",
    "dequantize",
    "fake_quantize",
    "qparams",
    "quantize",
    "quantize_to_grid",
    "search_clip",
    "GPTQResult",
    "gptq_quantize",
    "HessianAccumulator",
    "hessian",
    "int4_matmul",
    "pack_int4",
    "pack_int32_ct",
    "unpack_int4",
    "unpack_int32_ct",
    "InputTransform",
    "QuantLinear",
    "quantize_linears",
    "transform_from_dict",
    "RotationSpec",
    "hadamard",
    "random_orthogonal",
    "rotation",
]
