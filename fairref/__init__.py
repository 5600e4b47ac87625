"""fairref — reference implementation of FAIR-Calib (see SPEC.md).

Subpackages: ``quant`` (SPEC §1, §4.3a), ``models`` (§2, §7), ``diffusion`` (§2 samplers
and traces); ``bounds`` (§6).
"""

__version__ = "0.1.0"
