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
- ``cand`` is the candidate token x̂ at masked positions and ``x_t`` elsewhere.
- ``p_y`` is NaN where the position is not masked. Design: y is known only after the
  run, so the recorder keeps each step's log-probabilities (B, L, V) while their total
  size stays below ``LOGPROB_BUDGET_BYTES`` (toy vocabularies), and otherwise re-runs the
  teacher on the recorded states after the run (a second pass, same inputs; real
  vocabularies). Either way nothing is recorded that changes the sampler's arithmetic or
  consumes random numbers.

File format: :meth:`Trace.to_json` writes one JSON file; each tensor is stored with its
dtype and shape and its values as a flat list (float64 values written by Python's repr,
so float32/float64 round-trip exactly; NaN/±inf as the ``NaN``/``Infinity`` tokens that
Python's ``json`` reads and writes).

Legend: T steps, B batch, L = prompt_len + gen_length, V vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from torch import Tensor

#: keep per-step log-probs in memory for p_y below this size; above it, do a second pass
LOGPROB_BUDGET_BYTES = 256 * 2**20

_STEP_FIELDS = ("x", "masked", "active", "k", "committed", "cand",
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
        """
        T, B, L = self.x.shape
        P = self.prompt_len
        if L != P + self.gen_length:
            raise ValueError(f"L={L} != prompt_len + gen_length = {P + self.gen_length}")
        for name in _STEP_FIELDS:
            want = (T, B) if name == "k" else (T, B, L)
            if tuple(getattr(self, name).shape) != want:
                raise ValueError(f"{name} has shape {tuple(getattr(self, name).shape)}, want {want}")
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
        t = torch.arange(T).view(T, 1, 1)
        tau = torch.where(F, t, -1).amax(0)  # (B, L)
        if not torch.equal(tau, self.tau):
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


def topk2_stats(logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-1/top-2 probabilities and logits of softmax(logits): (B, L, V) → 4 × (B, L).

    Computed in float64 (the margin z1 − z2 of near-tied logits must not round to 0)."""
    z = logits.to(torch.float64)  # (B, L, V)
    z12 = torch.topk(z, 2, dim=-1).values  # (B, L, 2)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, L, 1)
    p12 = torch.exp(z12 - lse)  # (B, L, 2)
    f = torch.float32
    return p12[..., 0].to(f), p12[..., 1].to(f), z12[..., 0].to(f), z12[..., 1].to(f)


class TraceRecorder:
    """Accumulates a :class:`Trace` step by step; the samplers own one when ``record=True``.

    It only reads the sampler's tensors (no RNG, no in-place writes), so recording cannot
    change the tokens.
    """

    def __init__(self, steps: int):
        self.steps = steps  # T, known up front: sizes the p_y budget
        self.rows: dict[str, list[Tensor]] = {name: [] for name in _STEP_FIELDS if name != "p_y"}
        self.keep_logprobs: bool | None = None  # decided at the first step, once V is known
        self.logprobs: list[Tensor] = []

    def step(self, x: Tensor, active: Tensor, k: Tensor, committed: Tensor,
             cand: Tensor, logits: Tensor, conf: Tensor | None, mask_token_id: int) -> None:
        """Record one step. ``x`` is the state *before* the commit; ``logits`` (B, L, V) the
        teacher logits of this step; ``conf`` (B, L) the sampler score (None: no score)."""
        if logits.shape[-1] < 2:
            raise ValueError("recording needs a vocabulary of at least 2 tokens (top-2 stats)")
        if self.keep_logprobs is None:
            # p_y design (module docstring): keep float64 log-probs if they fit, else 2nd pass
            self.keep_logprobs = self.steps * logits.numel() * 8 <= LOGPROB_BUDGET_BYTES
        M = x == mask_token_id  # (B, L)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        conf64 = nan.expand(M.shape) if conf is None else conf.to(torch.float64)
        p1, p2, z1, z2 = topk2_stats(logits)
        for name, v in (("x", x), ("masked", M), ("active", active), ("k", k),
                        ("committed", committed), ("cand", torch.where(M, cand, x)),
                        ("p1", p1), ("p2", p2), ("z1", z1), ("z2", z2),
                        ("conf", torch.where(M, conf64, nan))):
            self.rows[name].append(v.detach().clone())
        if self.keep_logprobs:
            self.logprobs.append(torch.log_softmax(logits.to(torch.float64), -1))  # (B, L, V)

    def finish(self, y: Tensor, prompt_len: int, mask_token_id: int, settings: dict,
               attention_mask: Tensor | None,
               teacher_logits: Callable[[Tensor], Tensor]) -> Trace:
        """Stack the steps, derive ``tau`` and ``p_y`` and return the :class:`Trace`.

        ``teacher_logits(x_t)`` recomputes the step's teacher logits; it is called only
        when the log-probs did not fit the budget (the second pass)."""
        st = {name: torch.stack(v) for name, v in self.rows.items()}  # each (T, B, ...)
        T = st["x"].shape[0]
        t = torch.arange(T).view(T, 1, 1)
        tau = torch.where(st["committed"], t, -1).amax(0)  # (B, L)
        p_y = torch.full(st["x"].shape, float("nan"), dtype=torch.float32)  # (T, B, L)
        for i in range(T):
            logp = self.logprobs[i] if self.keep_logprobs else torch.log_softmax(
                teacher_logits(st["x"][i]).to(torch.float64), -1)  # (B, L, V) float64
            logp_y = torch.gather(logp, -1, y.unsqueeze(-1)).squeeze(-1)  # (B, L)
            p_y[i] = torch.where(st["masked"][i], logp_y.exp().to(torch.float32), p_y[i])
        L = y.shape[1]
        return Trace(**st, p_y=p_y, tau=tau, y=y.clone(), prompt_len=prompt_len,
                     gen_length=L - prompt_len, mask_token_id=mask_token_id,
                     settings=settings, attention_mask=attention_mask)
