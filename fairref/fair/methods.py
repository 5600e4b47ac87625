"""The named calibration methods of SPEC §4.4, as data.

Every method runs through the same code path; a method is a point on two axes plus the
switches that compose with each:

- *solver*: ``"rtn"`` (no data), ``"gptq"`` (SPEC §4.3(a), weighted GPTQ per linear) or
  ``"flat"`` (§4.3(d), learnable block calibration on the weighted L_ℓ);
- *data*: ``"none"``, ``"plain"`` (the calibration prompts with the teacher's answers
  written in, nothing masked: the text-like inputs ordinary PTQ calibrates on) or
  ``"masked"`` (teacher states x_t, §4.1);
- *weights*: ``"uniform"`` (w ≡ 1) or ``"prior"`` (the Stage I prior, §3.4), with the prior
  knobs the ablations change (λ, γ, a shuffled π).

Rotation (a per-linear Hadamard, §1) is a switch; its default is stated with each preset.
SmoothQuant (α = ½, ``fairref.quant.smooth``) enters through the flat solver, whose ζ it
initializes (and which learns ζ further); a SmoothQuant switch on the RTN / GPTQ paths is
not wired yet. Methods on one data axis share the same states, so only w and the
solver differ between them, which keeps every comparison and ablation exact (§4.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Method:
    """One named method of SPEC §4.4."""

    name: str
    solver: Literal["rtn", "gptq", "flat"]
    data: Literal["none", "plain", "masked"]
    weights: Literal["uniform", "prior"] = "uniform"
    rotation: Literal["hadamard"] | None = "hadamard"  # per-linear rotation (§1)
    lam: float | None = None  # prior's λ override (None: the prior's own, ½ by default)
    gamma: float | None = None  # frontier emphasis γ override (None: the default, 1)
    shuffled: bool = False  # π permuted over positions with a fixed seed (a control)
    summary: str = ""

    @property
    def needs_prior(self) -> bool:
        """Whether the method weights tokens by a Stage I prior (and so needs ``--prior``)."""
        return self.weights == "prior"

    @property
    def needs_data(self) -> bool:
        return self.data != "none"


_FAIR = dict(data="masked", weights="prior")

#: every named method, by name (SPEC §4.4)
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("rtn", "rtn", "none",
           summary="round to nearest, Hadamard rotation, no data"),
    Method("gptq", "gptq", "plain", rotation=None,
           summary="GPTQ on plain unmasked sequences, w ≡ 1, no rotation"),
    Method("quarot", "gptq", "plain",
           summary="Hadamard rotation + GPTQ on plain sequences, w ≡ 1 (QuaRot)"),
    Method("flatquant", "flat", "plain",
           summary="learnable block calibration on plain sequences, w ≡ 1 (FlatQuant-style)"),
    Method("masked-uniform", "flat", "masked",
           summary="flat solver on teacher states, w ≡ 1 (≈ DLLMQuant's mask-aware data)"),
    Method("masked-uniform-gptq", "gptq", "masked",
           summary="GPTQ on teacher states, w ≡ 1"),
    Method("fair", "flat", **_FAIR,
           summary="FAIR-Calib: flat solver on teacher states weighted by the prior"),
    Method("fair-gptq", "gptq", **_FAIR,
           summary="FAIR-Calib with the GPTQ solver"),
    Method("fair-frontier-only", "flat", **_FAIR, lam=1.0,
           summary="ablation: prior from frontier hits only (λ = 1)"),
    Method("fair-reliability-only", "flat", **_FAIR, lam=0.0,
           summary="ablation: prior from masked-stage reliability only (λ = 0)"),
    Method("fair-no-emphasis", "flat", **_FAIR, gamma=0.0,
           summary="ablation: no extra weight on frontier states (γ = 0)"),
    Method("fair-shuffled", "flat", **_FAIR, shuffled=True,
           summary="control: π permuted over positions (should not help)"),
]}


def get_method(name: str) -> Method:
    """The method called ``name``; an error listing the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown method {name!r}{hint}; known: {', '.join(METHODS)}") from None
