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
]
