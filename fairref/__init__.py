"""fairref — reference implementation of FAIR-Calib (see SPEC.md).

Subpackages: ``quant`` (SPEC §1, §4.3a), ``models`` (§2, §7), ``diffusion`` (§2 samplers
and traces); ``bounds`` (§6); ``files`` (reading user files with clear errors, writing
atomically, §7); ``cli`` (the ``fairref`` command, §8).
"""

#: the version when fairref runs from a source tree without installed metadata; keep it
#: equal to pyproject.toml's (tests/test_cli.py checks)
__version__ = "0.1.0"
