"""FAIR-Calib proper: Stage II calibration (SPEC §4). Stage I (probe, prior) comes next."""

from fairref.fair.calibrate import CalibConfig, CalibReport, quantize_model
from fairref.fair.solvers import (FlatCalibration, FlatConfig, TransformedQuantLinear,
                                  fake_quantize_ste, flat_block, search_act_clip,
                                  search_weight_clip)

__all__ = ["CalibConfig", "CalibReport", "quantize_model", "FlatCalibration", "FlatConfig",
           "TransformedQuantLinear", "fake_quantize_ste", "flat_block", "search_act_clip",
           "search_weight_clip"]
