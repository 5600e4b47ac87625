"""FAIR-Calib proper: Stage II calibration (SPEC §4). Stage I (probe, prior) comes next."""

from fairref.fair.calibrate import CalibConfig, CalibReport, quantize_model

__all__ = ["CalibConfig", "CalibReport", "quantize_model"]
