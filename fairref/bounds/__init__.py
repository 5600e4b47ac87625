"""The theorems of SPEC §6 as functions that return both sides of each inequality.

Every function here evaluates one statement of ``theory/`` on concrete tensors: the
measured quantity (a KL, a flip indicator) next to the bound the theorem puts on it, so
that a test or a ``paper_repro`` script checks ``measured <= bound`` in one line.
One submodule per kind of statement; every public name is re-exported here
(``from fairref.bounds import kl_certificate``).

:mod:`fairref.bounds.logits`, the KL of a logit perturbation:

- T1 (theory/T1_logit_bound.md)      :func:`kl_logit_bound`, :func:`kl_divergence`
- T1″ (theory/T1pp_two_sided_certificate.md) :func:`kl_certificate`, :func:`psi`,
  :func:`kl_divergence_log1p`

:mod:`fairref.bounds.hidden`, lifted through the final RMSNorm and the LM head:

- T2 (theory/T2_hidden_state_lift.md) :func:`hidden_lift_bound`, :func:`lift_constant`,
  :func:`rms_norm`, :func:`spectral_norm`,
  :func:`fisher_form` (its second-order term, for the surrogate's correlations)
- T3 (theory/T3_surrogate.md)        :func:`surrogate_bound`, :func:`inner_surrogate_weights`

:mod:`fairref.bounds.flips`, decision flips:

- T4, T4′ (theory/T4_frontier_flips.md) :func:`flip_bounds`
- T4s (theory/T4_frontier_flips.md)  :func:`set_flip_bound`

Conventions (theory/README.md): KL in nats, the teacher first, KL = KL(p ‖ q) with
p = softmax(z) the teacher and q = softmax(z + δ) the quantized model. Everything is
computed in float64 through ``log_softmax`` so that logits of magnitude 1e3 and
vocabularies of 1e5 stay accurate to ~1e-13·max|z| (the cast: ``fairref.bounds._float64``).

Inputs are the teacher's and the quantized model's logits (or final hidden states) at
the same states, batched over positions: any leading dims ``...``, the vocabulary last.

Checked against: independent oracles in the tests (a 50-digit mpmath KL, a scipy
log-sum-exp KL at V = 50 000, autograd Jacobians of RMSNorm, numpy re-derivations of every
bound), and the closed-form tight families of each theory/ file.
"""

from fairref.bounds.flips import FlipResult, SetFlipResult, flip_bounds, set_flip_bound
from fairref.bounds.hidden import (
    LiftResult,
    SurrogateResult,
    fisher_form,
    hidden_lift_bound,
    inner_surrogate_weights,
    lift_constant,
    rms_norm,
    spectral_norm,
    surrogate_bound,
)
from fairref.bounds.logits import (
    BoundResult,
    CertificateResult,
    kl_certificate,
    kl_divergence,
    kl_divergence_log1p,
    kl_logit_bound,
    psi,
)

__all__ = [
    # T1, T1″ (logits.py)
    "BoundResult",
    "CertificateResult",
    "kl_certificate",
    "kl_divergence",
    "kl_divergence_log1p",
    "kl_logit_bound",
    "psi",
    # T2, T3 (hidden.py)
    "LiftResult",
    "SurrogateResult",
    "fisher_form",
    "hidden_lift_bound",
    "inner_surrogate_weights",
    "lift_constant",
    "rms_norm",
    "spectral_norm",
    "surrogate_bound",
    # T4, T4′, T4s (flips.py)
    "FlipResult",
    "SetFlipResult",
    "flip_bounds",
    "set_flip_bound",
]
