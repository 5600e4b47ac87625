"""float64 inputs for the bounds: the one cast every function of :mod:`fairref.bounds` uses.

Conventions (theory/README.md): everything is computed in float64, so that logits of
magnitude 1e3 and vocabularies of 1e5 stay accurate to ~1e-13·max|z|; a non-finite input
is refused rather than cast (a NaN would pass every ``<=`` silently).
"""

from __future__ import annotations

import torch
from torch import Tensor

_F64 = torch.float64


def _f64(x: Tensor | float, name: str) -> Tensor:
    """Cast to float64, refusing non-finite inputs (a NaN would pass every ``<=`` silently)."""
    x = torch.as_tensor(x).to(_F64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or ±inf; bounds need finite inputs")
    return x
