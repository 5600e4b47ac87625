"""The recorded trajectory of one sampler run (SPEC §2, "Trace"; used by §3 and §5).

A :class:`Trace` holds, stacked over the T steps of a run, everything Stage I (frontier
hits, reliability) and the metrics need: the state ``x_t`` before step ``t`` commits, the
masked set ``M_t``, the active block ``A_t``, the commit count ``k_t``, the write frontier
``F_t``, the candidates and the teacher's top-2 statistics, the sampler's own score, and
``p_y`` = p_t(y_j | x_t), the teacher's probability of the token finally written.

Conventions (documented once here, relied on everywhere):

- ``p1, p2, z1, z2`` (top-1/top-2 probability and logit of the teacher's distribution,
  softmax of the logits the sampler sees — after CFG for LLaDA, before temperature/top-p)
  are recorded at *every* position; only masked ones are meaningful for Stage I.
- ``conf`` is the sampler's raw score (float64) at masked positions and NaN elsewhere.
  For LLaDA it is the score before the out-of-block −inf, so masked positions outside
  ``A_t`` carry their score too; selection only ever looks inside ``A_t``. For Dream's
  ``origin`` it is NaN everywhere (the sampler has no score, SPEC §2).
- ``k`` is −1 where the sampler has no commit count (Dream ``origin``).
- ``cand`` is the candidate token x̂ at masked positions and ``x_t`` elsewhere (Dream
  ``origin`` draws a token only where it writes; elsewhere ``cand`` is the argmax).
- ``p_y`` is NaN where the position is not masked. Design: y is known only after the
  run, so the recorder (``sampler.TraceRecorder``) stores each step's float64
  log-normalizer ``lse_t`` (B, L) and keeps the step's logits (B, L, V) while their total
  size stays below ``sampler.LOGPROB_BUDGET_BYTES`` (toy vocabularies); otherwise it re-runs the
  teacher on the recorded states after the run (a second pass with the same inputs: real
  vocabularies). Then ``p_y = exp(z_t[y] − lse_t)``. Either way nothing is recorded that
  changes the sampler's arithmetic or consumes random numbers.
- All trace tensors live on the CPU, whatever device the run used.

File format: :meth:`Trace.to_json` writes one JSON file; each tensor is stored with its
dtype and shape and its values as a flat list (float64 values written by Python's repr,
so float32/float64 round-trip exactly; NaN/±inf as the ``NaN``/``Infinity`` tokens that
Python's ``json`` reads and writes).

Legend: T steps, B batch, L = prompt_len + gen_length, V vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

#: the fields stacked over steps, each (T, B, L) except k (T, B)
STEP_FIELDS = ("x", "masked", "active", "k", "committed", "cand",
               "p1", "p2", "z1", "z2", "conf", "p_y")
_DTYPES = {"int64": torch.int64, "bool": torch.bool,
           "float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Trace:
    """One sampler run, stacked over steps (SPEC §2). Shapes in the module legend."""

    x: Tensor  # (T, B, L) int64: state before step t commits
    masked: Tensor  # (T, B, L) bool: M_t = {x_t == mask}
    active: Tensor  # (T, B, L) bool: A_t (LLaDA block; Dream generation region)
    k: Tensor  # (T, B) int64: k_t, −1 where undefined
    committed: Tensor  # (T, B, L) bool: F_t, the write frontier
    cand: Tensor  # (T, B, L) int64: candidate x̂ (x_t where not masked)
    p1: Tensor  # (T, B, L) float32: top-1 teacher probability
    p2: Tensor  # (T, B, L) float32: top-2 teacher probability
    z1: Tensor  # (T, B, L) float32: top-1 logit
    z2: Tensor  # (T, B, L) float32: top-2 logit
    conf: Tensor  # (T, B, L) float64: sampler score, NaN where not masked
    p_y: Tensor  # (T, B, L) float32: p_t(y | x_t), NaN where not masked
    tau: Tensor  # (B, L) int64: commit step, −1 for the prompt
    y: Tensor  # (B, L) int64: final tokens
    prompt_len: int  # P
    gen_length: int  # G
    mask_token_id: int  # the id written at masked positions
    settings: dict = field(default_factory=dict)  # sampler name, arguments, seed
    attention_mask: Tensor | None = None  # (B, L) bool passed to the model, if any

    @property
    def margin(self) -> Tensor:
        """Teacher logit margin m = z1 − z2, (T, B, L)."""
        return self.z1 - self.z2

    # ------------------------------------------------------------------ invariants
    def validate(self) -> "Trace":
        """Check the trajectory invariants; raise ``ValueError`` naming the first broken one.

        Each generated position is committed exactly once and no prompt position ever;
        ``M_t`` is ``{x_t == mask}``; ``F_t ⊆ M_t ∩ A_t``; ``|F_t| = k_t`` where ``k_t ≥ 0``;
        ``x_{t+1}`` is ``x_t`` with ``F_t`` filled by the candidates (so committed tokens
        never change) and ``y`` is the last state so filled; ``tau`` is the step of commit.
        A faithful run fails this only if the model proposes the mask id itself: the public
        loops then "commit" a mask, and the position is written again later.
        """
        T, B, L = self.x.shape
        P = self.prompt_len
        if L != P + self.gen_length:
            raise ValueError(f"L={L} != prompt_len + gen_length = {P + self.gen_length}")
        for name in STEP_FIELDS:
            want = (T, B) if name == "k" else (T, B, L)
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"{name} has shape {got}, want {want}")
        for name in ("tau", "y"):
            if tuple(getattr(self, name).shape) != (B, L):
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, "
                                 f"want {(B, L)}")
        F = self.committed
        if not torch.equal(self.masked, self.x == self.mask_token_id):
            raise ValueError("masked differs from (x == mask_token_id)")
        if (F & ~(self.masked & self.active)).any():
            raise ValueError("F_t is not a subset of M_t ∩ A_t")
        if F[:, :, :P].any():
            raise ValueError("a prompt position was committed")
        if not (F[:, :, P:].sum(0) == 1).all():
            raise ValueError("a generated position was not committed exactly once")
        defined = self.k >= 0  # (T, B)
        if (F.sum(-1)[defined] != self.k[defined]).any():
            raise ValueError("|F_t| != k_t at some step")
        x_next = torch.where(F, self.cand, self.x)  # (T, B, L): x_t with F_t filled
        if not torch.equal(x_next[:-1], self.x[1:]):
            raise ValueError("x_{t+1} is not x_t with F_t filled (a token changed)")
        if not torch.equal(x_next[-1], self.y):
            raise ValueError("y is not the last state with its frontier filled")
        if not torch.equal(commit_steps(F), self.tau):
            raise ValueError("tau differs from the step at which each position was committed")
        return self

    # ------------------------------------------------------------------ file I/O
    def to_json(self, path) -> None:
        """Write the trace to one JSON file (format in the module docstring)."""
        tensors = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                dtype = str(v.dtype).removeprefix("torch.")
                tensors[f.name] = {"dtype": dtype, "shape": list(v.shape),
                                   "data": v.reshape(-1).tolist()}
        meta = {"format": "fairref.trace", "version": 1, "prompt_len": self.prompt_len,
                "gen_length": self.gen_length, "mask_token_id": self.mask_token_id,
                "settings": self.settings, "tensors": tensors}
        with open(path, "w") as fh:
            json.dump(meta, fh)

    @classmethod
    def from_json(cls, path) -> "Trace":
        """Read a file written by :meth:`to_json`."""
        with open(path) as fh:
            meta = json.load(fh)
        if meta.get("format") != "fairref.trace":
            raise ValueError(f"{path} is not a fairref trace file (format={meta.get('format')!r})")
        kw = {name: torch.tensor(t["data"], dtype=_DTYPES[t["dtype"]]).reshape(t["shape"])
              for name, t in meta["tensors"].items()}
        return cls(prompt_len=meta["prompt_len"], gen_length=meta["gen_length"],
                   mask_token_id=meta["mask_token_id"], settings=meta["settings"], **kw)


def commit_steps(F: Tensor) -> Tensor:
    """tau from the frontiers: the last step t with F_t[b, i] set, −1 if none.
    ``F``: (T, B, L) bool → (B, L) int64."""
    t = torch.arange(F.shape[0], device=F.device).view(-1, 1, 1)  # (T, 1, 1)
    return torch.where(F, t, -1).amax(0)  # (B, L)
