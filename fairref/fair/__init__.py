"""FAIR-Calib proper (SPEC §3, §4).

- Stage I: ``probe.py`` (teacher rollouts, frontier band, fragility-weighted hits,
  reliability), ``prior.py`` (the position prior π and the token weights w).
- Stage II: ``states.py`` (calibration states from the teacher's traces), ``calibrate.py``
  (the sequential block loop), ``clip_search.py`` (solver (b)), ``flat.py`` (solver (d),
  the learnable "flat" calibration),
  ``methods.py`` (the named methods as data).
"""

from fairref.fair.calibrate import CalibConfig, CalibReport, quantize_model
from fairref.fair.methods import METHODS, Method, get_method
from fairref.fair.prior import Prior, PriorConfig, estimate_prior, row_weights, token_weights
from fairref.fair.probe import ProbeResult, frontier_band, probe, teacher_rollouts
from fairref.fair.clip_search import search_act_clip, search_weight_clip
from fairref.fair.flat import FlatCalibration, FlatConfig, fake_quantize_ste, flat_block
from fairref.fair.states import CalibStates, plain_inputs, state_steps, teacher_states

__all__ = [
    "CalibConfig", "CalibReport", "quantize_model",
    "METHODS", "Method", "get_method",
    "Prior", "PriorConfig", "estimate_prior", "row_weights", "token_weights",
    "ProbeResult", "frontier_band", "probe", "teacher_rollouts",
    "FlatCalibration", "FlatConfig", "fake_quantize_ste", "flat_block", "search_act_clip",
    "search_weight_clip",
    "CalibStates", "plain_inputs", "state_steps", "teacher_states",
]
